"""Stage one: run CLIP once over clean, weak and strong views and write the feature store.

data source -> DataLoader workers (decode to uint8) -> device views (augment) -> encoder
-> teacher outputs -> store, one shard at a time.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .progress import Progress


@dataclass
class ExtractConfig:
    """Everything ``extract`` needs; all of it that changes a number goes into the manifest."""

    data: str
    out: str
    model: str = "test-tiny"
    pretrained: str | None = "none"
    split: str | None = None
    weak_views: int = 2
    strong_views: int = 2
    weak_policy: str = "weak"
    strong_policy: str = "strong"
    templates: str | None = None
    classnames: str | None = None
    temperature: float = 1.0
    seed: int = 0
    shard_size: int = 256
    batch_size: int = 256
    num_workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    download: bool = False
    skip_bad: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    progress: bool = True
    extra_manifest: dict[str, Any] = field(default_factory=dict)


def check_config(config: ExtractConfig) -> None:
    """Reject impossible numbers before anything is loaded or written."""
    for name in ("weak_views", "strong_views"):
        if getattr(config, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(config, name)}")
    for name in ("shard_size", "batch_size"):
        if getattr(config, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not config.temperature > 0:
        raise InputError(f"--temperature must be positive, got {config.temperature}")
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise InputError(f"--precision must be auto, fp32, bf16 or fp16, got '{config.precision}'")
    out = Path(config.out).resolve()
    prefix, _, rest = config.data.partition(":")
    data = Path(rest if prefix in ("cifar10", "cifar100") else config.data).expanduser().resolve()
    if data.exists() and (out == data or data in out.parents):
        raise InputError(f"--out '{config.out}' lies inside the input data '{data}': write the store elsewhere")


def default_templates(identity: dict[str, Any]) -> str:
    """The template set the CLIP literature uses for a dataset kind."""
    return {"cifar10": "cifar10", "cifar100": "cifar100", "shapes": "shapes"}.get(identity["kind"], "imagenet")


def library_versions() -> dict[str, str]:
    """Versions of every library that touches the numbers."""
    import kornia
    import open_clip
    import torch
    import torchvision
    import zarr

    from . import __version__

    return {
        "lpclip_cache": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
        "kornia": kornia.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
    }


def autocast_dtype(precision: str, device_type: str) -> Any:
    """The autocast dtype: bf16 on CUDA by default, full precision on the CPU."""
    import torch

    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def extract(config: ExtractConfig) -> dict[str, Any]:
    """Run stage one and return a summary (store path, counts, throughput, invalid samples)."""
    import torch

    from .augment import ViewMaker, load_policy
    from .data import DecodedDataset, default_collate_shard, open_source
    from .models import load_model, zero_shot_head
    from .probe import teacher_outputs
    from .prompts import load_classnames, load_templates
    from .store import Layout, cache_key, create_store

    check_config(config)
    source = open_source(config.data, config.split, config.download)
    templates = load_templates(config.templates or default_templates(source.identity))
    if config.classnames:
        classnames = load_classnames(config.classnames)
    elif source.classnames:
        classnames = list(source.classnames)
    else:
        raise InputError(f"data '{config.data}' has no class names: pass --classnames FILE")
    known = source.labels >= 0
    if config.classnames and known.any() and int(source.labels[known].max()) >= len(classnames):
        raise InputError(
            f"--classnames '{config.classnames}' lists {len(classnames)} classes but the data has labels up to "
            f"{int(source.labels.max())}: give one name per data class"
        )
    weak_policy = load_policy(config.weak_policy)
    strong_policy = load_policy(config.strong_policy)
    loaded = load_model(config.model, config.pretrained, config.device, config.cache_dir)
    device = loaded.device
    cast = autocast_dtype(config.precision, device.type)

    head = zero_shot_head(loaded, classnames, templates)
    manifest = {
        "model": loaded.describe(),
        "classnames": classnames,
        "templates": templates,
        "teacher": {"logit_scale": loaded.logit_scale, "temperature": config.temperature},
        "views": {
            "weak": config.weak_views,
            "strong": config.strong_views,
            "weak_policy": weak_policy,
            "strong_policy": strong_policy,
            "seed": config.seed,
            "shard_size": config.shard_size,
        },
        "dataset": {**source.identity, "n": len(source), "fingerprint": source.fingerprint()},
        "precision": str(cast).replace("torch.", "") if cast else "fp32",
        "device": device.type,
        "versions": library_versions(),
        **config.extra_manifest,
    }
    layout = Layout(
        n=len(source),
        dim=int(head.shape[1]),
        n_classes=len(classnames),
        weak_views=config.weak_views,
        strong_views=config.strong_views,
        shard_size=config.shard_size,
    )
    out = Path(config.out)
    root = create_store(out, layout, manifest, overwrite=config.overwrite)
    head_np = head.numpy()
    root["head"][...] = head_np
    keys = np.array(source.keys, dtype=str)

    size = tuple(loaded.preprocess["size"])
    decoded = DecodedDataset(source, size, loaded.preprocess["resize_mode"], loaded.preprocess["interpolation"])
    loader = torch.utils.data.DataLoader(
        decoded,
        batch_size=config.shard_size,
        shuffle=False,
        num_workers=config.num_workers,
        collate_fn=default_collate_shard,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    views = ViewMaker(loaded.preprocess, weak_policy, strong_policy, config.seed, device)
    model = loaded.model

    @torch.no_grad()
    def encode(images: torch.Tensor) -> np.ndarray:
        parts = []
        for start in range(0, images.shape[0], config.batch_size):
            chunk = images[start : start + config.batch_size]
            with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
                features = model.encode_image(chunk)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            parts.append(features.half().cpu().numpy())
        return np.concatenate(parts)

    views_per_image = 1 + config.weak_views + config.strong_views
    progress = Progress(len(source), f"extract {out.name}", "img", enabled=config.progress)
    invalid: list[tuple[str, str]] = []
    scale, temperature = loaded.logit_scale, config.temperature
    for shard, (indices, pixels, ok, reasons) in enumerate(loader):
        start, stop = int(indices[0]), int(indices[-1]) + 1
        bad = [(source.keys[i], r) for i, good, r in zip(indices.tolist(), ok.tolist(), reasons) if not good]
        if bad and not config.skip_bad:
            key, reason = bad[0]
            raise InputError(
                f"cannot decode image '{key}' ({reason}): remove or replace it, or pass --skip-bad "
                f"to record it as invalid (store '{out}' is left incomplete: rerun with --overwrite)"
            )
        invalid.extend(bad)
        images = views.to_float(pixels)
        with torch.no_grad():
            emb = encode(views.clean(images))
        label, conf = teacher_outputs(emb, head_np, scale, temperature)
        root["clean/emb"][start:stop] = emb
        root["clean/label"][start:stop] = label
        root["clean/conf"][start:stop] = conf
        for kind, count in (("weak", config.weak_views), ("strong", config.strong_views)):
            if count == 0:
                continue
            stacked = np.stack([encode(views.view(images, kind, shard, v)) for v in range(count)], axis=1)
            label, conf = teacher_outputs(stacked, head_np, scale, temperature)
            root[f"{kind}/emb"][start:stop] = stacked
            root[f"{kind}/label"][start:stop] = label
            root[f"{kind}/conf"][start:stop] = conf
        root["labels"][start:stop] = source.labels[start:stop]
        root["valid"][start:stop] = ok.numpy()
        root["keys"][start:stop] = keys[start:stop]
        root["done"][shard] = 1
        progress.update(stop - start)
    progress.close()

    meta = dict(root.attrs["lpclip_cache"])
    meta["complete"] = True
    meta["invalid"] = [{"key": k, "reason": r} for k, r in invalid]
    root.attrs["lpclip_cache"] = meta
    elapsed = max(progress.rate(), 1e-9)
    summary = {
        "store": str(out),
        "cache_key": cache_key(manifest),
        "images": len(source),
        "views_per_image": views_per_image,
        "images_per_s": round(elapsed, 2),
        "views_per_s": round(elapsed * views_per_image, 2),
        "invalid": [k for k, _ in invalid],
        "classes": len(classnames),
        "embed_dim": layout.dim,
    }
    if invalid:
        sys.stderr.write(f"{len(invalid)} image(s) could not be decoded and are marked invalid:\n")
        for key, reason in invalid:
            sys.stderr.write(f"  {key}: {reason}\n")
    return summary
