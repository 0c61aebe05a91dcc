"""The project's TransCLIP against the public solver, on the same inputs (not shipped: fetch it).

    git clone https://github.com/MaxZanella/transduction-for-vlms /tmp/transclip-ref
    python benchmarks/transclip_reference.py /tmp/transclip-ref [--images 2000] [--classes 10] [--dim 64]

The public ``TransCLIP_solver`` (AGPL-3.0, read from the given checkout, never copied into the
project) is run on the CPU: its ``.cuda()`` calls are made no-ops for the run. Both solvers get the
same L2-normalised embeddings (clustered, with a zero-shot head of moved centres) and the same
head; the reference also needs labels, from which it only counts the classes and reports its
accuracy (its accuracy helper, which NumPy 2 cannot run, is replaced for the run; it changes no
assignment). Prints the share of images whose hard assignment agrees, the largest difference of the
soft assignments, and both solvers' times.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from lpclip_cache.transclip import transclip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="A clone of MaxZanella/transduction-for-vlms.")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.classes, args.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(args.images) % args.classes
    x = centres[labels] + 0.15 * rng.normal(size=(args.images, args.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = centres + 0.5 * rng.normal(size=centres.shape)
    head /= np.linalg.norm(head, axis=1, keepdims=True)

    started = time.perf_counter()
    ours = transclip(x, head).z
    ours_s = time.perf_counter() - started

    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference on the CPU
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(args.checkout))
    solver = importlib.import_module("TransCLIP_solver.TransCLIP")
    utils = importlib.import_module("TransCLIP_solver.TransCLIP_utils")

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: int = 1) -> float:
        """The reference's accuracy report, which NumPy 2 no longer runs as written (only printed)."""
        return 100.0 * float((output.argmax(1) == target).float().mean())

    solver.cls_acc = utils.cls_acc = accuracy
    started = time.perf_counter()
    z, _ = solver.TransCLIP_solver(None, None, None, None, torch.from_numpy(x).float(), torch.from_numpy(labels),
                                   torch.from_numpy(head.T.copy()).float(), verbose=False)
    reference_s = time.perf_counter() - started
    reference = z.double().numpy()
    agree = float((ours.argmax(1) == reference.argmax(1)).mean())
    print(f"images={args.images} classes={args.classes} dim={args.dim} hard_agreement={agree:.4f} "
          f"max_soft_difference={float(np.abs(ours - reference).max()):.2e} "
          f"zero_shot_accuracy={float(((x @ head.T).argmax(1) == labels).mean()):.3f} "
          f"transclip_accuracy={float((ours.argmax(1) == labels).mean()):.3f} "
          f"ours_s={ours_s:.2f} reference_s={reference_s:.2f}")


if __name__ == "__main__":
    main()
