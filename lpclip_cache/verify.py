"""Check a store end to end (``verify``), one shard of rows at a time, so memory stays bounded
for any store size."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StoreError

NORM_TOLERANCE = 1e-2  # fp16 rounding moves a unit vector's norm by about 1e-3


def verify(path: str) -> dict[str, Any]:
    """Completeness, finite unit embeddings, label ranges and manifest consistency of a store."""
    from .store import FeatureStore, cache_key, data_problems

    store = FeatureStore(path, require_complete=False)
    layout = store.layout
    problems: list[str] = []
    done = store.read("done")
    now = store.state
    if now.kind != "complete":
        problems.append(f"incomplete: {now.done} of {now.shards} shards written")
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
        for start, stop in store.spans():
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
        "data_notes": data_problems(store.manifest, shown=1000),
    }


def format_verify(report: dict[str, Any]) -> str:
    """The verification summary for people."""
    lines = [
        f"store    {report['store']}",
        f"shards   {report['shards_done']}/{report['shards']} done",
        f"samples  {report['samples']} ({report['invalid_samples']} invalid)",
    ]
    lines += [f"problem  {p}" for p in report["problems"]] or ["ok       every check passed"]
    notes = report.get("data_notes", [])
    lines += [f"data     {line}" for line in notes[:10]]
    if len(notes) > 10:
        lines.append(f"data     ... {len(notes) - 10} more in --json")
    return "\n".join(lines)


def check_ok(report: dict[str, Any]) -> None:
    """Raise a StoreError when verification found problems."""
    if not report["ok"]:
        raise StoreError(f"store '{report['store']}' failed verification ({len(report['problems'])} problem(s): "
                         f"{report['problems'][0]}): re-extract it, or run the same extract command to finish it")
