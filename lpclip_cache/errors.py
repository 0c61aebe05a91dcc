"""The one exception type the command line turns into a single clear line."""

from __future__ import annotations


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


class ModelError(LpclipError):
    """A model name, pretrained tag or checkpoint that cannot be resolved or loaded."""

    exit_code = 4


class StoreError(LpclipError):
    """A feature store or run directory that is missing, invalid or incompatible."""

    exit_code = 5
