"""Training throughput on the device: LP-CLIP from a cached store held in device memory.

    python benchmarks/gpu_train.py [--device cuda] [--samples 500000] [--classes 10,100,1000] [--batch 65536]

For each class count a store of fp16 unit embeddings (2 weak + 2 strong views, D = 512) is written
with ``benchmarks/train.py``'s ``synthetic_store``, then ``lpclip_cache.train`` runs LP-CLIP on it
with ``--device`` and batches of ``--batch``, the store held whole (memory budget raised to fit);
samples/s is the run's own figure (sampling, the gradient, the optimiser and the per-epoch
agreement check). Each figure is the fastest of ``--repeats`` runs after an untimed warm-up run.
With ``--device cpu`` it checks the same path on a machine without a GPU (the figures are then
the CPU's). The goal on one H200 is 2M samples/s at K = 1000 (gathering 1 KB rows from HBM
bounds it near 5M).

Lines (stdout): ``classes=K samples_per_s=X`` per class count, the largest K last.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def synthetic_store_builder():
    """``synthetic_store`` of benchmarks/train.py (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("train_benchmark", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_store


def rate(store: Path, out: Path, device: str, epochs: int, batch: int) -> float:
    """Samples/s of one LP-CLIP run on ``device`` from a store held whole."""
    from lpclip_cache.training import TrainConfig, train

    summary = train(TrainConfig(store=str(store), out=str(out), epochs=epochs, batch_size=batch, device=device,
                                progress=False, overwrite=True, memory_budget=1 << 40))
    return summary["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from lpclip_cache.distributed import pick_device

    device = pick_device(args.device)  # a clear error, before any store is written, where there is no GPU
    synthetic_store = synthetic_store_builder()
    counts = sorted(int(c) for c in args.classes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            store = synthetic_store(Path(tmp) / f"c{k}.zarr", args.samples, args.dim, k)
            rate(store, Path(tmp) / "warm", str(device), 1, args.batch)
            runs = [rate(store, Path(tmp) / "run", str(device), args.epochs, args.batch) for _ in range(args.repeats)]
            print(f"runs K={k}: {', '.join(f'{r:.0f}' for r in runs)}", file=sys.stderr)
            print(f"classes={k} samples_per_s={max(runs):.0f}", flush=True)


if __name__ == "__main__":
    main()
