#!/bin/bash
# prune,bert,kwon,bertprune: the command customize.py built (the project's Python running prune.py -m ...).
# Its exit code is the script's: a failed job fails `mlcr`, with prune.py's own error above.
echo "${MLC_RUN_CMD}"
eval "${MLC_RUN_CMD}"
