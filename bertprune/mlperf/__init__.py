"""MLPerf LoadGen, one file per step: ``qsl`` (the features, cached), ``sut`` (ONNX Runtime SUT, batching),
``settings`` (calibration, user.conf), ``runs`` (one run per process), ``logs`` (LoadGen's logs, accuracy.txt),
``report`` (summary rows, tables, plot), ``submission`` (the MLPerf submission tree). The scenarios' settings
(config name <-> LoadGen name) sit a floor down in ``bertprune.scenarios``: the latency cost model reads them too."""
