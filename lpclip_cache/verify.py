"""Check a store end to end (``verify``) and copy it to HDF5 for other tools (``export``).

Both read the store one shard of rows at a time, so memory stays bounded for any store size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, StoreError

NORM_TOLERANCE = 1e-2  # fp16 rounding moves a unit vector's norm by about 1e-3


def _row_blocks(n: int, rows: int):
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def verify(path: str) -> dict[str, Any]:
    """Completeness, finite unit embeddings, label ranges and manifest consistency of a store."""
    from .store import FeatureStore, cache_key

    store = FeatureStore(path, require_complete=False)
    layout = store.layout
    problems: list[str] = []
    done = store.read("done")
    if not store.meta.get("complete"):
        problems.append(f"incomplete: {int(done.sum())} of {layout.n_shards} shards written")
    elif not done.all():
        problems.append(f"marked complete but {int((done == 0).sum())} shard(s) are not done")
    if cache_key(store.manifest) != store.cache_key:
        problems.append("manifest does not match its cache key (the attributes were edited)")
    # opening checked the attribute and every array's shape against the layout: what is left to
    # check is content
    head = store.read_rows("head", check_finite=False)
    if not np.isfinite(head).all() or np.abs(np.linalg.norm(head, axis=1) - 1).max() > 1e-4:
        problems.append("head rows are not finite unit vectors")

    counts = {"nonfinite_rows": {}, "non_unit_rows": {}, "bad_labels": {}, "bad_confidences": {}}
    valid_all = store.read("valid")
    done_rows = np.repeat(done.astype(bool), layout.shard_size)[: layout.n]
    for kind in ("clean", "weak", "strong"):
        if not layout.views(kind):
            continue
        nonfinite = non_unit = bad_label = bad_conf = 0
        for start, stop in _row_blocks(layout.n, layout.shard_size):
            rows = valid_all[start:stop] & done_rows[start:stop]
            if not rows.any():
                continue
            emb = store.read_rows(f"{kind}/emb", start, stop, check_finite=False)[rows].astype(np.float32)
            label = store.read_rows(f"{kind}/label", start, stop)[rows]
            conf = store.read_rows(f"{kind}/conf", start, stop, check_finite=False)[rows]
            finite = np.isfinite(emb).all(axis=-1)
            nonfinite += int((~finite).sum())
            norms = np.linalg.norm(np.where(np.isfinite(emb), emb, 0), axis=-1)
            non_unit += int((finite & (np.abs(norms - 1) > NORM_TOLERANCE)).sum())
            bad_label += int(((label < 0) | (label >= layout.n_classes)).sum())
            bad_conf += int((~np.isfinite(conf) | (conf < 0) | (conf > 1 + 1e-6)).sum())
        for name, value in (("nonfinite_rows", nonfinite), ("non_unit_rows", non_unit),
                            ("bad_labels", bad_label), ("bad_confidences", bad_conf)):
            counts[name][kind] = value
            if value:
                problems.append(f"{kind}: {value} {name.replace('_', ' ')}")
    labels = store.labels()
    if ((labels < -1) | (labels >= layout.n_classes)).any():
        problems.append("labels outside [-1, classes)")
    return {
        "store": path,
        "ok": not problems,
        "problems": problems,
        "samples": layout.n,
        "invalid_samples": int((~valid_all).sum()),
        "shards_done": int(done.sum()),
        "shards": layout.n_shards,
        "counts": counts,
    }


def format_verify(report: dict[str, Any]) -> str:
    """The verification summary for people."""
    lines = [
        f"store    {report['store']}",
        f"shards   {report['shards_done']}/{report['shards']} done",
        f"samples  {report['samples']} ({report['invalid_samples']} invalid)",
    ]
    lines += [f"problem  {p}" for p in report["problems"]] or ["ok       every check passed"]
    return "\n".join(lines)


def export_hdf5(path: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Copy a complete store into one HDF5 file (same array paths; manifest as JSON attribute)."""
    import h5py

    from .atomic import atomic_file
    from .store import FeatureStore, prepare_output, refuse_output_inside

    store = FeatureStore(path)
    target = Path(out)
    if target.suffix not in (".h5", ".hdf5"):
        raise InputError(f"--out '{out}' should end in .h5 or .hdf5")
    refuse_output_inside(out, [path])

    def is_export(candidate: Path) -> bool:
        try:
            with h5py.File(candidate, "r") as handle:
                return "lpclip_cache" in handle.attrs
        except OSError:
            return False

    prepare_output(target, overwrite, is_export, "HDF5 export", remove=False)  # the rename replaces it whole
    with atomic_file(target, "HDF5 export") as staging:
        with h5py.File(staging, "w") as handle:
            handle.attrs["lpclip_cache"] = json.dumps(store.meta, default=str)
            handle.attrs["cache_key"] = store.cache_key
            for name, (shape, _) in store.arrays().items():
                if name in ("keys", "reason"):
                    data = handle.create_dataset(name, shape=shape, dtype=h5py.string_dtype("utf-8"))
                else:
                    data = handle.create_dataset(name, shape=shape, dtype=store.group[name].dtype)
                for start, stop in _row_blocks(shape[0], store.layout.shard_size):
                    block = store.read_rows(name, start, stop, check_finite=False)
                    data[start:stop] = block.astype(object) if name in ("keys", "reason") else block
    return {"store": path, "out": str(target), "bytes": target.stat().st_size}


def check_ok(report: dict[str, Any]) -> None:
    """Raise a StoreError when verification found problems."""
    if not report["ok"]:
        raise StoreError(
            f"store '{report['store']}' failed verification ({len(report['problems'])} problem(s): "
            f"{report['problems'][0]}): re-extract it, or run the same extract command to finish it"
        )
