"""The project's TransCLIP against the public solver, on the same inputs (not shipped: fetch it).

    git clone https://github.com/MaxZanella/transduction-for-vlms /tmp/transclip-ref
    python benchmarks/transclip_reference.py /tmp/transclip-ref [--images 2000] [--classes 10] [--dim 64]
                                             [--float64] [--sigma-float32] [--departures]
                                             [--store STORE.zarr] [--inputs ARRAYS.npz]

The public ``TransCLIP_solver`` (AGPL-3.0, read from the given checkout, never copied into the
project) is run on the CPU: its ``.cuda()`` calls are made no-ops for the run. Both solvers get the
same L2-normalised embeddings (clustered, with a zero-shot head of moved centres) and the same
head; the reference also needs labels, from which it only counts the classes and reports its
accuracy (its accuracy helper, which NumPy 2 cannot run, is replaced for the run; it changes no
assignment). The reference computes in float32, as published; the project's solver in float64.
``--float64`` also runs the same reference code in float64 (its ``.float()`` casts keep float64
and new tensors default to it), which separates the reference's float32 rounding from any
difference in the equations. Where the float64 reference does not fit in memory (its
N x K x D chunk of 2500 rows, about 20 GB at 1000 classes of 512 dimensions), ``--sigma-float32``
measures the largest rounding the reference's precision brings: the σ-step (one sum over N x K
terms per dimension) computed in float32 as the reference computes it, chunks of 2500 rows, on
the project's final z and μ, against the same step in float64, and how far that moves each
image's log-assignments (log-likelihoods / C, spread over the classes). ``--store`` compares
on a store's own valid clean embeddings and zero-shot head instead, as ``evaluate --transclip``
transduces them (the reference is then given labels that name every class once in turn: it reads
them only to count the classes). ``--inputs`` compares on saved arrays ``x``, ``labels`` and
``head`` (what ``transclip_scale.py --reference`` saves, so both run on its input). ``--departures``
also measures the two places where the public solver departs from its own equations
(``departures``): atop another method's probabilities, as published and with its prior copied,
and on 5 copies of each image. Prints, per
comparison, the share of images whose hard assignment agrees and the largest difference of the
soft assignments, and each solver's time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lpclip_cache.zeroshot import TeacherScale

# the public solver starts from softmax(100 x . t), pretrained CLIP's scale: ours is given the same,
# whatever the input's own teacher (a store's small model has another scale)
CLIP_SCALE = TeacherScale(100.0)


def world(images: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit embeddings (noise 0.15 per dimension around unit centres), their labels, and
    a zero-shot head of centres moved by noise 0.5 per dimension, all rounded to float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.arange(images) % classes
    x = centres[labels] + 0.15 * rng.normal(size=(images, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = centres + 0.5 * rng.normal(size=centres.shape)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    # values a float32 store holds, so that the reference's float32 cast changes no input
    return x.astype(np.float32).astype(np.float64), labels, head.astype(np.float32).astype(np.float64)


def from_store(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A store's valid clean embeddings, their labels (-1 unknown) and its zero-shot head."""
    from lpclip_cache.store import FeatureStore

    store = FeatureStore(path)
    valid = store.read("valid")
    return (store.read("clean/emb")[valid].astype(np.float64), store.labels()[valid].astype(np.int64),
            store.head().astype(np.float64))


def reference_solver(checkout: Path):
    """The public solver, imported from ``checkout`` and made to run on the CPU."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(checkout))
    solver = importlib.import_module("TransCLIP_solver.TransCLIP")
    utils = importlib.import_module("TransCLIP_solver.TransCLIP_utils")

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: int = 1) -> float:
        """The reference's accuracy report, which NumPy 2 no longer runs as written (only printed)."""
        return 100.0 * float((output.argmax(1) == target).float().mean())

    solver.cls_acc = utils.cls_acc = accuracy
    return solver.TransCLIP_solver


def run_reference(solve, x: np.ndarray, labels: np.ndarray, head: np.ndarray, float64: bool,
                  initial: np.ndarray | None = None) -> np.ndarray:
    """The reference's assignments: as published (float32), or with every tensor kept in float64;
    zero-shot, or atop ``initial`` (another method's probabilities, its ``initial_predictions``)."""
    cast = torch.Tensor.float
    if float64:
        torch.Tensor.float = lambda self, *a, **k: self.double()
        torch.set_default_dtype(torch.float64)
    dtype = torch.float64 if float64 else torch.float32
    atop = None if initial is None else torch.from_numpy(initial).to(dtype)
    try:
        z, _ = solve(None, None, None, None, torch.from_numpy(x).to(dtype), torch.from_numpy(labels),
                     torch.from_numpy(head.T.copy()).to(dtype), initial_predictions=atop, verbose=False)
    finally:
        torch.Tensor.float = cast
        torch.set_default_dtype(torch.float32)
    return z.double().numpy()


def sigma_rounding(x: np.ndarray, head: np.ndarray) -> str:
    """How much the σ-step's float32 accumulation (the reference's precision, in its chunks) moves
    σ and, through the log-likelihoods, each image's log-assignments, at the project's solution."""
    from lpclip_cache import transclip as T

    solved = T.transclip(x, head, CLIP_SCALE)
    xt, zt, mt = (torch.from_numpy(a).float() for a in (x, solved.z, solved.mu))
    total = torch.zeros(x.shape[1])
    for start in range(0, len(x), 2500):  # sum_i sum_c z_ic (x_id - mu_cd)^2, as an einsum over a chunk
        rows = slice(start, start + 2500)
        total += torch.einsum("ij,ijk->k", zt[rows], (xt[rows, None, :] - mt[None]) ** 2)
    single = (total / zt.sum()).double().numpy()
    double = T.sigma_step(x, solved.z, solved.mu)
    moved = (T.log_likelihood(x, solved.mu, single) - T.log_likelihood(x, solved.mu, double)) / T.TEMPERATURE
    spread = moved.max(axis=1) - moved.min(axis=1)  # a row's shift alone changes no assignment
    return (f"sigma in float32: relative_error_max={float(np.abs(single / double - 1).max()):.2e} "
            f"log_assignment_shift_max={float(spread.max()):.2e} median={float(np.median(spread)):.2e}")


