"""One writer per store: the lock beside a store (``STORE.lock``) and the fencing check a writer
makes before each commit (see docs/store-format.md, "Writers and locks").

Every lock has a job token, unique to one acquisition, which its ``LockRecord`` holds with the
writer's host, pid and last write (the same record, local and S3 alike). The store records the
tokens of the jobs that wrote it, and each shard the token of its writer, so a writer that lost
its lock while paused is stopped by ``check`` before it commits, and ``verify`` finds what
slipped through.

- A local path, or a ``file://`` URL of the same folder, has an OS file lock (``StoreLock``):
  ``flock`` on ``STORE.lock``, released by the kernel when its holder dies, so it is never stale.
- An ``s3://`` store has a lock object (``ObjectStoreLock``), created only if absent
  (``If-None-Match: *``), renewed and taken over only as exactly the object last read
  (``If-Match`` on its ETag), and released the same way.
- Any other filesystem has no atomic create-if-absent that this module trusts (fsspec's generic
  ``mode="create"`` checks, then writes): a one-line warning, and no lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, StoreError

log = logging.getLogger(__name__)

STALE_ENV = "LPCLIP_LOCK_STALE_SECONDS"
HEARTBEAT_ENV = "LPCLIP_LOCK_HEARTBEAT_SECONDS"
PID_MAX = 2**22  # Linux's largest pid_max: anything above is not a process id


def new_job() -> str:
    """A job token: unique to one acquisition of a store's lock."""
    return uuid.uuid4().hex


def lock_timing(heartbeat: float, stale: float) -> tuple[float, float]:
    """The heartbeat period and the stale time of object locks: the defaults, or
    ``$LPCLIP_LOCK_HEARTBEAT_SECONDS`` and ``$LPCLIP_LOCK_STALE_SECONDS`` when set."""

    def read(name: str, default: float) -> float:
        text = os.environ.get(name)
        if text is None or not text.strip():
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"${name} is '{text}': set it to a positive number of seconds, or unset it")
        return value

    heartbeat, stale = read(HEARTBEAT_ENV, heartbeat), read(STALE_ENV, stale)
    if heartbeat >= stale:
        raise InputError(f"${HEARTBEAT_ENV} ({heartbeat:g} s) must be shorter than ${STALE_ENV} ({stale:g} s), or "
                         "a live writer's lock would be taken over: lower the first or raise the second")
    return heartbeat, stale


@dataclass(frozen=True)
class LockRecord:
    """What a store's lock holds, local and S3 alike (one JSON object): the writer's job token,
    host and pid, and when it last wrote the lock (``heartbeat``, seconds since the epoch, for a
    reader's eyes only: staleness goes by the server's clock, never by this).

    ``ours`` is the record a writer writes (``text``), ``parse`` the one a reader reads back: a
    field missing or malformed reads as None, so empty, garbled or foreign content, whatever its
    JSON type, reads as a record that names no one.
    """

    job: str | None = None
    host: str | None = None
    pid: int | None = None
    heartbeat: float | None = None

    @classmethod
    def ours(cls, job: str) -> LockRecord:
        """The record of this process holding the lock as ``job``, written now."""
        return cls(job=job, host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())

    def text(self) -> str:
        """The record as the lock holds it (JSON)."""
        return json.dumps({"host": self.host, "pid": self.pid, "job": self.job, "heartbeat": self.heartbeat})

    @classmethod
    def parse(cls, data: bytes | str | None) -> LockRecord:
        """The record a lock holds; its fields that are missing or malformed as None."""
        try:
            record = json.loads(data) if data else None
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(record, dict):
            return cls()
        job, host, pid, beat = (record.get(key) for key in ("job", "host", "pid", "heartbeat"))
        return cls(job=job if isinstance(job, str) else None, host=host if isinstance(host, str) else None,
                   pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < PID_MAX else None,
                   heartbeat=_seconds(beat))

    @property
    def anonymous(self) -> bool:
        """True when the record names no writer (no job, host or pid)."""
        return self.job is None and self.host is None and self.pid is None

    def holder(self, always_host: bool = True) -> str:
        """Who holds the lock, for messages: ``pid N on HOST`` (the host only when it is another
        machine's, unless ``always_host``), or an unknown writer."""
        if self.pid is None:
            return "another writer (its lock holds no valid record)"
        shown = f"pid {self.pid}"
        if self.host is not None and (always_host or self.host != socket.gethostname()):
            shown += f" on {printable(self.host)}"
        return shown

    def process_gone(self) -> bool:
        """True when the record names a process on this machine that no longer exists."""
        if self.host != socket.gethostname() or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # PermissionError: it exists, owned by someone else
            return False
        return False


