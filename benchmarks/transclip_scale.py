"""TransCLIP's time and peak memory at scale: 10,000 and 100,000 embeddings of 512 dimensions,
1000 classes, on this machine's CPU.

    python benchmarks/transclip_scale.py [--images 10000,100000] [--classes 1000] [--dim 512]
                                         [--reference CHECKOUT]

Embeddings are clustered around the classes' centres, with a zero-shot head of moved centres.
Each size runs in a fresh process, so that its peak resident memory (``ru_maxrss``) is its own.
With ``--reference``, the public ``TransCLIP_solver`` from that checkout (see
benchmarks/transclip_reference.py) runs on the same input (saved by the child, read with its
``--inputs``) where its full N x N similarity matrix fits in memory. Lines: ``images=N classes=K
dim=D seconds=S peak_gb=G ...``, then the reference's comparison and times, joined by `` | ``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(images: int, classes: int, dim: int, save: str | None = None, seed: int = 0) -> dict:
    import numpy as np

    from lpclip_cache.transclip import transclip
    from lpclip_cache.zeroshot import TeacherScale

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, classes, images)
    x = centres[labels] + 0.04 * rng.normal(size=(images, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = centres + 0.03 * rng.normal(size=centres.shape).astype(np.float32)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    if save:  # the same input for the public solver
        np.savez(save, x=x, labels=labels, head=head)
    started = time.perf_counter()
    z = transclip(x, head, TeacherScale(100.0)).z  # pretrained CLIP's scale, the paper's
    seconds = time.perf_counter() - started
    return {"images": images, "classes": classes, "dim": dim, "seconds": round(seconds, 1),
            "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "zero_shot_accuracy": round(float(((x @ head.T).argmax(1) == labels).mean()), 4),
            "transclip_accuracy": round(float((z.argmax(1) == labels).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="10000,100000")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)  # where the child saves its input
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.classes, args.dim, args.save)))
        return
    with tempfile.TemporaryDirectory() as folder:
        for images in (int(n) for n in args.images.split(",")):
            need_gb = 4 * images * images / 2**30  # the reference's N x N float32 similarity matrix
            reference = args.reference is not None and need_gb < 8
            inputs = str(Path(folder) / f"{images}.npz")
            done = subprocess.run([sys.executable, __file__, "--one", str(images), "--classes", str(args.classes),
                                   "--dim", str(args.dim), *(["--save", inputs] if reference else [])],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            line = " ".join(f"{k}={v}" for k, v in result.items())
            if reference:
                bench = Path(__file__).with_name("transclip_reference.py")
                ref = subprocess.run([sys.executable, str(bench), str(args.reference), "--inputs", inputs],
                                     capture_output=True, text=True, check=True)
                line += " reference (same input): " + " | ".join(ref.stdout.strip().splitlines())
            elif args.reference is not None:
                line += f" reference: not run (its {images}x{images} similarity matrix needs {need_gb:.0f} GB)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
