#!/usr/bin/env bash
# LP-CLIP on CIFAR-10 with OpenAI's ViT-B-32: extract -> train -> evaluate -> analyze.
# Needs a network the first time (CIFAR-10 through torchvision, weights through open_clip);
# afterwards both are cached and it runs offline. On a GPU it takes a few minutes.
set -euo pipefail
DATA=${DATA:-$HOME/.cache/lpclip-cache/cifar10}
OUT=${OUT:-runs/cifar10-vitb32}
MODEL=${MODEL:-ViT-B-32-quickgelu}
PRETRAINED=${PRETRAINED:-openai}
VIEWS=${VIEWS:-4}
mkdir -p "$OUT"
common=(--model "$MODEL" --pretrained "$PRETRAINED" --templates cifar10 --download)
lpclip-cache extract --data "cifar10:$DATA" --split train "${common[@]}" \
  --weak-views "$VIEWS" --strong-views "$VIEWS" --out "$OUT/train.zarr"
lpclip-cache extract --data "cifar10:$DATA" --split test "${common[@]}" \
  --weak-views 0 --strong-views 0 --out "$OUT/test.zarr"
lpclip-cache train --store "$OUT/train.zarr" --out "$OUT/lpclip" --epochs 10
lpclip-cache train --store "$OUT/train.zarr" --out "$OUT/supervised" --method supervised --epochs 10
lpclip-cache evaluate --run "$OUT/lpclip" --store "$OUT/test.zarr" --out "$OUT/report-lpclip.json"
lpclip-cache evaluate --run "$OUT/supervised" --store "$OUT/test.zarr" --out "$OUT/report-supervised.json"
lpclip-cache analyze latent clusters --store "$OUT/test.zarr" --run "$OUT/lpclip" --k 10 \
  --out "$OUT/clusters.json"
