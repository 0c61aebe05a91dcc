"""Peak memory of ``lpclip-cache evaluate`` on a store four times larger than a memory budget,
this tree against an earlier revision, side by side in one run.

    python benchmarks/evaluate_memory.py [--memory-budget 64] [--baseline 13c30c9] [--dim 512] [--classes 10]

The store holds ``4 x --memory-budget`` MB of what ``evaluate`` reads (``clean/emb``, ``valid``,
``labels``), counted as training's memory budget counts the arrays it reads
(``sampling.PairSource.resident_bytes``: their bytes as held in memory when read whole); the budget
is in MB (2**20 bytes). Its embeddings are fp16 unit vectors around one centre per class, in
shards of ``--shard-size`` rows. A run is trained on a small store of the same classes, then
``python -m lpclip_cache evaluate --run RUN --store STORE --out REPORT.json`` runs in a child
process for each tree: this one, and ``--baseline`` exported with ``git archive`` into a
temporary folder, each on ``PYTHONPATH``. A child's peak is its peak resident set size
(``ru_maxrss`` of ``RUSAGE_CHILDREN`` in a small launcher that runs it); ``python -m lpclip_cache
info STORE`` (imports and opening the store, nothing scored) gives the floor. BLAS runs on one
thread. The two reports must be equal.

Table (stdout): what, peak MB, ratio to this tree's evaluate; then whether the reports agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
MANIFEST_MODEL = {"name": "benchmark", "pretrained": {"kind": "none", "value": None, "sha256": None}}


def evaluated_bytes_per_row(dim: int) -> int:
    """Bytes per row of the arrays ``evaluate`` reads: clean/emb (fp16), valid (bool), labels (int32)."""
    return dim * 2 + 1 + 4


def write_store(path: Path, centres: np.ndarray, n: int, shard_size: int, views: int, seed: int) -> Path:
    """A complete store of ``n`` clustered fp16 unit embeddings (``views`` weak and strong views
    each), written a few shards at a time through ``StoreWriter``."""
    from lpclip_cache.store import Layout, StoreWriter
    from lpclip_cache.zeroshot import teacher_outputs

    classes, dim = centres.shape
    rng = np.random.default_rng(seed)
    layout = Layout(n, dim, classes, views, views, shard_size)
    manifest = {"model": MANIFEST_MODEL, "classnames": [f"class {i}" for i in range(classes)],
                "teacher": {"logit_scale": 30.0, "temperature": 1.0}, "dataset": {"kind": "synthetic"}}
    writer = StoreWriter(path, layout, manifest)
    try:
        writer.begin(centres)
        step = max(1, (1 << 16) // shard_size)  # shards per write: about 64k rows
        for first in range(0, layout.n_shards, step):
            stop = min(layout.n_shards, first + step)
            start, end = first * shard_size, min(n, stop * shard_size)
            labels = rng.integers(0, classes, end - start)
            rows = {"labels": labels.astype(np.int32), "valid": np.ones(end - start, bool),
                    "keys": np.array([f"sample/{i}" for i in range(start, end)]),
                    "reason": np.array([""] * (end - start))}
            for kind, count in (("clean", 0), ("weak", views), ("strong", views)):
                if kind != "clean" and count == 0:
                    continue
                shape = (end - start, dim) if kind == "clean" else (end - start, count, dim)
                base = centres[labels] if kind == "clean" else centres[labels][:, None]
                noisy = base + 0.05 * rng.normal(size=shape).astype(np.float32)
                emb = (noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)).astype(np.float16)
                rows[f"{kind}/emb"] = emb
                rows[f"{kind}/label"], rows[f"{kind}/conf"] = teacher_outputs(emb, centres, 30.0, 1.0)
            writer.write_shards(first, stop, rows)
        writer.finish()
    finally:
        writer.release()
    return path


# Run from a small launcher: a child's peak counts the memory of the process it was forked from,
# so the command is forked from a fresh interpreter, never from this one (which trained a run).
LAUNCHER = """import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def peak_mb(tree: Path, *args: str) -> float:
    """Peak resident set size (MB) of ``python -m lpclip_cache ARGS`` run in ``tree`` (also its PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import lpclip_cache; print(lpclip_cache.__file__)"],
                           env=env, cwd=tree, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(tree.resolve()), f"{where} is not from {tree}"
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "lpclip_cache", *args], env=env,
                          cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"lpclip_cache {' '.join(args)} from {tree} failed ({done.returncode}):\n{done.stderr}")
    return int(done.stdout.split()[-1]) / 1024  # kilobytes on Linux


def export(revision: str, folder: Path) -> Path:
    """The package at ``revision`` (``git archive``), under ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "lpclip_cache"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-budget", type=float, default=64.0, help="MB; the store is 4 times larger")
    parser.add_argument("--baseline", default="13c30c9", help="the revision to compare with")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=1024)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from lpclip_cache.training import TrainConfig, train

    n = int(np.ceil(4 * args.memory_budget * MB / evaluated_bytes_per_row(args.dim)))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="evaluate-memory-") as tmp:
        work = Path(tmp)
        store = write_store(work / "big.zarr", centres, n, args.shard_size, views=0, seed=1)
        adapt = write_store(work / "adapt.zarr", centres, 2000, args.shard_size, views=1, seed=2)
        train(TrainConfig(store=str(adapt), out=str(work / "run"), epochs=1, progress=False))
        baseline = export(args.baseline, Path(tempfile.mkdtemp(dir=tmp)))
        size = n * evaluated_bytes_per_row(args.dim) / MB
        print(f"store: {n} rows x {args.dim} (fp16), {args.classes} classes, shards of {args.shard_size}: "
              f"{size:.0f} MB evaluated = {size / args.memory_budget:.1f} x the {args.memory_budget:g} MB budget")
        floor = peak_mb(ROOT, "info", str(store))
        peaks = {}
        for name, tree in ((args.baseline, baseline), ("this tree", ROOT)):
            peaks[name] = peak_mb(tree, "evaluate", "--run", str(work / "run"), "--store", str(store),
                                  "--out", str(work / f"{name.replace(' ', '-')}.json"))
        reports = [json.loads((work / f"{name.replace(' ', '-')}.json").read_text()) for name in peaks]
        ours = peaks["this tree"]
        rows = [("python -m lpclip_cache info (floor)", floor),
                *((f"evaluate, {name}", value) for name, value in peaks.items())]
        print(f"{'what':<38} {'peak MB':>8} {'ratio':>6}")
        for what, value in rows:
            print(f"{what:<38} {value:8.0f} {value / ours:6.2f}")
        print("reports equal:", "yes" if reports[0] == reports[1] else "NO")


if __name__ == "__main__":
    main()
