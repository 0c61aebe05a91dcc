#!/usr/bin/env bash
# One prepared GPU check (a few minutes on one H200, nothing from the network):
#   ViT-B-32 at 224 px, bf16, 8 weak + 8 strong views, against the encoder-only ceiling.
# Before calling it through the device tool, put the wheels the GPU machine lacks in .whl/
# (see docs/performance.md for the exact pip download line): open_clip_torch, kornia, kornia_rs,
# zarr, numcodecs, donfig, crc32c/google-crc32c, ftfy, wcwidth, regex, huggingface_hub, safetensors.
# Last line: views_per_s=X encoder_only_views_per_s=Y
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/gpu_extract.py --model ViT-B-32 --device cuda --images "${IMAGES:-8192}" --views 8 \
  --batch "${BATCH:-512}" "$@"
