"""Views per second of ``extract`` against the plain pipeline a user would write, side by side.

Baseline: a torchvision Dataset that makes every view on the CPU in DataLoader workers (open_clip's
evaluation transform for the clean view, RandomResizedCrop + flip for weak views, the same plus
RandAugment(2 ops) + RandomErasing for strong views), then the same encoder, embeddings kept in
memory (no writing: the baseline gets that for free). Ours: ``lpclip_cache.extract`` writing a
real Zarr store. Same images (real CIFAR-10 JPEGs from ../shared/data), same model, same view
counts, same machine, one run; the two are interleaved per model.

    python benchmarks/extract.py [--images 1024] [--models test-tiny,ViT-B-32] [--workers 2]

Prints one line per model and, last, ``ratio_vs_baseline=R``: the smallest of the per-model
ratios (R > 1 means ``extract`` is faster).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cifar_folder(dest: Path, images: int) -> Path:
    """Extract ``images`` test JPEGs (balanced over classes) into an ImageFolder."""
    per_class = -(-images // 10)
    with tarfile.open(CIFAR, "r:gz") as archive:
        members = [m for m in archive if m.isfile() and m.name.startswith("test/")
                   and int(Path(m.name).stem) < per_class]
        archive.extractall(dest, members=members, filter="data")
    return dest / "test"


def baseline(folder: Path, model_name: str, weak: int, strong: int, workers: int, batch: int) -> float:
    """The plain pipeline: views by torchvision in workers, then the encoder. Returns views/s."""
    import open_clip
    import torch
    from torchvision import datasets, transforms

    import lpclip_cache.models  # noqa: F401  (registers test-tiny)

    torch.manual_seed(0)
    model, _, clean = open_clip.create_model_and_transforms(model_name)
    model.eval()
    size = model.visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    normalize = transforms.Normalize(model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"])
    weak_view = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.5, 1.0)),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    strong_view = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0)),
                                      transforms.RandomHorizontalFlip(), transforms.RandAugment(num_ops=2),
                                      transforms.ToTensor(), normalize, transforms.RandomErasing(p=0.5)])

    def views(image):
        image = image.convert("RGB")
        return torch.stack([clean(image)] + [weak_view(image) for _ in range(weak)]
                           + [strong_view(image) for _ in range(strong)])

    dataset = datasets.ImageFolder(str(folder), transform=views)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    per_image = 1 + weak + strong
    outputs = []
    start = time.perf_counter()
    with torch.no_grad():
        for stacked, _ in loader:
            flat = stacked.flatten(0, 1)
            features = torch.nn.functional.normalize(model.encode_image(flat), dim=-1)
            outputs.append(features.half().view(stacked.shape[0], per_image, -1).numpy())
    seconds = time.perf_counter() - start
    return len(dataset) * per_image / seconds


def ours(folder: Path, model_name: str, weak: int, strong: int, workers: int, batch: int, out: Path) -> float:
    """``lpclip_cache.extract`` into a real store. Returns views/s (model loading excluded, as above)."""
    from lpclip_cache.extraction import ExtractConfig, extract

    summary = extract(ExtractConfig(
        data=str(folder), out=str(out), model=model_name, pretrained="none", weak_views=weak,
        strong_views=strong, shard_size=256, batch_size=256, num_workers=workers,
        device="cpu", templates="simple", progress=False, overwrite=True,
    ))
    return summary["views_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--vit-images", type=int, default=64, help="images for the ViT-B-32 comparison")
    parser.add_argument("--models", default="test-tiny,ViT-B-32")
    parser.add_argument("--weak", type=int, default=2)
    parser.add_argument("--strong", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if not CIFAR.is_file():
        sys.exit(f"benchmark data missing: {CIFAR}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, model_name in enumerate(args.models.split(",")):
            images = args.vit_images if model_name.startswith("ViT") else args.images
            folder = cifar_folder(Path(tmp) / model_name, images)
            runs = {}
            order = ("ours", "baseline") if index % 2 == 0 else ("baseline", "ours")
            for name in order:
                if name == "ours":
                    runs[name] = ours(folder, model_name, args.weak, args.strong, args.workers, args.batch,
                                      Path(tmp) / f"{model_name}.zarr")
                else:
                    runs[name] = baseline(folder, model_name, args.weak, args.strong, args.workers, args.batch)
            ratio = runs["ours"] / runs["baseline"]
            ratios.append(ratio)
            print(f"model={model_name} images={images} views_per_image={1 + args.weak + args.strong} "
                  f"ours_views_per_s={runs['ours']:.1f} baseline_views_per_s={runs['baseline']:.1f} "
                  f"ratio={ratio:.2f}", flush=True)
    print(f"ratio_vs_baseline={min(ratios):.2f}")


if __name__ == "__main__":
    main()
