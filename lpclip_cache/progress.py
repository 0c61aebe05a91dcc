"""A small progress line on stderr with rate and ETA (redrawn on a terminal, periodic otherwise).

It also carries the one test hook of the project: with ``LPCLIP_CACHE_TEST_HOLD=UNIT:COUNT:REPORT:RELEASE``
in the environment, a progress line counting ``UNIT`` that reaches ``COUNT`` writes ``UNIT COUNT``
and a newline to the inherited file descriptor ``REPORT``, then waits until the descriptor
``RELEASE`` reads end-of-file (its writer closes it). A test uses it to hold a command at a known
point: an extraction with exactly that many images handed to the writer, a training inside its
first epoch. It signals or kills the command there, or lets it go on, and never has to guess
how far it got (tests/conftest.py's ``Hold``). A signal interrupts the wait as it would any other
blocking read.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

HOLD_VARIABLE = "LPCLIP_CACHE_TEST_HOLD"


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
        self.hold = hold_point(unit)

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
        if self.hold is not None and self.done >= self.hold[0]:
            count, report, release = self.hold
            self.hold = None
            os.write(report, f"{self.unit} {count}\n".encode())
            while os.read(release, 1):  # until the test closes its end
                pass

    def close(self) -> None:
        """End a line left open on a terminal when the work stopped short of the total."""
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def hold_point(unit: str) -> tuple[int, int, int] | None:
    """``(COUNT, REPORT, RELEASE)`` of the test hook (see the module's docstring) when it names ``unit``."""
    spec = os.environ.get(HOLD_VARIABLE, "").split(":")
    if len(spec) != 4 or spec[0] != unit:
        return None
    count, report, release = (int(part) for part in spec[1:])
    return count, report, release
