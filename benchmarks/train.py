"""Training throughput from the cache on one CPU core, and the speedup over online LP-CLIP.

    python benchmarks/train.py [--samples 20000] [--dim 512] [--classes 10,100,1000]

For each class count: a store of fp16 unit embeddings (2 weak + 2 strong views, D = 512) is
written, then ``lpclip_cache.train`` runs LP-CLIP on it with one thread and batches of 4096;
samples/s counts the training loop (sampling, forward, backward, optimiser, and the label-free
agreement check after each epoch). Online LP-CLIP, the same loss with the
CLIP encoder (ViT-B-32, random init) run on freshly augmented weak and strong views of real
images every step, is timed for a few steps on the same thread budget; the per-epoch speedup is
the ratio of the two rates at 10 classes.

Lines: ``classes=K samples_per_s=X`` per class count, then ``speedup_vs_online=R``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic_store(path: Path, n: int, dim: int, classes: int, seed: int = 0) -> Path:
    """A complete store of clustered unit embeddings written through the store API."""
    from lpclip_cache.probe import teacher_outputs
    from lpclip_cache.store import Layout, create_store

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, classes, n)
    layout = Layout(n, dim, classes, 2, 2, 1024)
    manifest = {
        "model": {"name": "benchmark", "pretrained": {"kind": "none", "value": None, "sha256": None}},
        "classnames": [f"class {i}" for i in range(classes)],
        "teacher": {"logit_scale": 100.0, "temperature": 1.0},
    }
    root = create_store(path, layout, manifest)
    root["head"][...] = centres
    for start in range(0, n, layout.shard_size):
        stop = min(n, start + layout.shard_size)
        base = centres[labels[start:stop]]
        for kind, views in (("clean", 0), ("weak", 2), ("strong", 2)):
            shape = (stop - start, dim) if kind == "clean" else (stop - start, views, dim)
            noisy = (base if kind == "clean" else base[:, None]) + 0.05 * rng.normal(size=shape)
            emb = (noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)).astype(np.float16)
            label, conf = teacher_outputs(emb, centres, 100.0, 1.0)
            root[f"{kind}/emb"][start:stop] = emb
            root[f"{kind}/label"][start:stop] = label
            root[f"{kind}/conf"][start:stop] = conf
        root["labels"][start:stop] = labels[start:stop]
        root["valid"][start:stop] = True
    root["done"][:] = 1
    meta = dict(root.attrs["lpclip_cache"])
    meta["complete"] = True
    root.attrs["lpclip_cache"] = meta
    return path


def cached_rate(store: Path, out: Path, epochs: int, batch: int) -> float:
    """Samples/s of LP-CLIP training from the store, after one untimed warm-up epoch (first-call
    costs: allocator, GEMM kernels, the store's first read)."""
    from lpclip_cache.training import TrainConfig, train

    train(TrainConfig(store=str(store), out=str(out), epochs=1, batch_size=batch, progress=False, overwrite=True))
    summary = train(TrainConfig(store=str(store), out=str(out), epochs=epochs, batch_size=batch, progress=False,
                                overwrite=True))
    return summary["samples_per_s"]


def online_rate(steps: int, batch: int) -> float:
    """Samples/s of online LP-CLIP: augment weak and strong views and run the encoder every step."""
    import torch

    from lpclip_cache.augment import ViewMaker, load_policy
    from lpclip_cache.models import load_model, zero_shot_head
    from lpclip_cache.training import weighted_cross_entropy

    loaded = load_model("ViT-B-32", "none", device="cpu")
    head = zero_shot_head(loaded, [f"class {i}" for i in range(10)], ["a photo of a {}."])
    views = ViewMaker(loaded.preprocess, load_policy("weak"), load_policy("strong"), 0, torch.device("cpu"))
    probe = torch.nn.Linear(head.shape[1], 10)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    done = 0
    start = time.perf_counter()
    for step in range(steps):
        pixels = views.to_float(images)
        with torch.no_grad():
            weak = torch.nn.functional.normalize(loaded.model.encode_image(views.view(pixels, "weak", step, 0)), dim=-1)
            strong = torch.nn.functional.normalize(
                loaded.model.encode_image(views.view(pixels, "strong", step, 0)), dim=-1
            )
            probs = torch.softmax(loaded.logit_scale * weak @ head.T, dim=-1)
        confidence, pseudo_label = probs.max(dim=-1)
        loss = weighted_cross_entropy(probe(strong), pseudo_label, confidence)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4096, help="training batch size of the cached path")
    parser.add_argument("--online-steps", type=int, default=3)
    parser.add_argument("--online-batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for classes in (int(c) for c in args.classes.split(",")):
            store = synthetic_store(Path(tmp) / f"c{classes}.zarr", args.samples, args.dim, classes)
            rates[classes] = cached_rate(store, Path(tmp) / f"run{classes}", args.epochs, args.batch)
            print(f"classes={classes} samples_per_s={rates[classes]:.0f}", flush=True)
    online = online_rate(args.online_steps, args.online_batch)
    reference = rates.get(10, next(iter(rates.values())))
    print(f"online_samples_per_s={online:.1f} (ViT-B-32 random init, batch {args.online_batch}, 1 thread)")
    print(f"speedup_vs_online={reference / online:.0f}")


if __name__ == "__main__":
    main()
