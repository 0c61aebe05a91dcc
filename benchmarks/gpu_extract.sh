#!/usr/bin/env bash
# One prepared GPU check (a few minutes on one H200, nothing from the network):
#   ViT-B-32 at 224 px, bf16, 8 weak + 8 strong views, against the encoder-only ceiling.
# Before calling it through the device tool, put the wheels the GPU machine lacks in .whl/
# (see docs/performance.md for the exact pip download line): open_clip_torch, kornia, kornia_rs,
# zarr, numcodecs, donfig, crc32c/google-crc32c, ftfy, wcwidth, regex, huggingface_hub, safetensors.
# Last line: views_per_s=X encoder_only_views_per_s=Y
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
python3 benchmarks/gpu_extract.py --model ViT-B-32 --device cuda --images "${IMAGES:-8192}" --views 8 \
  --batch "${BATCH:-512}" "$@"
