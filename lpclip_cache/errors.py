"""The one exception type the command line turns into a single clear line."""

from __future__ import annotations

import signal


class LpclipError(Exception):
    """A user-facing error: what is wrong, where, and what to do.

    The message is printed as one line by the command line, without a traceback.
    ``exit_code`` is the process exit status (see docs/cli.md).
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(LpclipError):
    """Bad input: a path, a file, a dataset or an option that cannot be used."""

    exit_code = 3


class DataUnavailable(InputError):
    """Data that could not be read now: an I/O error reading a shard or an image, a failed
    download, memory exhausted while decoding. Nothing is recorded of it (no invalid row): running
    the same command again retries, and resumes past the shards already written."""

    def __init__(self, message: str) -> None:
        # raised in a DataLoader worker, it comes back built from the worker's whole traceback,
        # whose last line is this class's name and the one-line message
        if "\nOriginal Traceback" in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            message = last.partition(": ")[2] or last
        super().__init__(message)


class BadImage(ValueError):
    """An image whose bytes were read but cannot be used (undecodable, or a sample its data marks
    bad); the message is the reason recorded beside its invalid row. Not an LpclipError: the
    extraction decides whether it stops the run or, with ``--skip-bad``, becomes an invalid row."""


class NothingKept(InputError):
    """A confidence threshold that keeps no sample to train on (``train --threshold``)."""


class Diverged(InputError):
    """A probe whose weights stopped being finite while it was fitted (too large a learning rate)."""


class ModelError(LpclipError):
    """A model name, pretrained tag or checkpoint that cannot be resolved or loaded."""

    exit_code = 4


class StoreError(LpclipError):
    """A feature store or run directory that is missing, invalid or incompatible."""

    exit_code = 5


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM, raised in the main thread so that cleanup runs: ``finally``
    blocks, the store writer joined, the store lock released.

    A ``KeyboardInterrupt`` (so ``except Exception`` never swallows it). ``message`` says what
    was left and what to do; the command line exits with 128 + ``signum``: 130 for SIGINT, 143
    for SIGTERM.
    """

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message

    @classmethod
    def of(cls, exc: BaseException, message: str) -> Interrupted:
        """The interrupt ``exc`` (a plain ``KeyboardInterrupt`` is SIGINT) with a message of what was left."""
        return cls(getattr(exc, "signum", signal.SIGINT), message)
