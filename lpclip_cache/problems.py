"""What can be wrong in a dataset, each rule with one owner: the ``Problem`` record (where, what,
and what ``--skip-bad`` does with it), the reason an invalid row carries, and the label range.

Sources find problems (``webdata``), extraction refuses them or keeps them, and the store
records them (``store.data_problems`` shows them back): all of them read and write this one record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import BadImage


@dataclass(frozen=True)
class Problem:
    """Something wrong in the data, where it is (``key`` None for a whole shard), and what
    ``--skip-bad`` does with it (``refuse``: the samples concerned are left out; ``invalid``: the
    sample is an invalid row; ``warning``: nothing is left out)."""

    severity: str
    shard: str
    key: str | None
    problem: str

    def line(self) -> str:
        """Where and what, as one line."""
        where = f"shard '{self.shard}'" + (f", sample '{self.key}'" if self.key is not None else "")
        return f"{where}: {self.problem}"

    def record(self) -> dict[str, Any]:
        """The problem as the store's manifest lists it (plain JSON)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Problem:
        """A problem back from a manifest's record, whatever fields it lacks (shown as ``?``)."""
        return cls(str(record.get("severity", "?")), str(record.get("shard")), record.get("key") or None,
                   str(record.get("problem", "?")))

    def invalid_row(self) -> BadImage:
        """The error that makes the sample an invalid row; its message is the row's ``reason``."""
        return BadImage(self.problem)


def labels_outside(labels: np.ndarray, classes: int) -> np.ndarray:
    """The rows whose label names none of ``classes`` classes: at or above it (-1 marks an
    unlabelled row, and the sources refuse any label below it)."""
    return np.flatnonzero(labels >= classes)
