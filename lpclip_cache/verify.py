"""Check a store end to end (``verify``), one shard of rows at a time, so memory stays bounded
for any store size."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StoreError

NORM_TOLERANCE = 1e-2  # fp16 rounding moves a unit vector's norm by about 1e-3


def verify(path: str) -> dict[str, Any]:
    """Completeness, finite unit embeddings, label ranges, manifest consistency, and (format 2) that
    every done shard was written whole by one of the jobs the store lists."""
    from .store import FeatureStore, data_problems

    store = FeatureStore(path, require_complete=False)
    layout = store.layout
    done = store.read("done")
    problems = _store_problems(store, done)
    records = ShardRecords(store)
    kinds = [kind for kind in ("clean", "weak", "strong") if layout.views(kind)]
    valid_all = store.read("valid")
    counts = _count_rows(store, done, valid_all, records, kinds)
    for kind in kinds:
        for name in counts:
            if counts[name][kind]:
                problems.append(f"{kind}: {counts[name][kind]} {name.replace('_', ' ')}")
    problems += records.problems()
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
        "shard_records": records.recorded,
        "counts": counts,
        "data_notes": data_problems(store.manifest, shown=1000),
    }


def _store_problems(store: Any, done: np.ndarray) -> list[str]:
    """What is wrong with the store as a whole: shards not written, a manifest that does not match
    its cache key, a head whose rows are not finite unit vectors."""
    from .store import cache_key

    problems: list[str] = []
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
    return problems


def _count_rows(store: Any, done: np.ndarray, valid_all: np.ndarray, records: ShardRecords,
                kinds: list[str]) -> dict[str, dict[str, int]]:
    """The valid rows of the done shards, one shard at a time, that are wrong in each way (name ->
    kind -> count); each shard is also checked against its record (``records``)."""
    layout = store.layout
    counts = {name: dict.fromkeys(kinds, 0)
              for name in ("nonfinite_rows", "non_unit_rows", "bad_labels", "bad_confidences")}
    for shard, (start, stop) in enumerate(store.spans()):
        if not done[shard]:
            continue
        rows = {name: store.read_rows(name, start, stop, check_finite=False) for name in records.row_arrays}
        records.check(shard, rows)
        valid = valid_all[start:stop]
        for kind in kinds:
            emb = rows[f"{kind}/emb"][valid].astype(np.float32)
            label, conf = rows[f"{kind}/label"][valid], rows[f"{kind}/conf"][valid]
            finite = np.isfinite(emb).all(axis=-1)
            norms = np.linalg.norm(np.where(np.isfinite(emb), emb, 0), axis=-1)
            counts["nonfinite_rows"][kind] += int((~finite).sum())
            counts["non_unit_rows"][kind] += int((finite & (np.abs(norms - 1) > NORM_TOLERANCE)).sum())
            counts["bad_labels"][kind] += int(((label < 0) | (label >= layout.n_classes)).sum())
            counts["bad_confidences"][kind] += int((~np.isfinite(conf) | (conf < 0) | (conf > 1 + 1e-6)).sum())
    return counts


class ShardRecords:
    """The check that each done shard was written whole by a job the store lists: its
    ``shard_job`` is one of the attribute's ``jobs``, and its rows hash to its ``shard_sha256``.
    A store of format 1 records neither (``recorded`` False): nothing to check."""

    def __init__(self, store: Any) -> None:
        from .store import NOT_ROWS, RECORDED_SINCE, schema

        version = store.meta["format_version"]
        self.store = store
        self.recorded = version >= RECORDED_SINCE
        self.row_arrays = [name for name in schema(store.layout, version) if name not in NOT_ROWS]
        jobs = store.meta.get("jobs")
        self.jobs = {job for job in jobs if isinstance(job, str)} if isinstance(jobs, list) else set()
        self.listed = isinstance(jobs, list) and bool(jobs) and len(self.jobs) == len(jobs)
        if self.recorded:
            self.job = store.read("shard_job")
            self.sha256 = store.read("shard_sha256")
        self.unrecorded: list[int] = []
        self.foreign: list[int] = []
        self.torn: list[int] = []

    def check(self, shard: int, rows: dict[str, np.ndarray]) -> None:
        """Sort one done shard among the unrecorded, the foreign and the torn (or none)."""
        from .store import shard_digest

        if not self.recorded:
            return
        job, sha256 = str(self.job[shard]), str(self.sha256[shard])
        if not job or not sha256:
            self.unrecorded.append(shard)
        elif job not in self.jobs:
            self.foreign.append(shard)
        elif shard_digest(self.store.layout, rows) != sha256:
            self.torn.append(shard)

    def problems(self) -> list[str]:
        """One line per kind of shard that was not written whole by a job of this store."""
        if not self.recorded:
            return []
        out = [] if self.listed else ["its attribute has no list of the jobs that wrote it"]
        for shards, what in (
            (self.unrecorded, "without a record of the job that wrote them"),
            (self.foreign, "written by a job this store does not list (a writer that had lost its lock, or a "
                           "finish by one that rewrote the attribute)"),
            (self.torn, "whose rows do not match their record (written in part by another job)"),
        ):
            if shards:
                shown = ", ".join(str(s) for s in shards[:5]) + (" ..." if len(shards) > 5 else "")
                out.append(f"{len(shards)} done shard(s) {what}: {shown}")
        return out


def format_verify(report: dict[str, Any]) -> str:
    """The verification summary for people."""
    lines = [
        f"store    {report['store']}",
        f"shards   {report['shards_done']}/{report['shards']} done",
        f"samples  {report['samples']} ({report['invalid_samples']} invalid)",
    ]
    if not report.get("shard_records", True):
        lines.append("records  none: a store of format 1 does not record which job wrote each shard")
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
