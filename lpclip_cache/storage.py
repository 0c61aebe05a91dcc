"""Storage URLs: where a path or URL points, the fsspec filesystem behind it, and the project cache.

Every input and output may be a local path or an fsspec URL (``s3://...``, ``gs://...``,
``file://...``). ``filesystem`` opens any of them, ``local_path`` says whether one is on this
machine, and ``place`` spells each place one way, so two names of one place compare equal.
fsspec is imported only when a function needs it: the command line imports this module at start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError


def is_url(target: str | Path) -> bool:
    """True for an fsspec URL (``s3://...``, ``gs://...``, ``file://...``), False for a plain path."""
    return "://" in str(target)


def filesystem(target: str | Path) -> tuple[Any, str]:
    """The fsspec filesystem of a path or URL, and the path within it; an InputError for a URL
    whose protocol fsspec does not know or whose package is not installed."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(target))
    except (ValueError, ImportError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"'{target}' cannot be opened ({why}): give a local path or a URL of an installed "
                         "fsspec filesystem (s3://, gs://, file://, ...)") from None


def local_path(target: str | Path) -> Path | None:
    """The local path an output or input names: a plain path, or the path of a ``file://`` URL;
    None for a URL of any other filesystem (object storage)."""
    if not is_url(target):
        return Path(target).expanduser()
    from fsspec.implementations.local import LocalFileSystem

    fs, inner = filesystem(target)
    return Path(inner) if isinstance(fs, LocalFileSystem) else None


def place(target: str | Path) -> str:
    """One spelling of where a path or URL points, so two names of one place compare equal: a
    local path (a ``file://`` URL included) absolute and resolved (``./p/../p/x`` is ``p/x``),
    else ``PROTOCOL://path`` with ``.``, ``..`` and repeated or trailing slashes removed."""
    import posixpath

    local = local_path(target)
    if local is not None:
        return str(local.resolve())
    fs, inner = filesystem(target)
    return fs.unstrip_protocol(posixpath.normpath(inner).lstrip("/"))


@contextmanager
def open_read(path: str | Path) -> Iterator[Any]:
    """A binary stream of a local file or a URL's object (fsspec), for the checks of what is there."""
    fs, inner = filesystem(path)
    with fs.open(inner, "rb") as stream:
        yield stream


def cache_dir() -> Path:
    """The project's cache (trained teachers, copies of remote shards): ``$LPCLIP_CACHE_DIR`` or
    ``~/.cache/lpclip-cache``."""
    return Path(os.environ.get("LPCLIP_CACHE_DIR", Path.home() / ".cache" / "lpclip-cache")).expanduser()
