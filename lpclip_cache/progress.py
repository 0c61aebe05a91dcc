"""A progress line on stderr with rate and ETA, drawn by tqdm: redrawn in place on a terminal or in a
notebook, a plain line every ``interval`` seconds otherwise (a log file, a pipe), and the line with
the total always written when the work is done.

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

import functools
import os
import sys
from typing import Any, TextIO

HOLD_VARIABLE = "LPCLIP_CACHE_TEST_HOLD"
# the line: tqdm's count and percentage, this module's rate, ETA and closing "done in"
LINE = "{desc}: {n}/{total} {unit} ({percent:5.1f}%) {rate_text} {unit}/s ETA {eta_text}{done_text}"


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta(done: float, total: float, seconds: float) -> str:
    """The time left for ``total`` at the rate of ``done`` in ``seconds`` (``?`` before any is done)."""
    return format_seconds((total - done) * seconds / done) if done > 0 and seconds > 0 else "?"


class Progress:
    """Counts work done towards a total and shows ``desc: done/total unit (percent) rate unit/s ETA``.

    ``enabled=False`` disables the bar (tqdm's ``disable``); the test hook works either way.
    ``interval`` is the least time between two lines: 0.2 s on a terminal, 10 s otherwise."""

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
        self.unit = unit
        self.done = 0
        stream = stream or sys.stderr
        self.redrawn = redrawn_in_place(stream)
        interval = interval if interval is not None else (0.2 if self.redrawn else 10.0)
        self.bar = bar_class()(
            total=self.total, desc=desc, unit=unit, file=stream if self.redrawn else Lines(stream),
            disable=not enabled, bar_format=LINE, mininterval=interval, miniters=1, smoothing=0,
            dynamic_ncols=self.redrawn, position=0, leave=self.redrawn,
            # off a terminal the first line waits an interval like the others (tqdm draws 0/total at once)
            delay=0 if self.redrawn else max(interval, 1e-9),
        )
        self.hold = hold_point(unit)

    def update(self, amount: int = 1) -> None:
        """Add ``amount`` of finished work; redraw when due, and finish the line at the total."""
        self.done += amount
        if self.done >= self.total:  # the line with the total and its time, written once
            self.bar.n = self.done
            if not self.redrawn:
                self.bar.refresh()
            self.bar.close()
        else:
            self.bar.update(amount)
        if self.hold is not None and self.done >= self.hold[0]:
            count, report, release = self.hold
            self.hold = None
            os.write(report, f"{self.unit} {count}\n".encode())
            while os.read(release, 1):  # until the test closes its end
                pass

    def close(self) -> None:
        """End a line left open on a terminal when the work stopped short of the total (nothing
        more off a terminal: its last periodic line stands)."""
        self.bar.close()


def redrawn_in_place(stream: TextIO) -> bool:
    """True for a terminal, and for a Jupyter notebook's output stream, which handles carriage returns too."""
    return bool(getattr(stream, "isatty", lambda: False)()) or type(stream).__module__.startswith("ipykernel")


class Lines:
    """A stream that turns tqdm's redraws (``\\rLINE`` and padding) into one plain line each, for a log
    file or a pipe; what would only move the cursor or clear the line is left out."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


@functools.cache
def bar_class() -> type:
    """tqdm with this module's fields for ``LINE`` (built on first use: tqdm is not imported when
    the command line starts)."""
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        monitor_interval = 0  # no monitor thread: with miniters=1 every due update draws

        def display(self, msg: str | None = None, pos: int | None = None) -> Any:
            self.ncols, self.nrows = positive(self.ncols), positive(self.nrows)
            return super().display(msg, pos)

        @property
        def format_dict(self) -> dict[str, Any]:
            fields = super().format_dict
            fields["ncols"] = self.ncols = positive(self.ncols)
            fields["nrows"] = self.nrows = positive(self.nrows)
            done, total, elapsed = fields["n"], fields["total"], fields["elapsed"]
            fields.update(
                percent=100.0 * done / total if total else 100.0,
                rate_text=f"{done / elapsed if elapsed else 0.0:,.1f}",
                eta_text=eta(done, total, elapsed),
                done_text=f" done in {format_seconds(elapsed)}" if done >= total else "",
            )
            return fields

        def __del__(self) -> None:
            """A bar dropped unclosed (an interrupted command) writes nothing more: the CLI ends its line."""

    return Bar


def positive(size: int | None) -> int | None:
    """A terminal's width or height, None where it has none: tqdm reads a pseudo-terminal without a size
    (a bare ``pty``) as -1 columns and rows, and would then show nothing."""
    return size if size is not None and size > 0 else None


def hold_point(unit: str) -> tuple[int, int, int] | None:
    """``(COUNT, REPORT, RELEASE)`` of the test hook (see the module's docstring) when it names ``unit``."""
    spec = os.environ.get(HOLD_VARIABLE, "").split(":")
    if len(spec) != 4 or spec[0] != unit:
        return None
    count, report, release = (int(part) for part in spec[1:])
    return count, report, release
