"""WebDataset tar shards as a data source: ``--data wds:SPEC``.

SPEC is a brace pattern (``shards/{00000..00099}.tar``), a folder of ``.tar`` files, an fsspec
URL of either, or a CLIP_benchmark dataset root (``classnames.txt``,
``zeroshot_classification_templates.txt`` and ``{split}/nshards.txt`` with ``{split}/{n}.tar``),
whose class names and templates then come with the data. A sample is the tar members sharing a
``__key__``: its image is the first of ``jpg``, ``jpeg``, ``png``, ``webp`` present, its label the
integer in ``cls`` (-1 without one), its key the ``__key__``.

Shards are read with the field's own random-access reader, ``wids`` (WebDataset's indexed tar
samples: the members' offsets are found from the tar headers once, and each image is read at its
offset), so an image is read on its own in whichever order extraction asks for it: a shard of the
store is still the unit of work, resumable, bit-identical and dealt to torchrun ranks as before.
Remote shards (an fsspec URL) are copied once into a local cache folder first.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
OPEN_SHARDS = 16  # readers a process keeps open at once


def expand_braces(pattern: str) -> list[str]:
    """``a/{000..002}.tar`` -> the three names (``braceexpand``, which WebDataset itself uses)."""
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def clip_benchmark_root(root: str, split: str | None) -> tuple[list[str], list[str], list[str] | None] | None:
    """Shards, class names and templates of a CLIP_benchmark dataset root, or None when ``root``
    is not one (no ``classnames.txt`` beside a ``SPLIT/nshards.txt``)."""
    from .outputs import filesystem

    fs, inner = filesystem(root)
    if not fs.isfile(f"{inner}/classnames.txt"):
        return None
    split = split or "test"
    if not fs.isfile(f"{inner}/{split}/nshards.txt"):
        found = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False) if fs.isdir(p))
        raise InputError(f"CLIP_benchmark root '{root}' has no split '{split}' ({split}/nshards.txt not found; "
                         f"splits there: {', '.join(found) or 'none'}): pass --split NAME")
    try:
        count = int(fs.cat_file(f"{inner}/{split}/nshards.txt").decode().strip())
    except ValueError:
        raise InputError(f"'{root}/{split}/nshards.txt' should hold the number of shards") from None
    classnames = [line.strip() for line in fs.cat_file(f"{inner}/classnames.txt").decode().splitlines() if line.strip()]
    templates = None
    if fs.isfile(f"{inner}/zeroshot_classification_templates.txt"):
        lines = fs.cat_file(f"{inner}/zeroshot_classification_templates.txt").decode().splitlines()
        templates = [line.strip().replace("{c}", "{}") for line in lines if line.strip()]  # CLIP_benchmark's {c}
    return [f"{root.rstrip('/')}/{split}/{n}.tar" for n in range(count)], classnames, templates


def shard_list(spec: str, rest: str) -> list[str]:
    """The shards a SPEC names: a brace pattern, a folder of ``.tar`` files, or one file (local or URL)."""
    from .outputs import filesystem, is_url

    if "{" in rest:
        return expand_braces(rest)
    fs, inner = filesystem(rest)
    if fs.isdir(inner):
        tars = sorted(p for p in fs.ls(inner, detail=False) if p.endswith(".tar"))
        if not tars:
            raise InputError(f"data spec '{spec}': folder '{rest}' holds no .tar shards")
        return [f"{rest.rstrip('/')}/{p.rsplit('/', 1)[-1]}" if is_url(rest) else p for p in tars]
    if fs.isfile(inner):
        return [rest]
    raise InputError(f"data spec '{spec}': '{rest}' is neither a .tar shard, a folder of shards, a brace pattern "
                     "(shards/{00000..00009}.tar) nor a CLIP_benchmark root")


class WdsSource:
    """Samples of WebDataset shards, by index: shard after shard, each in its members' order."""

    def __init__(self, spec: str, shards: list[str], classnames: list[str] | None, templates: list[str] | None,
                 layout: str, split: str | None) -> None:
        self.shards = shards
        self.classnames = classnames
        self.templates = templates
        self._readers: dict[int, Any] = {}
        self._local: dict[int, str] = {}
        keys: list[str] = []
        labels: list[int] = []
        self._shard_of: list[int] = []
        self._position: list[int] = []
        from wids.wids import splitname

        for number in range(len(shards)):
            reader = self._reader(number)
            names = list(reader.reader.names())
            for position, members in enumerate(reader.samples):  # from the tar headers: no image is read
                parts = {splitname(names[i])[1]: i for i in members}
                keys.append(splitname(names[members[0]])[0])
                cls = reader.reader.get_file(parts[".cls"])[1] if ".cls" in parts else None
                labels.append(self._label(number, keys[-1], cls))
                self._shard_of.append(number)
                self._position.append(position)
        self._close_readers()  # indexing opened every shard: let go of them, reading reopens a few
        if not keys:
            raise InputError(f"data spec '{spec}': its {len(shards)} shard(s) hold no samples")
        self.keys = keys
        self.labels = np.asarray(labels, np.int32)
        self.identity = {"kind": "wds", "spec": spec, "layout": layout, "split": split,
                         "shards": [s if "://" in s else str(Path(s).resolve()) for s in shards]}

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the shards themselves
        return {**self.__dict__, "_readers": {}}

    def _close_readers(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def _reader(self, number: int) -> Any:
        """The shard's indexed reader (``wids``); a process keeps the ``OPEN_SHARDS`` it used last
        open, so a dataset of many thousand shards never holds as many files open."""
        from wids.wids import IndexedTarSamples

        if number in self._readers:
            self._readers[number] = self._readers.pop(number)  # now the most recently used
        else:
            if len(self._readers) >= OPEN_SHARDS:
                self._readers.pop(next(iter(self._readers))).close()
            path = self._local_copy(number)
            try:
                self._readers[number] = IndexedTarSamples(path=path, index_file=None)
            except (OSError, tarfile.TarError, ValueError, AssertionError) as exc:
                raise InputError(f"shard '{self.shards[number]}' cannot be read as a tar file "
                                 f"({type(exc).__name__}: {exc}): check or re-create it") from exc
        return self._readers[number]

    def _local_copy(self, number: int) -> str:
        """A local path of the shard: itself, or a cached copy of a remote one."""
        shard = self.shards[number]
        if "://" not in shard or shard.startswith("file://"):
            path = shard.removeprefix("file://")
            if not os.path.isfile(path):
                raise InputError(f"shard '{shard}' not found: check the data spec")
            return path
        if number not in self._local:
            from .outputs import cache_dir, filesystem

            fs, inner = filesystem(shard)
            target = cache_dir() / "shards" / hashlib.sha256(shard.encode()).hexdigest()[:16] / Path(inner).name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(inner, str(target) + ".part")
                os.replace(str(target) + ".part", target)
            self._local[number] = str(target)
        return self._local[number]

    def _label(self, number: int, key: str, cls: Any) -> int:
        if cls is None:
            return -1
        text = bytes(cls.read()).decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise InputError(f"shard '{self.shards[number]}', sample '{key}': its .cls holds {text[:20]!r}, not an "
                             "integer class index") from None

    def image(self, index: int) -> Image.Image:
        number, position = self._shard_of[index], self._position[index]
        sample = self._reader(number)[position]
        for extension in IMAGE_EXTENSIONS:
            if extension in sample:
                try:
                    image = Image.open(io.BytesIO(sample[extension].read()))
                    image.load()
                except Exception as exc:
                    why = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
                    raise ValueError(f"shard '{self.shards[number]}', key '{sample['__key__']}' "
                                     f"({extension[1:]}): {why}") from exc
                return image
        members = ", ".join(sorted(k for k in sample if k != "__key__"))
        raise ValueError(f"shard '{self.shards[number]}', key '{sample['__key__']}' has no image "
                         f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}), only {members}")

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for shard, count in zip(self.shards, np.bincount(self._shard_of, minlength=len(self.shards))):
            digest.update(f"{Path(shard).name}:{int(count)}\n".encode())
        digest.update("\n".join(self.keys).encode())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


def open_webdataset(spec: str, rest: str, split: str | None, download: bool) -> WdsSource:
    """The ``wds:`` builder: a CLIP_benchmark root (with its class names and templates) or shards."""
    benchmark = clip_benchmark_root(rest, split)
    if benchmark is not None:
        shards, classnames, templates = benchmark
        return WdsSource(spec, shards, classnames, templates, "clip_benchmark", split or "test")
    return WdsSource(spec, shard_list(spec, rest), None, None, "shards", split)
