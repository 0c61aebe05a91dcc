"""Every command's outputs: where they may go, and written whole or not at all.

``refuse_output_inside``, ``refuse_shared_outputs`` and ``prepare_output`` are the checks every
command makes before it writes: an output never lies inside an input, two outputs of one command
never name one place (compared by ``storage.place``, so ``./p/../p/x`` and ``file:///.../p/x`` are ``p/x``),
and an existing output is replaced only with ``--overwrite`` and only when this tool wrote it.
Writing goes to a hidden sibling, renamed into place. A rename within one directory is atomic, so
a reader, a crash or a full disk never leaves a half-written file at an output path that looks
complete, and an output being replaced (``--overwrite``) stays whole until the new one is. A
file output may be a URL (``s3://...``): it is written locally, then put whole (``atomic_file``);
a folder output must be local (``local_folder``). A failed write removes its sibling and becomes
one ``StoreError`` naming the output (see ``write_error``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, StoreError
from .storage import filesystem, local_path, open_read, place

DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def write_error(what: str, path: str | Path, exc: OSError, then: str = "") -> StoreError:
    """The one line for an output that could not be written: what, where, why and what to do.

    ``then`` is what to do once the cause is fixed (default: run the same command again; any
    output already there is untouched).
    """
    reason = DISK_FULL.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__
    fix = "free space" if exc.errno in DISK_FULL else "check that you may write there"
    then = then or f"run the same command again (any {what} already there is untouched)"
    return StoreError(f"cannot write {what} '{path}' ({reason}): {fix}, then {then}")


def _within(inner: str, outer: str) -> bool:
    """True when the place ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def refuse_output_inside(out: str | Path, inputs: list[str | Path], option: str = "--out") -> None:
    """An InputError when ``out`` is one of the inputs or lies inside one (a local path or a URL,
    in any spelling of the place).

    Writing there would mix outputs into a store or run, or (with --overwrite) replace an input.
    """
    target = place(out)
    for given in inputs:
        if _within(target, place(given)):
            raise InputError(f"{option} '{out}' lies inside the input '{given}': write it elsewhere, beside the input")


def refuse_shared_outputs(outputs: dict[str, str | Path | None]) -> None:
    """An InputError when two of a command's outputs (option -> path or URL; None: not given) name
    the same place in any spelling, or one lies inside another (a report folder holding the
    predictions): the later write would replace or delete the earlier one."""
    given = [(option, target, place(target)) for option, target in outputs.items() if target]
    for index, first in enumerate(given):
        for second in given[index + 1 :]:
            if first[2] == second[2]:
                raise InputError(f"{first[0]} '{first[1]}' and {second[0]} '{second[1]}' name the same place: "
                                 "give each output its own path")
            for inner, outer in ((first, second), (second, first)):
                if _within(inner[2], outer[2]):
                    raise InputError(f"{inner[0]} '{inner[1]}' lies inside {outer[0]} '{outer[1]}': the outputs "
                                     "would overwrite each other; give each its own place")


def local_folder(target: str | Path, option: str, what: str) -> Path:
    """The local folder an output folder is written to; an InputError for object storage, where a
    folder cannot be put in place whole (a ``file://`` URL is its local path)."""
    local = local_path(target)
    if local is None:
        raise InputError(f"{option} '{target}' is on object storage, but a {what} is a folder, written only to a "
                         "local path: write it here, then copy it up (e.g. aws s3 cp --recursive)")
    return local


def prepare_output(path: str | Path, overwrite: bool, is_ours: Any, what: str, remove: bool = True,
                   option: str = "--out") -> None:
    """Refuse an existing output unless ``overwrite``; then remove it only if it is one of ours.

    ``path`` is a local path or a URL, given as the user gave it (``is_ours`` receives it so);
    ``option`` is how the user named it (``--predictions``; a recipe key), for the refusals.
    ``remove=False`` only checks, so a command can refuse early and delete the old output once
    its inputs have proven sound (a bad input then leaves the old output as it was).
    """
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        return
    if not overwrite:
        raise StoreError(f"{what} '{path}' already exists: pass --overwrite to replace it, or choose another {option}")
    if fs.isdir(inner) and not fs.ls(inner):
        if remove:
            fs.rm(inner, recursive=True)
        return
    if not is_ours(path):
        raise StoreError(f"'{path}' exists and is not a {what} written by lpclip-cache: refusing to delete it; "
                         f"choose another {option}")
    if remove:
        fs.rm(inner, recursive=True)


def check_output(out: str | Path, inputs: list[str | Path], overwrite: bool, is_ours: Any, what: str,
                 option: str = "--out") -> None:
    """The checks of an output file before any input is read: not inside an input, and an existing
    one only with ``overwrite`` and only if ours (it is replaced whole when the new one is written)."""
    refuse_output_inside(out, inputs, option)
    prepare_output(out, overwrite, is_ours, what, remove=False, option=option)


def has_hdf5_attribute(path: str | Path, name: str) -> bool:
    """True when ``path`` is an HDF5 file (local or a URL's object) whose root holds attribute ``name``."""
    import h5py

    try:
        with open_read(path) as stream, h5py.File(stream, "r") as handle:
            return name in handle.attrs
    except (OSError, ValueError):
        return False


def is_report(path: str | Path) -> bool:
    """True when ``path`` (a local path or a URL) is a JSON report written by this tool."""
    try:
        with open_read(path) as stream:
            data = json.loads(stream.read())
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and data.get("tool") == "lpclip-cache"


