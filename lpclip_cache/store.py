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

The group attribute ``lpclip_cache`` holds the format version, the manifest, its hash (the
cache key) and whether the store is complete. Chunks along N are one shard long, so each shard
is written by one owner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import InputError, StoreError

FORMAT_VERSION = 1
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


def is_url(target: str | Path) -> bool:
    """True for an fsspec URL (``s3://...``, ``gs://...``, ``file://...``), False for a plain path."""
    return "://" in str(target)


def filesystem(target: str | Path) -> tuple[Any, str]:
    """The fsspec filesystem of a path or URL, and the path within it."""
    import fsspec

    return fsspec.core.url_to_fs(str(target))


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


def refuse_output_inside(out: str | Path, inputs: list[str | Path], option: str = "--out") -> None:
    """An InputError when ``out`` is one of the inputs or lies inside one (local paths only).

    Writing there would mix outputs into a store or run, or (with --overwrite) replace an input.
    """
    if is_url(out):
        return
    target = Path(out).expanduser().resolve()
    for given in inputs:
        if is_url(given):
            continue
        source = Path(given).expanduser().resolve()
        if target == source or source in target.parents:
            raise InputError(
                f"{option} '{out}' lies inside the input '{given}': write it elsewhere, beside the input"
            )


def prepare_output(path: str | Path, overwrite: bool, is_ours: Any, what: str, remove: bool = True) -> None:
    """Refuse an existing output unless ``overwrite``; then remove it only if it is one of ours.

    ``remove=False`` only checks, so a command can refuse early and delete the old output once
    its inputs have proven sound (a bad input then leaves the old output as it was).
    """
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        return
    if not overwrite:
        raise StoreError(f"{what} '{path}' already exists: pass --overwrite to replace it, or choose another --out")
    if fs.isdir(inner) and not fs.ls(inner):
        if remove:
            fs.rm(inner, recursive=True)
        return
    if not is_ours(path):
        raise StoreError(
            f"'{path}' exists and is not a {what} written by lpclip-cache: refusing to delete it; "
            "choose another --out"
        )
    if remove:
        fs.rm(inner, recursive=True)


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


