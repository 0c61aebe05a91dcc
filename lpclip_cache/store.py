"""The feature store: one Zarr v3 group per (dataset split, model, view policy).

Layout (see docs/store-format.md)::

    clean/emb  N x D      float16   L2-normalised embedding of the evaluation view
    clean/label, clean/conf  N      int16 / float32   teacher pseudo-label and confidence
    weak/emb   N x Kw x D float16   (only when Kw > 0), weak/label, weak/conf N x Kw
    strong/emb N x Ks x D float16   (only when Ks > 0), strong/label, strong/conf N x Ks
    head       C x D      float32   zero-shot head (unit rows)
    labels     N          int32     ground truth, -1 where unknown
    keys       N          string    file path or index of each sample (rows are in ``row_order``)
    valid      N          bool      False where the image could not be decoded
    reason     N          string    why it could not be decoded ("" where valid)
    done       S          uint8     1 for each shard written whole (one chunk per shard)
    shard_job  S          string    the job (lock token) that wrote each shard (format 2)
    shard_sha256 S        string    the sha256 of each shard's rows as written (format 2)

The group attribute ``lpclip_cache`` holds the format version, the manifest, its hash (the
cache key), the jobs that wrote the store and whether it is complete. Chunks along N are one
shard long, so each shard is written by one owner. The lock and fencing protocol is in
``locks.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .errors import StoreError
from .locks import ObjectStoreLock, StoreLock, new_job, store_lock
from .outputs import prepare_output, write_error
from .problems import Problem
from .storage import filesystem, is_url

if TYPE_CHECKING:
    from .zeroshot import TeacherScale

FORMAT_VERSION = 2  # 2 added the shard records (shard_job, shard_sha256) and the jobs attribute
RECORDED_SINCE = 2  # the first version whose shards record their writer
ATTR = "lpclip_cache"
VIEW_KINDS = ("clean", "weak", "strong")
KIND_NAMES = {"f": "float", "iu": "integer", "b": "bool", "TUO": "string"}  # numpy dtype kinds


def cache_key(manifest: dict[str, Any]) -> str:
    """The sha256 of the manifest's canonical JSON: two stores with equal keys hold equal numbers."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


ROW_ORDER = "permutation-1"  # recorded in the manifest: a change of the rule below changes this name


def row_order(n: int) -> np.ndarray:
    """The source sample each store row holds: a fixed pseudo-random permutation of ``range(n)``.

    Extraction writes samples in this order, so that a class-sorted source (an ImageFolder tree)
    does not give class-sorted shards: training shuffles shards and the rows of a few shards
    together, and that mixes classes like a uniform shuffle only if every shard already does.
    It depends on ``n`` alone: every rank of a distributed extraction and every resumed run
    computes the same order, and stores of one dataset made with other view seeds, corruptions
    or models line up row by row. The ``keys`` array maps each row back to its sample.
    """
    return np.random.default_rng([n, 0x0D3D]).permutation(n)


def store_name(target: str | Path) -> str:
    """The last component of a store's path or URL (for progress lines)."""
    return str(target).rstrip("/").rsplit("/", 1)[-1]


def open_group(target: str | Path, mode: str) -> zarr.Group:
    """Open a store's Zarr group at a local path or an fsspec URL (``file://`` URLs create folders)."""
    options = {"auto_mkdir": True} if str(target).startswith("file://") else None
    return zarr.open_group(str(target), mode=mode, storage_options=options)


def is_store(path: str | Path) -> bool:
    """True when ``path`` (a local path or an fsspec URL) is a Zarr group written by this project."""
    fs, inner = filesystem(path)
    try:
        document = json.loads(fs.cat_file(f"{inner}/zarr.json"))
    except (FileNotFoundError, ValueError, OSError):
        return False
    attributes = document.get("attributes") if isinstance(document, dict) else None
    return isinstance(attributes, dict) and ATTR in attributes


