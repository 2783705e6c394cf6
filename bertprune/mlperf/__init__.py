"""MLPerf LoadGen, one file per step: ``scenarios`` (settings, config name <-> LoadGen name), ``qsl``
(the features, cached), ``sut`` (ONNX Runtime SUT, batching), ``settings`` (calibration, user.conf),
``runs`` (one run per process), ``logs`` (LoadGen's logs, accuracy.txt), ``report`` (summary rows,
tables, plot), ``submission`` (the MLPerf submission tree)."""
