"""A small progress line on stderr with rate and ETA (redrawn on a terminal, periodic otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts work done towards a total and shows ``desc done/total unit rate/s ETA``."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float | None = None,
    ) -> None:
        self.total = max(0, total)
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.done = 0
        self.start = time.perf_counter()
        self.last = self.start

    def rate(self) -> float:
        """Units per second so far."""
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current status line."""
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({percent:5.1f}%) "
            f"{rate:,.1f} {self.unit}/s ETA {eta_text}"
        )

    def update(self, amount: int = 1) -> None:
        """Add ``amount`` of finished work; redraw when due, and finish the line at the total."""
        self.done += amount
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.done >= self.total):
            self.last = now
            finished = self.done >= self.total
            suffix = f" done in {format_seconds(now - self.start)}" if finished else ""
            self.stream.write(self.line() + suffix + ("\n" if finished or not self.tty else "\r"))
            self.stream.flush()

    def close(self) -> None:
        """End a line left open on a terminal when the work stopped short of the total."""
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
