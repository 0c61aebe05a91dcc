#!/usr/bin/env bash
# One prepared GPU check of stage two (a few minutes on one H200, nothing from the network):
#   LP-CLIP training from stores of 500k samples held in device memory, K = 10, 100, 1000.
# Before calling it through the device tool, put the wheels the GPU machine lacks in .whl/
# (as for gpu_extract.sh; docs/performance.md has the pip download line).
# Last line: classes=1000 samples_per_s=X
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 benchmarks/gpu_train.py --device cuda --samples "${SAMPLES:-500000}" --batch "${BATCH:-65536}" "$@"