def _seconds(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (NaN, infinite, too large, not a number)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def printable(text: str, limit: int = 80) -> str:
    """``text`` fit for a one-line message: control characters replaced, at most ``limit`` long."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def lost_lock(store: str, path: str, record: LockRecord | None) -> StoreError:
    """The one line of a writer whose lock is no longer its own (``record``: what the lock holds
    now, None when it is gone)."""
    now = "was removed" if record is None else f"now belongs to {record.holder()}"
    return StoreError(
        f"store '{store}': this job lost its lock '{path}' (it {now}: another job took the store over while this "
        "one was paused or cut off): it stopped before committing another shard; let the other job finish, "
        "then check the store with 'lpclip-cache verify'")


def unreadable_lock(store: str, path: str, exc: OSError) -> StoreError:
    """The one line for a lock that cannot be read: never taken for a stale one."""
    return StoreError(f"cannot read the lock '{path}' of store '{store}' ({exc.strerror or exc}): check that you "
                      "may read it, then run the same command again (a lock is taken over only once it is proven "
                      "old)")


def store_lock(target: str | Path, job: str | None = None) -> StoreLock | ObjectStoreLock:
    """The lock of the store at ``target``: an OS file lock for a local path or a ``file://`` URL
    (both name the same ``STORE.lock``), a lock object for anything else (see ``ObjectStoreLock``)."""
    from .storage import filesystem, is_url

    if not is_url(target):
        return StoreLock(Path(target), job)
    fs, inner = filesystem(target)
    if "file" in _protocols(fs):
        return StoreLock(Path(inner), job)
    return ObjectStoreLock(str(target), job)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


class StoreLock:
    """An exclusive lock beside a local store (``STORE.lock``), held while one extraction writes it.

    It is an OS file lock, released by the kernel when the holder dies (SIGKILL included), so a
    crashed run never leaves a stale lock behind, and a paused holder keeps it. The file holds
    the holder's ``LockRecord``, whose job token ``check`` compares.
    """

    def __init__(self, path: Path, job: str | None = None) -> None:
        self.store = str(path).rstrip("/") or "/"
        self.path = Path(f"{self.store}.lock")
        self.job = job or new_job()
        self.handle: Any = None
        self.held = False

    def __enter__(self) -> StoreLock:
        import fcntl

        from .outputs import write_error

        while True:
            try:  # a folder that cannot be written is one line (exit 5), not a traceback
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
            except OSError as exc:
                raise write_error("store", self.store, exc) from None
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.seek(0)
                record = LockRecord.parse(self.handle.read())
                self.handle.close()
                holder = "another process" if record.anonymous else record.holder(always_host=False)
                raise StoreError(f"store '{self.store}' is being written by {holder}: wait for it to finish, "
                                 "or write another --out") from None
            if self._still_linked():
                break
            self.handle.close()  # the holder deleted this file as it let go: lock the one now there
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(LockRecord.ours(self.job).text())
        self.handle.flush()
        self.held = True
        return self

    def _still_linked(self) -> bool:
        """True when the locked file is still the one at ``self.path`` (not unlinked meanwhile)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def check(self) -> None:
        """Fencing: a StoreError unless the lock file at the store still names this job."""
        try:
            record = LockRecord.parse(self.path.read_bytes())
        except FileNotFoundError:
            raise lost_lock(self.store, str(self.path), None) from None
        except OSError as exc:
            raise unreadable_lock(self.store, str(self.path), exc) from None
        if record.job != self.job:
            raise lost_lock(self.store, str(self.path), record)

    def __exit__(self, *exc: Any) -> None:
        if self.handle is None:
            return
        if self.held and self._still_linked():
            self.path.unlink(missing_ok=True)  # still locked: one who opened it meanwhile sees it unlinked, retries
        self.handle.close()
        self.handle = None
        self.held = False


class ObjectStoreLock:
    """The lock of a store on S3 (``STORE.lock`` beside it, an object holding the writer's
    ``LockRecord``: host, pid, job token and last heartbeat).

    Every change is a conditional write, so two writers can never both believe they hold it: it
    is created only if absent (``If-None-Match: *``); a thread renews it every
    ``HEARTBEAT_SECONDS`` only as the very object this holder last wrote (``If-Match`` on its
    ETag), and a renewal that fails that way marks the lock lost; a stale lock is taken over by
    replacing exactly the object read (``If-Match``), so of two takers one wins and the other is
    refused; release joins the heartbeat thread, then deletes only its own object.

    A lock is stale only when proven old: its object was last written more than
    ``STALE_SECONDS`` ago by the server's own clock (``Date`` minus ``Last-Modified``), whatever
    its content says, or it names a process of this machine that no longer exists. A lock that
    cannot be read is never stale, and one that vanished between two steps is tried again.
    ``$LPCLIP_LOCK_STALE_SECONDS`` and ``$LPCLIP_LOCK_HEARTBEAT_SECONDS`` change the times.
    A filesystem other than S3 gets a one-line warning and no lock.
    """

    HEARTBEAT_SECONDS = 30.0
    STALE_SECONDS = 120.0
    ATTEMPTS = 8  # a lock that changes under this writer more often than this is a busy store

    def __init__(self, path: str, job: str | None = None) -> None:
        self.store = path.rstrip("/")
        self.path = f"{self.store}.lock"
        self.job = job or new_job()
        self.HEARTBEAT_SECONDS, self.STALE_SECONDS = lock_timing(self.HEARTBEAT_SECONDS, self.STALE_SECONDS)
        self.held = False
        self.lost = False
        self._objects: S3Objects | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: Any = None

    @property
    def objects(self) -> S3Objects | None:
        """The conditional operations on the lock object, or None on a filesystem without them."""
        if self._objects is None:
            from .storage import filesystem

            fs, inner = filesystem(self.path)
            if "s3" in _protocols(fs) and hasattr(fs, "_call_s3"):
                self._objects = S3Objects(fs, inner)
        return self._objects

    def _record(self) -> bytes:
        """This job's lock record, written now (created, renewed or taken over)."""
        return LockRecord.ours(self.job).text().encode()

    def _stale(self, holder: LockRecord, age: float | None) -> bool:
        """True when the lock read is proven old: its process is gone (this machine's), or the
        server last wrote it more than ``STALE_SECONDS`` ago."""
        return holder.process_gone() or (age is not None and age > self.STALE_SECONDS)

    def __enter__(self) -> ObjectStoreLock:
        from .outputs import write_error
        from .storage import filesystem

        objects = self.objects
        if objects is None:
            log.warning(f"'{self.store}' is on a filesystem without atomic create-if-absent writes: no lock keeps a "
                        "second writer away; run one extraction at a time on it")
            return self
        fs, inner = filesystem(self.path)
        try:
            fs.makedirs(fs._parent(inner), exist_ok=True)
            for _ in range(self.ATTEMPTS):
                etag = objects.create(self._record())
                if etag is None:
                    etag = self._take_over(objects)
                if etag is not None:
                    self._hold(etag)
                    return self
        except OSError as exc:
            raise write_error("store", self.store, exc, f"check the lock '{self.path}'") from None
        raise StoreError(f"store '{self.store}': its lock '{self.path}' kept changing while this job tried to take "
                         "it (several writers at once): wait for them to finish, or write another --out")

    def _take_over(self, objects: S3Objects) -> str | None:
        """After a failed create: the ETag of this job's lock if it took the stale lock over (or the
        lock there is its own), None to try again (it vanished, or another taker was first); a
        StoreError when the lock is live."""
        try:
            found = objects.read()
        except OSError as exc:  # unreadable is not stale: only a lock proven old is taken over
            raise unreadable_lock(self.store, self.path, exc) from None
        if found is None:
            return None  # released between the create and this read: create again
        data, etag, age = found
        holder = LockRecord.parse(data)
        if holder.job == self.job:
            return etag  # this job's own create, answered "exists" on a retried request
        if not self._stale(holder, age):
            raise StoreError(
                f"store '{self.store}' is being written by {holder.holder()} (lock '{self.path}'): wait for "
                f"it to finish, or write another --out; a lock whose job died is taken over "
                f"{self.STALE_SECONDS:g} s after its last heartbeat (at once on the machine that ran it)")
        return objects.replace(self._record(), etag)

    def _hold(self, etag: str) -> None:
        self.held, self.lost, self._etag = True, False, etag
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lpclip-store-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Renew the lock every ``HEARTBEAT_SECONDS`` while it is this job's; stop once it is not."""
        objects = self.objects
        assert objects is not None and self._etag is not None
        while not self._stop.wait(self.HEARTBEAT_SECONDS):
            try:
                etag = objects.replace(self._record(), self._etag)
                if etag is None:
                    found = objects.read()  # a retried renewal answered "changed": it may be this one
                    if found is not None and LockRecord.parse(found[0]).job == self.job:
                        etag = found[1]
            except OSError:
                continue  # the next beat tries again; a lock that ages out is the worst case
            if etag is None:
                self.lost = True
                return
            self._etag = etag

    def check(self) -> None:
        """Fencing: a StoreError unless the lock object still names this job (read fresh from the
        server, never from a listing cache)."""
        objects = self.objects
        if objects is None:
            return  # no lock on this filesystem (warned at start)
        try:
            found = objects.read()
        except OSError as exc:
            if self.lost:
                raise lost_lock(self.store, self.path, LockRecord()) from None
            raise unreadable_lock(self.store, self.path, exc) from None
        holder = LockRecord.parse(found[0]) if found is not None else None
        if self.lost or holder is None or holder.job != self.job:
            raise lost_lock(self.store, self.path, holder)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # a renewal in flight ends before the lock goes
            self._thread = None
        if self.held and not self.lost and self.objects is not None and self._etag is not None:
            try:
                self.objects.delete(self._etag)  # only this job's object: a lock taken over stays
            except OSError:
                pass  # it ages out
        self.held = False


class S3Objects:
    """Conditional writes of one S3 object through s3fs (its endpoint, credentials and retries)."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.bucket, self.key = fs.split_path(path)[:2]

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def create(self, data: bytes) -> str | None:
        """Write ``data`` only if the object is absent: its ETag, or None when it exists."""
        try:
            return self._call("put_object", Body=data, IfNoneMatch="*")["ETag"]
        except OSError as exc:
            if isinstance(exc, FileExistsError) or _s3_code(exc) in CONFLICTS:
                return None
            raise

    def replace(self, data: bytes, etag: str) -> str | None:
        """Write ``data`` only over the object whose ETag is ``etag``: the new ETag, or None when the
        object changed or vanished."""
        try:
            return self._call("put_object", Body=data, IfMatch=etag)["ETag"]
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _s3_code(exc) in CONFLICTS:
                return None
            raise

    def read(self) -> tuple[bytes, str, float | None] | None:
        """The object's content, ETag and age in seconds by the server's clock (None if unknown),
        read fresh from the server; None when it does not exist."""
        from email.utils import parsedate_to_datetime

        from fsspec.asyn import sync

        async def get() -> tuple[bytes, dict[str, Any]] | None:
            try:
                response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            except FileNotFoundError:
                return None
            try:
                return await response["Body"].read(), response
            finally:
                response["Body"].close()

        found = sync(self.fs.loop, get)
        if found is None:
            return None
        data, response = found
        modified = response.get("LastModified")
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        age = None
        if modified is not None:
            try:
                now = parsedate_to_datetime(date).timestamp() if date else time.time()
            except (TypeError, ValueError):
                now = time.time()
            age = now - modified.timestamp()
        return data, response["ETag"], age

    def delete(self, etag: str) -> None:
        """Delete the object only if its ETag is still ``etag``."""
        try:
            self._call("delete_object", IfMatch=etag)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if _s3_code(exc) not in CONFLICTS:
                raise


# what S3 answers a conditional request whose condition failed (412), or that lost to a
# concurrent conditional write of the same key (409)
CONFLICTS = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (its cause is botocore's ClientError)."""
    response = getattr(exc.__cause__, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") or (str(status) if status else None)