class StoreLock:
    """An exclusive lock beside a store (``STORE.lock``), held while one extraction writes it.

    It is an OS file lock, released by the kernel when the holder dies (SIGKILL included), so a
    crashed run never leaves a stale lock behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}.lock")
        self.handle: Any = None

    def __enter__(self) -> StoreLock:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.handle = open(self.path, "a+")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.seek(0)
                holder = self.handle.read().strip() or "another process"
                self.handle.close()
                raise StoreError(
                    f"store '{str(self.path)[:-5]}' is being written by {holder}: wait for it to finish, "
                    "or write another --out"
                ) from None
            if self._still_linked():
                break
            self.handle.close()  # the holder deleted this file as it let go: lock the one now there
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def _still_linked(self) -> bool:
        """True when the locked file is still the one at ``self.path`` (not unlinked meanwhile)."""
        import os

        try:
            return os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)  # still locked: one who opened it meanwhile sees it unlinked, retries
        self.handle.close()


def start_store(path: str | Path, layout: Layout, manifest: dict[str, Any], overwrite: bool = False) -> str:
    """Make ``path`` ready for extraction; returns ``new``, ``resume`` or ``complete``.

    A store with the same cache key is resumed (its done shards are kept); one with another key
    is refused, naming the fields that differ, unless ``overwrite``.
    """
    if is_store(path) and not overwrite:
        meta = dict(open_group(path, mode="r").attrs[ATTR])
        if meta.get("cache_key") != cache_key(manifest):
            fields = manifest_diff(meta.get("manifest", {}), manifest)
            raise StoreError(
                f"store '{path}' was made with another configuration (differs in: {', '.join(fields[:8])}"
                f"{' ...' if len(fields) > 8 else ''}): use the same options to resume it, --overwrite to "
                "replace it, or another --out"
            )
        return "complete" if meta.get("complete") else "resume"
    create_store(path, layout, manifest, overwrite)
    return "new"


def create_store(path: str | Path, layout: Layout, manifest: dict[str, Any], overwrite: bool = False) -> zarr.Group:
    """Create an empty store with every array allocated (unwritten floats read as NaN).

    Embeddings are uncompressed unless ``manifest["storage"]["compression"]`` is ``zstd``: fp16
    embeddings compress about 1.09x while zstd cuts chunk reads several-fold.
    """
    prepare_output(path, overwrite, is_store, "store")
    root = open_group(path, mode="w-")
    rows = layout.shard_size
    compression = manifest.get("storage", {}).get("compression", "none")
    emb_codecs = [zarr.codecs.ZstdCodec(level=3)] if compression == "zstd" else None

    def array(name: str, shape: tuple[int, ...], dtype: str, fill: Any) -> None:
        chunks = (min(rows, max(1, shape[0])), *shape[1:]) if shape else ()
        codecs = emb_codecs if name.endswith("/emb") else None
        root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=codecs)

    for kind in VIEW_KINDS:
        views = layout.views(kind)
        if views == 0:
            continue
        lead = (layout.n,) if kind == "clean" else (layout.n, views)
        array(f"{kind}/emb", (*lead, layout.dim), "float16", np.nan)
        array(f"{kind}/label", lead, "int16", -1)
        array(f"{kind}/conf", lead, "float32", np.nan)
    root.create_array(
        "head", shape=(layout.n_classes, layout.dim), chunks=(layout.n_classes, layout.dim), dtype="float32",
        fill_value=np.nan, compressors=None,
    )
    array("labels", (layout.n,), "int32", -1)
    array("valid", (layout.n,), "bool", False)
    for name in ("keys", "reason"):
        root.create_array(name, shape=(layout.n,), chunks=(min(rows, layout.n),), dtype=str, compressors=None)
    # one chunk per shard: each shard's owner marks it done without touching another's chunk
    root.create_array("done", shape=(layout.n_shards,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None)
    root.attrs[ATTR] = {
        "format_version": FORMAT_VERSION,
        "manifest": manifest,
        "cache_key": cache_key(manifest),
        "layout": layout.__dict__,
        "complete": False,
    }
    return root


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
            raise StoreError(
                f"cannot read store '{self.path}' ({exc.strerror or type(exc).__name__}): "
                "check that you may read it and every file in it"
            ) from exc
        if not is_store(self.path):
            raise StoreError(
                f"'{self.path}' is not an lpclip-cache store (no zarr.json with an '{ATTR}' attribute): "
                "pass the --out folder of 'lpclip-cache extract'"
            )
        try:
            self.group = open_group(self.path, mode="r")
            meta = self.group.attrs[ATTR]
        except Exception as exc:  # zarr raises many types on malformed metadata
            raise self.damaged(f"its zarr.json cannot be read as a Zarr group ({type(exc).__name__})") from exc
        if not isinstance(meta, dict):
            raise self.damaged(f"its '{ATTR}' attribute is not a JSON object (got {type(meta).__name__})")
        version = meta.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise StoreError(
                f"store '{self.path}' has format version {version}, newer than this lpclip-cache reads "
                f"({FORMAT_VERSION}): upgrade lpclip-cache"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self.damaged(f"its format version is {version!r}, not a version lpclip-cache wrote")
        self.meta = dict(meta)
        self.layout = self._check_layout(meta.get("layout"))
        self.manifest: dict[str, Any] = self._check_manifest(meta.get("manifest"))
        if not isinstance(meta.get("cache_key"), str):
            raise self.damaged("its attribute has no cache_key string")
        self._check_arrays()
        if require_complete and not meta.get("complete"):
            done = int(np.count_nonzero(self.read("done")))
            raise StoreError(
                f"store '{self.path}' is incomplete ({done} of {self.layout.n_shards} shards written): "
                "extraction stopped before the end; run the same extract command again to finish it "
                "(finished shards are kept)"
            )

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
        """Every array the layout implies exists with its shape and kind of dtype."""
        layout = self.layout
        floats, ints, text = "f", "iu", "TUO"
        expected: dict[str, tuple[tuple[int, ...], str]] = {}
        for kind in VIEW_KINDS:
            views = layout.views(kind)
            if views == 0:
                continue
            lead = (layout.n,) if kind == "clean" else (layout.n, views)
            expected[f"{kind}/emb"] = ((*lead, layout.dim), floats)
            expected[f"{kind}/label"] = (lead, ints)
            expected[f"{kind}/conf"] = (lead, floats)
        expected["head"] = ((layout.n_classes, layout.dim), floats)
        expected["labels"] = ((layout.n,), ints)
        expected["valid"] = ((layout.n,), "b")
        expected["keys"] = ((layout.n,), text)
        expected["reason"] = ((layout.n,), text)
        expected["done"] = ((layout.n_shards,), ints)
        for name, (shape, kinds) in expected.items():
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
            dtype_kind = getattr(node.dtype, "kind", "?")
            if tuple(node.shape) != shape or dtype_kind not in kinds:
                raise self.damaged(
                    f"array '{name}' is {node.dtype} {tuple(node.shape)}, but its layout needs shape {shape} "
                    f"({KIND_NAMES[kinds]})"
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

    def _check_finite(self, name: str, data: np.ndarray, start: int) -> None:
        if name == "head":
            rows = np.ones(len(data), bool)
        else:
            if self._valid is None:
                self._valid = self.read_rows("valid").astype(bool)
            rows = self._valid[start : start + len(data)]
        bad = 0
        for first in range(0, len(data), 4096):  # blocks bound the temporary memory
            block = data[first : first + 4096]
            finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            bad += int((~finite & rows[first : first + 4096]).sum())
        if bad:
            raise StoreError(
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
