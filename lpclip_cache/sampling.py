"""Where training pairs come from: the cached views of a store, in memory or streamed by shard.

One epoch's order is a function of (seed, epoch) alone: the shards are shuffled, taken
``buffer_shards`` at a time, and the rows of each buffer shuffled together; each row then draws
its teacher view and its student view(s). Streaming reads exactly those shards from the store
when their buffer comes up; in memory, the same slices come from arrays read once. Both produce
the same batches, so they train the same probe, and streaming holds only one buffer at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

BUFFER_SHARDS = 8
MEMORY_BUDGET_BYTES = 2 << 30  # stores whose training arrays fit are read whole


@dataclass
class Buffer:
    """Shuffled valid rows of a few shards, and the arrays (with a view axis) they index into.

    In memory the arrays are the whole store's and ``rows`` global; streamed, they hold just
    these shards and ``rows`` is local. Either way ``take`` gathers only the views asked for.
    """

    arrays: dict[str, np.ndarray]
    rows: np.ndarray
    teacher: str
    student: str
    teacher_views: int
    student_views: int

    def __len__(self) -> int:
        return int(self.rows.size)

    def flat(self, name: str) -> np.ndarray:
        """An array with its sample and view axes merged: entry ``row * views + view``."""
        array = self.arrays[name]
        return array.reshape(array.shape[0] * array.shape[1], *array.shape[2:])

    def positions(self, name: str, views: np.ndarray) -> np.ndarray:
        """Where ``array[rows[i], views[i]]`` lies in ``flat(name)``, for every i."""
        return self.rows * self.arrays[name].shape[1] + views

    def take(self, name: str, views: np.ndarray) -> np.ndarray:
        """``array[rows[i], views[i]]`` for every i, as one gather on the flattened array."""
        return np.take(self.flat(name), self.positions(name, views), axis=0)

    def truth(self) -> np.ndarray:
        """True labels of the rows (the supervised reference only)."""
        return self.arrays["labels"][self.rows].astype(np.int64)


class PairSource:
    """The arrays of one store that training reads, by shard (the ``labels`` array only if asked)."""

    def __init__(
        self,
        store: Any,
        teacher_side: str,
        student_side: str,
        max_views: int | None = None,
        need_teacher_emb: bool = False,
        need_truth: bool = False,
        memory_budget: int = MEMORY_BUDGET_BYTES,
        excluded_shards: frozenset[int] = frozenset(),
    ) -> None:
        self.store = store
        self.excluded = excluded_shards
        self.teacher_side = teacher_side
        self.student_side = student_side
        self.teacher_views = self._views(teacher_side, max_views)
        self.student_views = self._views(student_side, max_views)
        self.need_teacher_emb = need_teacher_emb
        self.need_truth = need_truth
        self.kept = {teacher_side: self.teacher_views, student_side: self.student_views}
        self.streaming = self.resident_bytes() > memory_budget
        self.cache: dict[str, np.ndarray] = {}
        if not self.streaming:
            self.cache = {name: self._read(name, 0, store.layout.n) for name in self._names()}

    def _views(self, side: str, max_views: int | None) -> int:
        count = 1 if side == "clean" else self.store.layout.views(side)
        return count if max_views is None else min(count, max_views)

    def _kept_views(self, name: str) -> int | None:
        """How many views of array ``name`` training draws from (the first ones); None for an array
        without a view axis (the clean view's, ``valid``, ``labels``)."""
        side = name.split("/")[0]
        return self.kept[side] if "/" in name and side != "clean" else None

    def resident_bytes(self) -> int:
        """Bytes of the arrays training reads, as held in memory when the store is read whole: every
        array ``_names`` lists, of each only the views it draws from (``--max-views``)."""
        arrays = self.store.arrays()
        total = 0
        for name in self._names():
            shape, dtype = arrays[name]
            views = self._kept_views(name)
            kept_shape = shape if views is None else (shape[0], views, *shape[2:])
            total += int(np.prod(kept_shape)) * np.dtype(dtype).itemsize
        return total

    def _names(self) -> list[str]:
        names = ["valid", f"{self.teacher_side}/label", f"{self.teacher_side}/conf", f"{self.student_side}/emb"]
        if self.need_teacher_emb:
            names.append(f"{self.teacher_side}/emb")
        if self.need_truth:
            names.append("labels")
        return list(dict.fromkeys(names))

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows of one array, only the views training draws from (NaN or infinity in a valid row is a
        StoreError); the clean view gets a view axis of length 1 like the others. Read a shard at a
        time, so the views left out are never all in memory."""
        views = self._kept_views(name)
        if views is None or views == self.store.layout.views(name.split("/")[0]):
            data = self.store.read_rows(name, start, stop)
            return data[:, None] if name.startswith("clean/") else data
        step = self.store.layout.shard_size
        out = None
        for first in range(start, stop, step):
            part = self.store.read_rows(name, first, min(stop, first + step))[:, :views]
            if out is None:
                out = np.empty((stop - start, *part.shape[1:]), part.dtype)
            out[first - start : first - start + len(part)] = part
        return out if out is not None else self.store.read_rows(name, start, stop)[:, :views]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every array training reads."""
        if self.streaming:
            return {name: self._read(name, start, stop) for name in self._names()}
        return {name: array[start:stop] for name, array in self.cache.items()}

    def valid_count(self) -> int:
        """Samples training will see per epoch (held-out shards excluded)."""
        valid = self.cache["valid"] if not self.streaming else self.store.read("valid")
        size = self.store.layout.shard_size
        return int(sum(valid[s * size : (s + 1) * size].sum() for s in range(self.store.layout.n_shards)
                       if s not in self.excluded))

    def epoch(self, seed: int, epoch: int, buffer_shards: int = BUFFER_SHARDS) -> Iterator[Buffer]:
        """The buffers of one epoch, in the order fixed by (seed, epoch)."""
        layout = self.store.layout
        rng = np.random.default_rng([seed, epoch])
        order = [s for s in rng.permutation(layout.n_shards) if s not in self.excluded]
        for first in range(0, len(order), buffer_shards):
            shards = order[first : first + buffer_shards]
            spans = [(s * layout.shard_size, min(layout.n, (s + 1) * layout.shard_size)) for s in shards]
            candidates = np.concatenate([np.arange(start, stop) for start, stop in spans])
            if self.streaming:
                parts = [self.rows(start, stop) for start, stop in spans]
                arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
                valid = arrays["valid"]
                positions = np.arange(candidates.size)
            else:
                arrays = self.cache
                valid = arrays["valid"][candidates]
                positions = candidates
            keep = positions[np.flatnonzero(valid)]
            yield Buffer(arrays, keep[rng.permutation(keep.size)], self.teacher_side, self.student_side,
                         self.teacher_views, self.student_views)


def holdout_shards(n_shards: int, fraction: float, seed: int) -> frozenset[int]:
    """A seeded subset of shards kept out of training for label-free model selection (at least one
    shard stays in training)."""
    if fraction <= 0:
        return frozenset()
    count = min(n_shards - 1, max(1, round(fraction * n_shards)))
    return frozenset(np.random.default_rng([seed, 7]).permutation(n_shards)[:count].tolist())
