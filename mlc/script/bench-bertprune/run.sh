#!/bin/bash
# bench,loadgen,bertprune: the command customize.py built (the project's Python running bench.py ...).
# bench.py exits non-zero when any LoadGen run failed, and so does `mlcr`.
echo "${MLC_RUN_CMD}"
eval "${MLC_RUN_CMD}"
