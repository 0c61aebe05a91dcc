"""How the training step's layout pays: blocked, classes-major steps against whole-batch steps.

    python benchmarks/train_layout.py [--samples 50000] [--classes 10,100,1000] [--repeats 5]

Both layouts train LP-CLIP from the same synthetic store (see benchmarks/train.py) with one
thread and batches of 4096, taking turns so that the machine's changing load falls on both:

- ``blocked``: the step as shipped (``lpclip_cache.probe.CLASSES_MAJOR_UP_TO`` and
  ``BLOCK_ROWS``): blocks of 512 rows with logits laid out classes x rows up to 256 classes,
  blocks of 2048 rows x classes beyond;
- ``whole``: the whole batch of 4096 in one block, logits rows x classes (the earlier layout).

Lines: ``classes=K blocked_samples_per_s=X whole_samples_per_s=Y ratio=X/Y`` (fastest of
``--repeats`` runs each; the medians go to stderr).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import cached_rate, synthetic_store  # noqa: E402


def main() -> None:
    import torch

    from lpclip_cache import probe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shipped = (probe.CLASSES_MAJOR_UP_TO, dict(probe.BLOCK_ROWS))
    layouts = {"blocked": shipped, "whole": (0, {True: args.batch, False: args.batch})}

    def use(name: str) -> None:
        probe.CLASSES_MAJOR_UP_TO, blocks = layouts[name]
        probe.BLOCK_ROWS.clear()
        probe.BLOCK_ROWS.update(blocks)

    with tempfile.TemporaryDirectory() as tmp:
        for classes in (int(c) for c in args.classes.split(",")):
            store = synthetic_store(Path(tmp) / f"c{classes}.zarr", args.samples, 512, classes)
            rates: dict[str, list[float]] = {name: [] for name in layouts}
            for name in layouts:  # warm-up
                use(name)
                cached_rate(store, Path(tmp) / "run", 1, args.batch)
            for _ in range(args.repeats):
                for name in layouts:
                    use(name)
                    rates[name].append(cached_rate(store, Path(tmp) / "run", args.epochs, args.batch))
            use("blocked")
            best = {name: max(r) for name, r in rates.items()}
            print(f"classes={classes} blocked_samples_per_s={best['blocked']:.0f} "
                  f"whole_samples_per_s={best['whole']:.0f} ratio={best['blocked'] / best['whole']:.2f}", flush=True)
            medians = " ".join(f"{name}_median={statistics.median(r):.0f}" for name, r in rates.items())
            print(f"classes={classes} {medians}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
