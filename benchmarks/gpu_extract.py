"""Extraction throughput on a GPU against the encoder-only ceiling measured in the same run.

    python benchmarks/gpu_extract.py [--model ViT-B-32] [--images 8192] [--views 8]

1. Encoder only: the image tower under bf16 autocast on pre-made normalised tensors already on
   the device, the same batch size as extraction: the rate no pipeline around it can beat.
2. ``lpclip_cache.extract`` end to end on generated images (decode and resize in DataLoader
   workers, views on the device, encoder, teacher outputs, Zarr writes), ``--views`` weak and
   ``--views`` strong views plus the clean view per image.

Last line: ``views_per_s=X encoder_only_views_per_s=Y`` (and the fraction on the line before).
Runs on the CPU too (small sizes) to check the script itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def encoder_only(model_name: str, device: str, batch: int, seconds: float) -> float:
    """Views/s of the image tower alone on device-resident normalised tensors."""
    import torch

    from lpclip_cache.extraction import autocast_dtype
    from lpclip_cache.models import load_model

    loaded = load_model(model_name, "none", device=device)
    size = loaded.preprocess["size"]
    images = torch.randn(batch, 3, *size, device=loaded.device)
    cast = autocast_dtype("auto", loaded.device.type)
    done = 0
    with torch.no_grad():
        for warm in (True, False):
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            done = 0
            while time.perf_counter() - start < (2.0 if warm else seconds):
                with torch.autocast(loaded.device.type, dtype=cast, enabled=cast is not None):
                    features = loaded.model.encode_image(images)
                torch.nn.functional.normalize(features.float(), dim=-1)
                done += batch
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
    return done / elapsed


def end_to_end(model_name: str, device: str, images: int, views: int, batch: int, workers: int, out: Path) -> float:
    """Views/s of ``extract`` on generated shapes images (decoded to the model's input size)."""
    from lpclip_cache.extraction import ExtractConfig, extract

    summary = extract(ExtractConfig(
        data=f"shapes:train:n={images}", out=str(out), model=model_name, pretrained="none", weak_views=views,
        strong_views=views, shard_size=batch, batch_size=batch, num_workers=workers, device=device,
        templates="simple", progress=True, overwrite=True,
    ))
    return summary["views_per_s"]


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    parser.add_argument("--encoder-seconds", type=float, default=15.0)
    args = parser.parse_args()
    ceiling = encoder_only(args.model, args.device, args.batch, args.encoder_seconds)
    print(f"encoder_only model={args.model} batch={args.batch} views_per_s={ceiling:.0f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rate = end_to_end(args.model, args.device, args.images, args.views, args.batch, args.workers,
                          Path(tmp) / "bench.zarr")
    print(f"extract model={args.model} images={args.images} views_per_image={1 + 2 * args.views} "
          f"fraction_of_encoder_only={rate / ceiling:.3f}", flush=True)
    print(f"views_per_s={rate:.0f} encoder_only_views_per_s={ceiling:.0f}")


if __name__ == "__main__":
    main()