def departures(solve, x: np.ndarray, labels: np.ndarray, head: np.ndarray, seed: int) -> list[str]:
    """The two places where the public solver departs from its own equations, each measured:

    - atop another method: its ``init_z`` returns one tensor as both the prior y and z, and
      ``update_z`` writes z in place, so the prior drifts with z. Ours against it as published
      and against it with ``init_z`` returning a copy of z (its equations as written);
    - duplicates: its graph drops the first of the k + 1 nearest columns, taking it for the image
      itself, so with copies of an image the image may stay its own neighbour. Ours against it on
      5 copies of each of the first fifth of the images.
    """
    from lpclip_cache.transclip import transclip

    module = importlib.import_module("TransCLIP_solver.TransCLIP")
    rng = np.random.default_rng(seed)
    # another method's probabilities: a noisier classifier, in values the reference's float32 holds
    logits = 20.0 * x @ head.T + rng.normal(size=(len(x), len(head)))
    initial = torch.softmax(torch.from_numpy(logits).float(), dim=1).double().numpy()
    ours = transclip(x, head, initial=initial).z
    published = run_reference(solve, x, labels, head, float64=False, initial=initial)
    init_z = module.init_z

    def copied_init_z(y_hat: torch.Tensor, softmax: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        prior, z = init_z(y_hat, softmax=softmax)
        return prior, z.clone()

    module.init_z = copied_init_z
    try:
        copied = run_reference(solve, x, labels, head, float64=False, initial=initial)
    finally:
        module.init_z = init_z
    originals = max(len(x) // 5, len(head))
    copies, copy_labels = np.repeat(x[:originals], 5, axis=0), np.repeat(labels[:originals], 5)
    duplicated = run_reference(solve, copies, copy_labels, head, float64=False)
    return [compare("atop: ours vs reference", ours, published),
            compare("atop: ours vs reference with its prior copied", ours, copied),
            compare(f"5 copies of each of {originals} images: ours vs reference",
                    transclip(copies, head, CLIP_SCALE).z, duplicated)]


def compare(name: str, a: np.ndarray, b: np.ndarray) -> str:
    return (f"{name}: hard_agreement={float((a.argmax(1) == b.argmax(1)).mean()):.4f} "
            f"max_soft_difference={float(np.abs(a - b).max()):.2e}")


def main() -> None:
    from lpclip_cache.transclip import transclip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="A clone of MaxZanella/transduction-for-vlms.")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true", help="Also run the reference in float64.")
    parser.add_argument("--sigma-float32", action="store_true",
                        help="Also measure the rounding of the sigma-step in float32.")
    parser.add_argument("--departures", action="store_true",
                        help="Also measure the public solver's two departures: atop mode and duplicates.")
    parser.add_argument("--store", default=None, help="Compare on this store's embeddings and head instead.")
    parser.add_argument("--inputs", default=None,
                        help="Compare on the arrays x, labels and head of this .npz instead (transclip_scale.py's).")
    args = parser.parse_args()

    if args.inputs:
        with np.load(args.inputs) as saved:
            x, head = saved["x"].astype(np.float64), saved["head"].astype(np.float64)
            labels = saved["labels"].astype(np.int64)
    elif args.store:
        x, labels, head = from_store(args.store)
    else:
        x, labels, head = world(args.images, args.classes, args.dim, args.seed)
    args.images, args.classes, args.dim = len(x), len(head), x.shape[1]
    # the reference counts the classes from its labels: a store's may lack some, so it gets each in turn
    counted = np.arange(len(x)) % len(head) if args.store else labels
    started = time.perf_counter()
    ours = transclip(x, head, CLIP_SCALE).z
    times = {"ours_s": time.perf_counter() - started}
    solve = reference_solver(args.checkout)
    started = time.perf_counter()
    reference = run_reference(solve, x, counted, head, float64=False)
    times["reference_s"] = time.perf_counter() - started
    lines = [compare("ours vs reference", ours, reference)]
    if args.float64:
        started = time.perf_counter()
        double = run_reference(solve, x, counted, head, float64=True)
        times["reference_float64_s"] = time.perf_counter() - started
        lines += [compare("ours vs reference in float64", ours, double),
                  compare("reference vs itself in float64", reference, double)]
    known = labels >= 0  # a store's unlabelled rows count in no accuracy

    def accuracy(predicted: np.ndarray) -> str:
        return f"{float((predicted == labels)[known].mean()):.3f}" if known.any() else "n/a"

    print(f"images={args.images} classes={args.classes} dim={args.dim} "
          f"zero_shot_accuracy={accuracy((x @ head.T).argmax(1))} transclip_accuracy={accuracy(ours.argmax(1))} "
          + " ".join(f"{k}={v:.2f}" for k, v in times.items()))
    if args.sigma_float32:
        lines.append(sigma_rounding(x, head))
    if args.departures:
        lines += departures(solve, x, counted, head, args.seed)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