def is_report_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder written by ``evaluate --report``."""
    local = local_path(path)
    return local is not None and (local / "report.json").is_file()


def write_report(report: dict[str, Any], out: str | Path, overwrite: bool, option: str = "--out") -> None:
    """Write a report JSON (a local path or a URL) whole, refusing to replace what is not ours (a
    report there is replaced by the rename or the upload, so it stays whole until the new one is)."""
    from . import __version__

    prepare_output(out, overwrite, is_report, "report", remove=False, option=option)
    write_json_atomic(out, {"tool": "lpclip-cache", "version": __version__, **report}, "report")


def rust_io_error(exc: Exception) -> OSError:
    """The OSError behind a safetensors ``SafetensorError`` ("... (os error 28)"), which is how its
    Rust writer reports an I/O failure such as a full disk."""
    code = re.search(r"os error (\d+)", str(exc))
    return OSError(int(code.group(1)) if code else errno.EIO, str(exc))


def sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (plot writers read the format from it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.{tag}{path.suffix}")


def _flush_to_disk(path: Path) -> None:
    """fsync a file, or every file in a folder, so a rename never outruns the data on power loss."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for name in files:
        descriptor = os.open(name, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextmanager
def atomic_file(path: str | Path, what: str = "output") -> Iterator[Path]:
    """A temporary local path to write to, which becomes ``path`` when the block succeeds.

    A local ``path`` (or ``file://`` URL): the temporary file lies beside it and is renamed onto
    it. A URL of object storage: the file is written in a private local folder, then uploaded in
    one put, which the store makes visible whole (fsspec). On any error (an interrupt included)
    the temporary file is removed and ``path`` is left as it was; an ``OSError`` becomes a
    ``StoreError`` naming ``what`` and ``path``.
    """
    local = local_path(path)
    if local is None:
        with _uploaded(str(path), what) as temp:
            yield temp
        return
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(what, path, exc) from exc
    temp = sibling(local, "partial")
    try:
        yield temp
        _flush_to_disk(temp)
        os.replace(temp, local)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a folder that refused the write may refuse this too
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(what, path, exc) from exc
        raise


@contextmanager
def _uploaded(url: str, what: str) -> Iterator[Path]:
    """A local file (in a private temporary folder, with the URL's file name) that is put at
    ``url`` when the block succeeds; the folder goes either way."""
    import tempfile

    fs, inner = filesystem(url)
    try:
        with tempfile.TemporaryDirectory(prefix="lpclip-upload-") as folder:
            temp = Path(folder) / Path(inner).name
            yield temp
            fs.put_file(str(temp), inner)
    except OSError as exc:
        raise write_error(what, url, exc) from exc


def write_text_atomic(path: str | Path, text: str, what: str = "output") -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_file(path, what) as temp, open(temp, "w") as stream:
        stream.write(text)


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, infinities) as None: JSON has no such numbers,
    and strict parsers refuse the ``NaN`` Python would write (an undefined figure reads as null)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def json_text(data: Any) -> str:
    """Indented JSON of ``data`` as every output of the project writes it: non-finite floats as
    null (``json_safe``), other non-JSON values as their text."""
    return json.dumps(json_safe(data), indent=2, default=str, allow_nan=False)


def write_json_atomic(path: str | Path, data: Any, what: str = "report") -> None:
    """Write ``data`` as indented JSON (``json_text``) to ``path`` whole or not at all."""
    write_text_atomic(path, json_text(data) + "\n", what)


@contextmanager
def atomic_dir(path: str | Path, what: str, replace: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``path`` to fill, which takes ``path``'s place when the block succeeds.

    ``path`` absent (or an empty folder): one rename. ``path`` present and ``replace``: it is
    renamed aside, the new folder renamed in, then the old one deleted, so a run or report at
    ``path`` is always whole (between the two renames ``path`` is briefly absent). ``path``
    present without ``replace`` (another process wrote it meanwhile): a ``StoreError``, and
    ``path`` is left as it is. On any error the hidden folder is removed.
    """
    path = local_folder(path, "the output", what)
    staging = sibling(path, "partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        raise write_error(what, path, exc) from exc
    try:
        yield staging
        _flush_to_disk(staging)
        _move_into_place(staging, path, what, replace)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(what, path, exc) from exc
        raise


def _move_into_place(staging: Path, path: Path, what: str, replace: bool) -> None:
    """Rename ``staging`` to ``path``; with ``replace``, move what is there aside first (again if
    another writer slips in between) and delete it after."""
    moved_aside: list[Path] = []
    # an interrupt between two renames would leave path missing: hold SIGINT and SIGTERM until
    # the new folder is in place (their handlers run right after)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        while True:
            try:
                os.rename(staging, path)  # atomic; succeeds onto a missing path or an empty folder
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                if not replace:
                    raise StoreError(f"{what} '{path}' was written by another process while this one was working: pass "
                                     "--overwrite to replace it, or choose another --out") from None
            old = sibling(path, "old")
            try:
                os.rename(path, old)
            except FileNotFoundError:
                continue  # another writer moved it aside meanwhile
            moved_aside.append(old)
    except BaseException:
        if moved_aside and not path.exists():
            os.rename(moved_aside.pop(), path)  # put the last whole one back
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        for old in moved_aside:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

