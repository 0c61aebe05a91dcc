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


class NothingKept(InputError):
    """A confidence threshold that keeps no sample to train on (``train --threshold``)."""


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
