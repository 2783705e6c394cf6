"""MLPerf LoadGen: scenarios, QSL, SUT, runs, logs, submission tree."""