@dataclass(frozen=True)
class Layout:
    """Sizes that fix a store's array shapes."""

    n: int
    dim: int
    n_classes: int
    weak_views: int
    strong_views: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        """How many shards cover the N samples."""
        return -(-self.n // self.shard_size)

    def views(self, kind: str) -> int:
        """Views per sample of a kind (the clean view is one)."""
        return {"clean": 1, "weak": self.weak_views, "strong": self.strong_views}[kind]


def manifest_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the manifest fields that differ between two manifests."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += manifest_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    same = json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str)
    return [] if same else [prefix.rstrip(".")]


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: its shape, dtype, fill value and chunk shape."""

    shape: tuple[int, ...]
    dtype: str
    fill: Any
    chunks: tuple[int, ...]

    @property
    def kinds(self) -> str:
        """The numpy dtype kinds a reader accepts for it (a float16 array read back as float32 is fine)."""
        return {"float16": "f", "float32": "f", "int16": "iu", "int32": "iu", "uint8": "iu", "bool": "b",
                "str": "TUO"}[self.dtype]


def schema(layout: Layout, version: int = FORMAT_VERSION) -> dict[str, ArraySpec]:
    """Every array a store of this layout holds: what ``create_store`` allocates and what
    ``FeatureStore`` checks on opening. Rows are chunked one shard long, so each shard is written
    by one owner; ``done``, ``shard_job`` and ``shard_sha256`` have one chunk per shard, so each
    owner marks its shard alone. A store of format 1 has no shard records."""
    rows = min(layout.shard_size, max(1, layout.n))

    def spec(shape: tuple[int, ...], dtype: str, fill: Any) -> ArraySpec:
        return ArraySpec(shape, dtype, fill, (rows, *shape[1:]))

    out: dict[str, ArraySpec] = {}
    for kind in VIEW_KINDS:
        views = layout.views(kind)
        if views == 0:
            continue
        lead = (layout.n,) if kind == "clean" else (layout.n, views)
        out[f"{kind}/emb"] = spec((*lead, layout.dim), "float16", np.nan)
        out[f"{kind}/label"] = spec(lead, "int16", -1)
        out[f"{kind}/conf"] = spec(lead, "float32", np.nan)
    head = (layout.n_classes, layout.dim)
    out["head"] = ArraySpec(head, "float32", np.nan, head)
    out["labels"] = spec((layout.n,), "int32", -1)
    out["valid"] = spec((layout.n,), "bool", False)
    out["keys"] = spec((layout.n,), "str", None)
    out["reason"] = spec((layout.n,), "str", None)
    out["done"] = ArraySpec((layout.n_shards,), "uint8", 0, (1,))
    if version >= RECORDED_SINCE:
        out["shard_job"] = ArraySpec((layout.n_shards,), "str", None, (1,))
        out["shard_sha256"] = ArraySpec((layout.n_shards,), "str", None, (1,))
    return out


SHARD_RECORDS = ("shard_job", "shard_sha256")
NOT_ROWS = ("head", "done", *SHARD_RECORDS)  # the arrays that do not hold one row per sample


def shard_digest(layout: Layout, rows: dict[str, Any]) -> str:
    """The sha256 of one shard's rows of every per-sample array, as stored: what ``write_shard``
    records in ``shard_sha256`` and ``verify`` recomputes from what it reads back.

    Arrays go in name order, each as its name, its shape and its values in the schema's dtype
    (little-endian bytes; strings as a JSON list), so a shard whose chunks come from two writers
    (one torn by a writer that lost its lock) does not match its record."""
    digest = hashlib.sha256()
    specs = schema(layout)
    for name in sorted(rows):
        spec = specs[name]
        if spec.dtype == "str":
            values = np.asarray(rows[name])
            payload = json.dumps([str(v) for v in values.ravel().tolist()]).encode()
        else:
            values = np.ascontiguousarray(np.asarray(rows[name]).astype(np.dtype(spec.dtype).newbyteorder("<")))
            payload = values.tobytes()
        digest.update(f"{name}\0{list(values.shape)}\0{len(payload)}\0".encode())
        digest.update(payload)
    return digest.hexdigest()


def create_store(path: str | Path, layout: Layout, manifest: dict[str, Any], overwrite: bool = False,
                 job: str | None = None) -> zarr.Group:
    """Create an empty store with every array of ``schema`` allocated (unwritten floats read as NaN),
    written by ``job`` (the lock token of the job that creates it; a new one if not given).

    Embeddings are uncompressed unless ``manifest["storage"]["compression"]`` is ``zstd``: fp16
    embeddings compress about 1.09x while zstd cuts chunk reads several-fold.
    """
    prepare_output(path, overwrite, is_store, "store")
    root = open_group(path, mode="w-")
    zstd = manifest.get("storage", {}).get("compression", "none") == "zstd"
    for name, spec in schema(layout).items():
        codecs = [zarr.codecs.ZstdCodec(level=3)] if zstd and name.endswith("/emb") else None
        fill = {} if spec.fill is None else {"fill_value": spec.fill}
        dtype = str if spec.dtype == "str" else spec.dtype
        root.create_array(name, shape=spec.shape, chunks=spec.chunks, dtype=dtype, compressors=codecs, **fill)
    root.attrs[ATTR] = {
        "format_version": FORMAT_VERSION,
        "manifest": manifest,
        "cache_key": cache_key(manifest),
        "layout": layout.__dict__,
        "jobs": [job or new_job()],
        "complete": False,
    }
    return root


@dataclass(frozen=True)
class StoreState:
    """Where a store stands: ``missing`` (nothing of ours there), ``partial`` (``done`` of
    ``shards`` shards written) or ``complete``."""

    kind: str
    done: int = 0
    shards: int = 0

    def __str__(self) -> str:
        return f"partial ({self.done} of {self.shards} shards)" if self.kind == "partial" else self.kind


def state(path: str | Path) -> StoreState:
    """The state of the store at ``path`` (a local path or an fsspec URL), read from its own
    metadata; a store whose metadata cannot be read is a StoreError naming it."""
    if not is_store(path):
        return StoreState("missing")
    try:
        group = open_group(path, mode="r")
        done = np.asarray(group["done"][:])
        complete = bool(group.attrs[ATTR].get("complete"))
    except Exception as exc:  # zarr raises many types on malformed metadata
        raise StoreError(f"store '{path}' is damaged or was not written by lpclip-cache: its metadata cannot be "
                         f"read ({type(exc).__name__}); re-extract it") from exc
    return StoreState("complete" if complete else "partial", int(np.count_nonzero(done)), int(done.size))


def expand_stores(paths: list[str]) -> list[str]:
    """Each path as given, except a local folder that is not itself a store but holds stores (as
    ``extract --corrupt all`` writes): its stores, sorted by name."""
    out: list[str] = []
    for path in paths:
        folder = Path(path)
        if not is_url(path) and folder.is_dir() and not is_store(folder):
            children = sorted(str(p) for p in folder.iterdir() if p.is_dir() and is_store(p))
            if children:
                out.extend(children)
                continue
        out.append(path)
    return out


RESUME = "run the same command again: it resumes, keeping the shards already done"


class StoreWriter:
    """The write side of a store: the lock, creating or resuming, shards, and completion.

    The main process ``begin``s (taking the store's lock, creating the store or checking the one
    there has the same cache key, writing the head) and ``finish``es (every shard done: list
    invalid samples, mark the store complete). Every process writes the shards it owns with
    ``write_shard``, which sets a shard's done bit only once all its rows are written.

    Fencing: the job's token is the lock's; before a shard's chunks and again before its done bit
    (and before ``finish`` rewrites the attribute), the writer checks that the lock still names
    its job, so a writer that lost the lock while paused stops with one line instead of writing
    into the store of the job that took it over. Each shard records its job and the sha256 of its
    rows, which ``verify`` checks against the jobs the store's attribute lists.
    """

    def __init__(self, path: str | Path, layout: Layout, manifest: dict[str, Any]) -> None:
        self.path, self.layout, self.manifest = path, layout, manifest
        self.lock: StoreLock | ObjectStoreLock | None = None  # held by the main process only
        self.job: str | None = None
        self.recorded = True  # False when resuming a store of format 1 (no shard records)
        self._fence: StoreLock | ObjectStoreLock | None = None
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}  # opened once: each opening reads the array's metadata

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = open_group(self.path, mode="r+")
        return self._group

    def array(self, name: str) -> zarr.Array:
        """The store's array ``name``, opened once per writer (on object storage an opening is a request)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def begin(self, head: np.ndarray, overwrite: bool = False) -> str:
        """Lock, then create the store or resume it; returns ``new``, ``resume`` or ``complete``.

        A store with the same cache key is resumed (its done shards are kept, a head that a crash
        left unwritten is written); one with another key is refused, naming the fields that
        differ, unless ``overwrite``.
        """
        self.lock = store_lock(self.path).__enter__()
        self.job, self._fence = self.lock.job, self.lock
        try:
            if is_store(self.path) and not overwrite:
                root = open_group(self.path, mode="r+")
                meta = dict(root.attrs[ATTR])
                if meta.get("cache_key") != cache_key(self.manifest):
                    fields = manifest_diff(meta.get("manifest", {}), self.manifest)
                    raise StoreError(
                        f"store '{self.path}' was made with another configuration (differs in: "
                        f"{', '.join(fields[:8])}{' ...' if len(fields) > 8 else ''}): use the same options to "
                        "resume it, --overwrite to replace it, or another --out"
                    )
                if meta.get("complete"):
                    return "complete"
                self._resume(root, meta, head)
                return "resume"
            self._group, self._arrays = create_store(self.path, self.layout, self.manifest, overwrite, job=self.job), {}
            self._group["head"][...] = head
            return "new"
        except OSError as exc:
            raise write_error("store", self.path, exc, "run the same command again") from exc

    def _resume(self, root: zarr.Group, meta: dict[str, Any], head: np.ndarray) -> None:
        """Join this job to the store's writers and write a head that a crash between creating the
        store and writing its head left as the fill value (NaN)."""
        version = meta.get("format_version")
        self.recorded = isinstance(version, int) and version >= RECORDED_SINCE
        self.check()
        jobs = meta.get("jobs") if isinstance(meta.get("jobs"), list) else []
        root.attrs[ATTR] = {**meta, "jobs": [*jobs, self.job]}  # how the other ranks learn this job's token
        if not np.isfinite(np.asarray(root["head"][...])).all():
            root["head"][...] = head
        self._group, self._arrays = root, {}

    def _join(self) -> None:
        """On a process other than the main one (a torchrun rank): take the job token the main
        process recorded in the store, and check against the lock from now on."""
        meta = dict(open_group(self.path, mode="r").attrs[ATTR])
        if meta.get("cache_key") != cache_key(self.manifest):
            raise StoreError(f"store '{self.path}' was replaced by another job's configuration before this process "
                             "wrote to it: let that job finish, or run this command again")
        jobs = meta.get("jobs")
        version = meta.get("format_version")
        self.recorded = isinstance(version, int) and version >= RECORDED_SINCE
        self.job = jobs[-1] if isinstance(jobs, list) and jobs and isinstance(jobs[-1], str) else new_job()
        self._fence = store_lock(self.path, self.job)

    def check(self) -> None:
        """Fencing: a StoreError (one line) unless this job still holds the store's lock."""
        if self._fence is None:
            self._join()
        assert self._fence is not None
        self._fence.check()

    def todo(self, owns: Any) -> list[int]:
        """The shards not done yet that ``owns(shard)`` gives to this process."""
        if self._fence is None:
            self._join()
        done = np.asarray(self.group["done"][:])
        return [s for s in range(self.layout.n_shards) if owns(s) and not done[s]]

    def write_shard(self, shard: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one shard's rows of every array, then its record (job and sha256), then its done
        bit; the lock is checked before the rows and again before the record."""
        self.write_shards(shard, shard + 1, arrays)

    def write_shards(self, first: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """``write_shard`` for the shards ``first:stop`` at once (their rows in ``arrays``): one write
        per array, each chunk still one shard whole; the lock is checked before the rows and again
        before the records, which are written, like the done bits, only once every row is."""
        size = self.layout.shard_size
        start, end = first * size, min(self.layout.n, stop * size)
        try:
            self.check()
            for name, value in arrays.items():
                if getattr(self._fence, "lost", False):  # the heartbeat found the lock gone: no more chunks
                    self.check()
                self.array(name)[start:end] = value
            self.check()
            if self.recorded:
                digests = [shard_digest(self.layout, {name: value[(s - first) * size : (s + 1 - first) * size]
                                                      for name, value in arrays.items()})
                           for s in range(first, stop)]
                self.array("shard_job")[first:stop] = np.array([self.job] * (stop - first))
                self.array("shard_sha256")[first:stop] = np.array(digests)
            self.array("done")[first:stop] = 1  # only once the shards' chunks are all written
        except OSError as exc:
            self.check()  # a lock lost meanwhile explains the failure better
            raise write_error("store", self.path, exc, RESUME) from exc

    def finish(self) -> list[tuple[str, str]]:
        """Check every shard is done, record the invalid samples, mark the store complete; return
        the invalid samples' (key, reason)."""
        self.check()
        now = state(self.path)
        if now.done < now.shards:
            raise StoreError(f"store '{self.path}': {now.shards - now.done} shard(s) missing after extraction; "
                             "run it again")
        root = self.group
        bad = np.flatnonzero(~np.asarray(root["valid"][:]))
        keys, reasons = root["keys"], root["reason"]
        invalid = [(str(keys[i]), str(reasons[i])) for i in bad.tolist()]
        meta = {**root.attrs[ATTR], "complete": True, "invalid": [{"key": k, "reason": r} for k, r in invalid]}
        try:
            self.check()  # a writer that lost its lock must not mark another job's store
            root.attrs[ATTR] = meta  # zarr replaces zarr.json whole (a temporary file, then a rename)
        except OSError as exc:
            raise write_error("store", self.path, exc, RESUME) from exc
        return invalid

    def left(self) -> str:
        """What an interrupted extraction leaves, and how to finish."""
        try:
            now = state(self.path)
        except StoreError:
            now = StoreState("missing")
        if now.kind == "missing":
            return f"store '{self.path}' is unfinished; run the same command again to resume it"
        return (f"{now.done} of {now.shards} shards of store '{self.path}' are done; run the same command again "
                "to resume")

    def release(self) -> None:
        """Let go of the lock (if this process holds it)."""
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None


class FeatureStore:
    """A store opened for reading, validated on open.

    Opening checks the attribute (format version, layout, manifest fields the readers use) and
    every array's presence, shape and dtype against the layout, so a damaged or foreign store is
    one StoreError naming what is wrong, never a KeyError or a shape error later. Float arrays of
    a complete store are checked for NaN and infinity in valid rows as they are read.
    """

    def __init__(self, path: str | Path, require_complete: bool = True) -> None:
        self.path = str(path) if is_url(path) else Path(path)
        self._valid: np.ndarray | None = None
        fs, inner = filesystem(path)
        if not fs.exists(inner):
            raise StoreError(f"store '{self.path}' does not exist: run 'lpclip-cache extract' to make one")
        try:
            fs.cat_file(f"{inner}/zarr.json")
        except (FileNotFoundError, NotADirectoryError):
            pass  # not a store: said just below
        except OSError as exc:
            raise StoreError(f"cannot read store '{self.path}' ({exc.strerror or type(exc).__name__}): "
                             "check that you may read it and every file in it") from exc
        if not is_store(self.path):
            raise StoreError(f"'{self.path}' is not an lpclip-cache store (no zarr.json with an '{ATTR}' attribute): "
                             "pass the --out folder of 'lpclip-cache extract'")
        try:
            self.group = open_group(self.path, mode="r")
            meta = self.group.attrs[ATTR]
        except Exception as exc:  # zarr raises many types on malformed metadata
            raise self.damaged(f"its zarr.json cannot be read as a Zarr group ({type(exc).__name__})") from exc
        if not isinstance(meta, dict):
            raise self.damaged(f"its '{ATTR}' attribute is not a JSON object (got {type(meta).__name__})")
        version = meta.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise StoreError(f"store '{self.path}' has format version {version}, newer than this lpclip-cache reads "
                             f"({FORMAT_VERSION}): upgrade lpclip-cache")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self.damaged(f"its format version is {version!r}, not a version lpclip-cache wrote")
        self.meta = dict(meta)
        self.layout = self._check_layout(meta.get("layout"))
        self.manifest: dict[str, Any] = self._check_manifest(meta.get("manifest"))
        if not isinstance(meta.get("cache_key"), str):
            raise self.damaged("its attribute has no cache_key string")
        self._check_arrays()
        if require_complete and not meta.get("complete"):
            raise StoreError(
                f"store '{self.path}' is incomplete ({self.state.done} of {self.state.shards} shards written): "
                "extraction stopped before the end; run the same extract command again to finish it "
                "(finished shards are kept)"
            )

    @property
    def state(self) -> StoreState:
        """Partial (how many shards are done) or complete."""
        done = int(np.count_nonzero(self.read("done")))
        return StoreState("complete" if self.meta.get("complete") else "partial", done, self.layout.n_shards)

    def damaged(self, what: str) -> StoreError:
        """The one error of a store whose files are not what lpclip-cache writes."""
        return StoreError(f"store '{self.path}' is damaged or was not written by lpclip-cache: {what}; re-extract it")

    def _check_layout(self, layout: Any) -> Layout:
        fields = ("n", "dim", "n_classes", "weak_views", "strong_views", "shard_size")
        if not isinstance(layout, dict) or set(layout) != set(fields):
            raise self.damaged(f"its layout should be an object with exactly {', '.join(fields)}")
        minimum = {"n": 0, "dim": 1, "n_classes": 1, "weak_views": 0, "strong_views": 0, "shard_size": 1}
        for name in fields:
            value = layout[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum[name]:
                raise self.damaged(f"its layout field {name} is {value!r}, not an integer >= {minimum[name]}")
        return Layout(**layout)

    def _check_manifest(self, manifest: Any) -> dict[str, Any]:
        if not isinstance(manifest, dict):
            raise self.damaged("its manifest is not an object")
        names = manifest.get("classnames")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise self.damaged("its manifest has no classnames list of strings")
        if len(names) != self.layout.n_classes:
            raise self.damaged(f"its manifest lists {len(names)} class names but its layout {self.layout.n_classes}")
        model = manifest.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise self.damaged("its manifest has no model name")
        teacher = manifest.get("teacher")
        for key in ("logit_scale", "temperature"):
            value = teacher.get(key) if isinstance(teacher, dict) else None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not np.isfinite(value) or value <= 0:
                raise self.damaged(f"its manifest's teacher.{key} is {value!r}, not a positive number")
        return manifest

    def _check_arrays(self) -> None:
        """Every array of the layout's ``schema`` exists with its shape and kind of dtype."""
        for name, spec in schema(self.layout, self.meta["format_version"]).items():
            try:
                node = self.group[name]
            except KeyError:
                raise self.damaged(f"array '{name}' is missing") from None
            except PermissionError as exc:
                raise StoreError(
                    f"cannot read array '{name}' of store '{self.path}' ({exc.strerror}): check that you may "
                    "read every file in it"
                ) from exc
            except Exception as exc:
                raise self.damaged(f"array '{name}' cannot be opened ({type(exc).__name__})") from exc
            if not isinstance(node, zarr.Array):
                raise self.damaged(f"'{name}' is a group, not an array")
            if tuple(node.shape) != spec.shape or getattr(node.dtype, "kind", "?") not in spec.kinds:
                raise self.damaged(
                    f"array '{name}' is {node.dtype} {tuple(node.shape)}, but its layout needs shape {spec.shape} "
                    f"({KIND_NAMES[spec.kinds]})"
                )

    @property
    def cache_key(self) -> str:
        """The manifest hash recorded at creation."""
        return self.meta["cache_key"]

    @property
    def classnames(self) -> list[str]:
        """Class names of the zero-shot head, in label order."""
        return list(self.manifest["classnames"])

    @property
    def logit_scale(self) -> float:
        """The model's logit scale s (teacher logits are s * cos)."""
        return float(self.manifest["teacher"]["logit_scale"])

    @property
    def temperature(self) -> float:
        """The teacher's softmax temperature T."""
        return float(self.manifest["teacher"]["temperature"])

    @property
    def teacher_scale(self) -> TeacherScale:
        """The teacher's scale and temperature, the one owner of its logits' factor."""
        from .zeroshot import TeacherScale

        return TeacherScale(self.logit_scale, self.temperature)

    def spans(self, n: int | None = None) -> list[tuple[int, int]]:
        """Row ranges ``(start, stop)`` one shard long covering ``n`` rows (default: every sample)."""
        n, rows = self.layout.n if n is None else n, self.layout.shard_size
        return [(start, min(n, start + rows)) for start in range(0, n, rows)]

    def has(self, name: str) -> bool:
        """True when the array ``name`` exists (weak/strong arrays exist only with views)."""
        try:
            self.group[name]
        except KeyError:
            return False
        return True

    def read(self, name: str) -> np.ndarray:
        """A whole array as numpy (see ``read_rows``)."""
        return self.read_rows(name)

    def read_rows(self, name: str, start: int = 0, stop: int | None = None, check_finite: bool = True) -> np.ndarray:
        """Rows ``start:stop`` of an array as numpy.

        In a complete store, NaN or infinity in a float array's valid rows (or anywhere in the
        head) is a StoreError unless ``check_finite`` is False (``verify`` counts them instead).
        """
        try:
            data = np.asarray(self.group[name][start:stop])
        except PermissionError as exc:
            raise StoreError(
                f"cannot read array '{name}' of store '{self.path}' ({exc.strerror}): check that you may read "
                "every file in it"
            ) from exc
        except Exception as exc:  # a missing or malformed chunk: zarr and the codecs raise many types
            reason = str(exc).splitlines()[0][:120] if str(exc) else ""
            raise self.damaged(f"array '{name}' cannot be read ({type(exc).__name__}: {reason})") from exc
        if check_finite and self.meta.get("complete") and data.dtype.kind == "f":
            self._check_finite(name, data, start)
        return data

    def valid_rows(self, name: str) -> Iterator[np.ndarray]:
        """The valid rows of a per-sample array, one shard at a time, so no more than a shard of it
        is ever in memory. NaN or infinity in them is ``read_rows``'s StoreError, counted over the
        whole array and raised after its last shard."""
        bad = 0
        for start, stop in self.spans():
            data = self.read_rows(name, start, stop, check_finite=False)
            rows = self.valid_mask()[start:stop]
            if self.meta.get("complete") and data.dtype.kind == "f":
                bad += self._nonfinite_rows(data, rows)
            yield data[rows]
        if bad:
            raise self._nonfinite(name, bad)

    def valid_mask(self) -> np.ndarray:
        """Which rows are valid (N bools), read once per store object."""
        if self._valid is None:
            self._valid = self.read_rows("valid").astype(bool)
        return self._valid

    def _check_finite(self, name: str, data: np.ndarray, start: int) -> None:
        rows = np.ones(len(data), bool) if name == "head" else self.valid_mask()[start : start + len(data)]
        bad = self._nonfinite_rows(data, rows)
        if bad:
            raise self._nonfinite(name, bad)

    @staticmethod
    def _nonfinite_rows(data: np.ndarray, rows: np.ndarray) -> int:
        """How many of the ``rows`` (a mask) of ``data`` hold NaN or infinity."""
        bad = 0
        for first in range(0, len(data), 4096):  # blocks bound the temporary memory
            block = data[first : first + 4096]
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            bad += int((~finite & rows[first : first + 4096]).sum())
        return bad

    def _nonfinite(self, name: str, bad: int) -> StoreError:
        return StoreError(
            f"store '{self.path}' holds NaN or infinite values in '{name}' ({bad} valid row(s)): it is "
            f"damaged; see 'lpclip-cache verify {self.path}', then re-extract it"
        )

    def head(self) -> np.ndarray:
        """The zero-shot head W_t (C x D float32)."""
        return self.read("head")

    def labels(self) -> np.ndarray:
        """Ground-truth labels, -1 where unknown."""
        return self.read("labels")

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every array's shape and dtype, by path."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        try:
            for name, node in self.group.members(max_depth=None):
                if isinstance(node, zarr.Array):
                    out[name] = (tuple(node.shape), str(node.dtype))
        except Exception as exc:  # a malformed zarr.json below the root
            raise self.damaged(f"its arrays cannot be listed ({type(exc).__name__})") from exc
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        """What ``info --json`` prints: completeness, key, format, layout, arrays and manifest."""
        return {
            "store": str(self.path),
            "complete": bool(self.meta.get("complete")),
            "cache_key": self.cache_key,
            "format_version": self.meta["format_version"],
            "layout": self.meta["layout"],
            "arrays": {name: {"shape": list(s), "dtype": d} for name, (s, d) in self.arrays().items()},
            "manifest": self.manifest,
        }

    def describe(self) -> str:
        """What ``info`` prints: manifest fields (``?`` where a store lacks one), then every array's
        shape and dtype."""

        def field(dotted: str) -> Any:
            value: Any = self.manifest
            for key in dotted.split("."):
                if not isinstance(value, dict) or key not in value:
                    return "?"
                value = value[key]
            return value

        names, templates, versions = field("classnames"), field("templates"), field("versions")
        pretrained = field("model.pretrained.value") or field("model.pretrained.kind")
        templates = templates if isinstance(templates, list) and templates else ["?"]
        versions = versions if isinstance(versions, dict) else {}
        lines = [
            f"store       {self.path} ({'complete' if self.meta.get('complete') else 'INCOMPLETE'})",
            f"cache key   {self.cache_key}",
            f"model       {field('model.name')} pretrained={pretrained} "
            f"quick_gelu={field('model.quick_gelu')} dim={field('model.embed_dim')}",
            f"teacher     logit_scale={self.logit_scale:.4g} temperature={self.temperature}",
            f"classes     {len(names)}: {', '.join(names[:10])}" + (" ..." if len(names) > 10 else ""),
            f"templates   {len(templates)}: {templates[0]!r} ...",
            f"dataset     {field('dataset.spec')} split={field('dataset.split')} n={field('dataset.n')}",
            f"views       weak={field('views.weak')} strong={field('views.strong')} "
            f"seed={field('views.seed')} shard_size={field('views.shard_size')}",
            f"precision   {field('precision')} on {field('device')}",
            f"versions    {', '.join(f'{k} {v}' for k, v in versions.items())}",
            "arrays",
        ]
        lines += [f"  {name:<14} {str(tuple(s)):<18} {d}" for name, (s, d) in self.arrays().items()]
        lines += [f"data        {line}" for line in data_problems(self.manifest)]
        return "\n".join(lines)


def data_problems(manifest: dict[str, Any], shown: int = 10) -> list[str]:
    """The problems extraction found in the data and recorded (``--skip-bad``: samples left out,
    invalid rows, shards cut short; warnings), one line each, for ``info`` and ``verify``."""
    dataset = manifest.get("dataset") if isinstance(manifest.get("dataset"), dict) else {}
    problems = dataset.get("problems") or []
    if not isinstance(problems, list):
        return []
    lines = []
    for record in problems[:shown]:
        if isinstance(record, dict):
            problem = Problem.from_record(record)
            lines.append(f"{problem.severity}: {problem.line()}")
    total = dataset.get("problem_count", len(problems))
    if isinstance(total, int) and total > len(lines):
        lines.append(f"... {total - len(lines)} more (info --json lists {len(problems)})")
    return lines
