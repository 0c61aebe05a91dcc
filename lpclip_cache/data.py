"""Data sources: where images come from, and the contract extraction reads them by.

A source is a small object with ``len``, ``keys``, ``labels``, ``classnames``, ``identity``,
``image(i)`` and ``fingerprint()`` (``Source``); a source may offer more, each capability a
protocol of its own: prompt templates of its own (``HasTemplates``), problems found in its data
to refuse or record once the classes are known (``AdmitsRows``), or every image in one array
(``HasPixels``). ``open_source(spec, split)`` picks a source from a table of builders by the
spec's prefix (``cifar10:ROOT``, ``cifar100:ROOT``, ``shapes:SPLIT...``, ``wds:SPEC`` or a plain
ImageFolder path). Decoding the images is ``decode``'s, resizing them ``preprocess``'s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .errors import DataUnavailable, InputError
from .prompts import prompt_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


class Source(Protocol):
    """What extraction needs of a dataset."""

    keys: list[str]
    labels: np.ndarray
    classnames: list[str] | None
    identity: dict[str, Any]

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image:
        """The image at ``index`` as a PIL image (any mode; it is converted to RGB later). Raises
        ``BadImage`` for an image its data marks bad, ``DataUnavailable`` when it cannot be read
        now; an image that fails to decode may raise anything else (``DecodedDataset`` names it)."""
        ...

    def fingerprint(self) -> str:
        """A hash that changes when the dataset's content or order changes."""
        ...


@runtime_checkable
class HasTemplates(Protocol):
    """A source that brings its own prompt templates (a CLIP_benchmark root's); None when it has
    none. ``--templates`` still overrides them."""

    templates: list[str] | None


@runtime_checkable
class AdmitsRows(Protocol):
    """A source that found problems in its data while opening it (WebDataset shards)."""

    def admit(self, classes: int, skip_bad: bool) -> list[str]:
        """Check the data against the ``classes`` class names, then raise its first problem as one
        ``InputError``, or with ``skip_bad`` keep what can be kept (problems recorded in
        ``identity``, invalid samples raising ``BadImage`` from ``image``) and report the rest.
        Returns the lines reported, as the command line shows them."""
        ...


@runtime_checkable
class HasPixels(Protocol):
    """A source whose images are all in memory as one uint8 N x H x W x 3 array."""

    pixels: np.ndarray


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (symlinks followed); an unreadable sub-folder raises its OSError
    instead of being skipped in silence, as ``Path.rglob`` would."""

    def fail(exc: OSError) -> None:
        raise exc

    found = []
    for dirpath, _, filenames in os.walk(folder, onerror=fail, followlinks=True):
        found.extend(Path(dirpath) / name for name in filenames)
    return [f for f in found if f.is_file()]


@dataclass
class FolderSource:
    """An ImageFolder tree: ``root/<class>/<image>``; classes are the sorted folder names."""

    root: Path
    keys: list[str]
    labels: np.ndarray
    classnames: list[str]
    identity: dict[str, Any]

    @classmethod
    def open(cls, root: Path, spec: str, split: str | None) -> FolderSource:
        """Scan the tree; the split, when given, is a sub-folder of the root.

        Every class folder is a class (its index is its rank among the sorted folder names), so a
        class folder without images is an error naming it, not a class silently dropped or kept.
        """
        try:
            return cls._scan(root, spec, split)
        except OSError as exc:  # an unreadable folder (permissions, I/O error) met while scanning
            where = exc.filename or root
            raise InputError(f"cannot read data folder '{where}' ({exc.strerror or type(exc).__name__}): "
                             "check that it exists and that you may read it") from exc

    @classmethod
    def _scan(cls, root: Path, spec: str, split: str | None) -> FolderSource:
        if not root.exists():
            raise InputError(f"data path '{root}' does not exist: pass an ImageFolder root (class/xxx.jpg)")
        if not root.is_dir():
            raise InputError(f"data path '{root}' is not a directory: pass an ImageFolder root (class/xxx.jpg)")
        if split:
            if not (root / split).is_dir():
                found = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
                raise InputError(
                    f"split '{split}' not found under '{root}' (sub-folders: {', '.join(found) or 'none'}): "
                    "pass --split with one of them, or point --data at the split folder itself"
                )
            root = root / split
        from .webdata import bad_name, shown

        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        keys: list[str] = []
        labels: list[int] = []
        empty: list[Path] = []
        for index, class_dir in enumerate(class_dirs):
            files = sorted(f for f in files_under(class_dir) if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                empty.append(class_dir)
            keys.extend(str(f.relative_to(root)) for f in files)
            labels.extend([index] * len(files))
        for key in keys:
            why = bad_name(key)
            if why is not None:
                raise InputError(f"image file '{shown(key)}' under '{shown(str(root))}' {why}: its key must be "
                                 "stored exactly")
        suffixes = "/".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        if not keys:
            raise InputError(f"no images found in '{root}': expected class folders holding {suffixes} files")
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise InputError(
                f"class folder '{empty[0]}'{more} holds no images ({suffixes}): add its images, or move the "
                "folder out of the dataset (every class folder is a class, and its position fixes the labels)"
            )
        identity = {"kind": "folder", "spec": spec, "root": str(root.resolve()), "split": split}
        return cls(root, keys, np.asarray(labels, np.int32), [d.name for d in class_dirs], identity)

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, index: int) -> Image.Image:
        """Open the file lazily; decoding errors surface when the pixels are read."""
        return Image.open(self.root / self.keys[index])

    def fingerprint(self) -> str:
        """Hash of every relative path, label and file size, in order."""
        digest = hashlib.sha256()
        for key, label in zip(self.keys, self.labels.tolist()):
            try:
                size = os.stat(self.root / key).st_size
            except OSError as exc:
                raise DataUnavailable(f"cannot read image '{key}' under '{self.root}' ({exc.strerror}): check the "
                                      "disk or mount, then run the same command again") from None
            digest.update(f"{key}\0{label}\0{size}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


@dataclass
class ArraySource:
    """Images held as one uint8 array (N x H x W x 3), e.g. CIFAR read through torchvision."""

    pixels: np.ndarray
    keys: list[str]
    labels: np.ndarray
    classnames: list[str] | None
    identity: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, index: int) -> Image.Image:
        """The pixels as a PIL image."""
        return Image.fromarray(self.pixels[index])

    def fingerprint(self) -> str:
        """Hash of the pixel bytes and labels."""
        digest = hashlib.sha256(np.ascontiguousarray(self.pixels).data)
        digest.update(np.ascontiguousarray(self.labels).data)
        return digest.hexdigest()


def download_failed(dataset: str, root: str, exc: OSError, files: str) -> DataUnavailable:
    """A dataset download that failed (no network, a proxy, a server down) as one line."""
    why = getattr(exc, "reason", None) or exc.strerror or exc
    return DataUnavailable(f"{dataset} could not be downloaded into '{root}' ({type(exc).__name__}: {why}): run the "
                           f"same command on a connected machine, or copy {files} into '{root}' and leave out "
                           "--download")


def torchvision_cifar(variant: str) -> Callable[[str, str, str | None, bool], ArraySource]:
    """A builder for ``cifar10:ROOT`` / ``cifar100:ROOT`` read through torchvision from a local root."""

    def build(spec: str, root: str, split: str | None, download: bool) -> ArraySource:
        from torchvision import datasets

        split = split or "train"
        if split not in ("train", "test"):
            raise InputError(f"{variant} has splits 'train' and 'test', not '{split}': pass --split train|test")
        dataset_cls = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
        try:
            dataset = dataset_cls(root=root, train=split == "train", download=download)
        except OSError as exc:  # urllib's URLError, a connection refused or reset, a proxy's error
            if not download:
                raise
            archive = "cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz"
            raise download_failed(variant, root, exc, archive) from None
        except RuntimeError as exc:
            raise InputError(
                f"{variant} not found under '{root}' ({str(exc).splitlines()[0]}): "
                "add --download on a connected machine, or point at the folder holding the python version"
            ) from exc
        classnames = [prompt_name(name) for name in dataset.classes]
        identity = {"kind": variant, "spec": spec, "root": str(Path(root).resolve()), "split": split}
        keys = [f"{variant}/{split}/{i}" for i in range(len(dataset.data))]
        return ArraySource(dataset.data, keys, np.asarray(dataset.targets, np.int32), classnames, identity)

    return build


def generated_shapes(spec: str, rest: str, split: str | None, download: bool) -> ArraySource:
    """The project's procedural shapes world (``shapes:SPLIT[:STYLE|:CORRUPTION:SEVERITY][:world=NAME]``),
    generated in memory (``download`` is not needed)."""
    from .world.shapes import SHAPES, WORLDS, parse_spec, split_pixels

    parsed = parse_spec(spec, rest, split)
    pixels, labels = split_pixels(parsed)
    identity = {"kind": "shapes", "spec": spec, "split": parsed.split, "domain": parsed.domain,
                "style": parsed.style, "corruption": parsed.corruption, "severity": parsed.severity,
                "n": parsed.n, "seed": parsed.seed, "world": parsed.world, "scenes": WORLDS[parsed.world].describe()}
    keys = [f"shapes/{parsed.split}/{parsed.domain}/{i}" for i in range(parsed.n)]
    return ArraySource(pixels, keys, labels, list(SHAPES), identity)


def cifar_corrupted(variant: str) -> Callable[[str, str, str | None, bool], ArraySource]:
    """A builder for the CIFAR-10-C / CIFAR-100-C layout: ``ROOT/<corruption>.npy`` (5 severities
    of 10,000 test images stacked, severity 1 first) and ``ROOT/labels.npy``.

    Spec: ``cifar10c:ROOT:CORRUPTION:SEVERITY``. The arrays are memory-mapped and only the chosen
    severity's rows are read.
    """

    def build(spec: str, rest: str, split: str | None, download: bool) -> ArraySource:
        parts = rest.rsplit(":", 2)
        if len(parts) != 3 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= 5:
            raise InputError(f"data spec '{spec}' should read {variant}:ROOT:CORRUPTION:SEVERITY (severity 1-5)")
        root, corruption, severity = Path(parts[0]).expanduser(), parts[1], int(parts[2])
        images, labels = root / f"{corruption}.npy", root / "labels.npy"
        if not images.is_file() or not labels.is_file():
            found = sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels") if root.is_dir() else []
            raise InputError(
                f"{variant}: '{images if not images.is_file() else labels}' not found (corruptions under "
                f"'{root}': {', '.join(found[:6]) or 'none'}): point at the folder holding <corruption>.npy "
                "and labels.npy"
            )
        try:
            pixels = np.load(images, mmap_mode="r")
            truth = np.load(labels, mmap_mode="r")
        except ValueError as exc:
            raise InputError(f"{variant}: '{images}' is not a readable .npy array ({exc})") from exc
        per = len(truth) // 5
        shape_ok = pixels.ndim == 4 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8
        if not shape_ok or len(pixels) != len(truth) or per == 0 or len(truth) % 5:
            raise InputError(
                f"{variant}: '{images}' holds {pixels.dtype} {tuple(pixels.shape)} and labels.npy {len(truth)} rows; "
                "expected uint8 N x H x W x 3 with one label per image (5 severities stacked)"
            )
        rows = slice((severity - 1) * per, severity * per)
        identity = {"kind": f"{variant}c", "spec": spec, "root": str(root.resolve()), "split": split,
                    "corruption": corruption, "severity": severity}
        keys = [f"{variant}c/{corruption}/{severity}/{i}" for i in range(per)]
        classnames = [prompt_name(n) for n in _cifar_classnames(variant)]
        return ArraySource(np.ascontiguousarray(pixels[rows]), keys, np.asarray(truth[rows], np.int32), classnames,
                           identity)

    return build


def _cifar_classnames(variant: str) -> list[str]:
    from .prompts import load_classnames

    return load_classnames(variant)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: a magic number giving the dtype and rank, the sizes,
    then the data), plain or gzipped."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"'{path}' is not an IDX file of unsigned bytes (bad magic number): point at the MNIST "
                         "files t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(shape)):
        raise InputError(f"'{path}' is truncated: its header says {shape} but it holds {body.size} bytes; "
                         "download it again")
    return body.reshape(shape)


def mnist_idx(spec: str, rest: str, split: str | None, download: bool) -> ArraySource:
    """``mnist:ROOT``: MNIST from its original IDX files in ROOT (``t10k-*`` for the test split,
    ``train-*`` for train), gzipped or not; digits become 3-channel images."""
    root = Path(rest).expanduser()
    split = split or "test"
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise InputError(f"mnist has splits 'train' and 'test', not '{split}': pass --split train|test")
    found = {}
    for kind, rank in (("images", 3), ("labels", 1)):
        candidates = [root / f"{prefix}-{kind}-idx{rank}-ubyte{gz}" for gz in (".gz", "")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise InputError(f"mnist: '{candidates[0]}' not found (nor without .gz): point at the folder holding "
                             f"the {split} IDX files")
        found[kind] = read_idx(path)
    images, labels = found["images"], found["labels"]
    if images.ndim != 3 or len(images) != len(labels):
        raise InputError(f"mnist: images {images.shape} and labels {labels.shape} under '{root}' do not match")
    pixels = np.repeat(images[..., None], 3, axis=-1)
    identity = {"kind": "mnist", "spec": spec, "root": str(root.resolve()), "split": split}
    keys = [f"mnist/{split}/{i}" for i in range(len(labels))]
    classnames = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ArraySource(pixels, keys, labels.astype(np.int32), classnames, identity)


def svhn_torchvision(spec: str, rest: str, split: str | None, download: bool) -> ArraySource:
    """``svhn:ROOT``: SVHN (cropped digits) read through torchvision from ROOT (``test_32x32.mat``)."""
    from torchvision import datasets

    split = split or "test"
    if split not in ("train", "test", "extra"):
        raise InputError(f"svhn has splits 'train', 'test' and 'extra', not '{split}'")
    try:
        dataset = datasets.SVHN(root=rest, split=split, download=download)
    except OSError as exc:  # urllib's URLError, a connection refused or reset, a proxy's error
        if not download:
            raise
        raise download_failed("svhn", rest, exc, f"{split}_32x32.mat") from None
    except RuntimeError as exc:
        raise InputError(f"svhn not found under '{rest}' ({str(exc).splitlines()[0]}): add --download on a "
                         f"connected machine, or point at the folder holding {split}_32x32.mat") from exc
    pixels = np.ascontiguousarray(dataset.data.transpose(0, 2, 3, 1))
    identity = {"kind": "svhn", "spec": spec, "root": str(Path(rest).resolve()), "split": split}
    keys = [f"svhn/{split}/{i}" for i in range(len(pixels))]
    classnames = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ArraySource(pixels, keys, np.asarray(dataset.labels, np.int32), classnames, identity)


def imagenet_wordnet() -> tuple[list[str], dict[str, list[str]]]:
    """The 1000 ImageNet WordNet IDs in class-index order, and the named 200-class subsets."""
    import json
    from importlib import resources

    doc = json.loads((resources.files("lpclip_cache.resources") / "wordnet" / "imagenet.json").read_text())
    return list(doc["wnids"]), {k: list(v) for k, v in doc["subsets"].items()}


def imagenet_folder(spec: str, rest: str, split: str | None, download: bool) -> FolderSource:
    """``imagenet:ROOT``: an ImageFolder of ImageNet classes, labelled in the 1000-class space.

    Class folders are WordNet IDs (ImageNet, -Sketch, -A and -R) or class indices 0-999
    (ImageNet-V2). A folder holding fewer than the 1000 classes (ImageNet-A and -R hold 200)
    keeps the full label space and records the classes present as ``class_subset``, so
    ``evaluate`` scores it on those classes only, as the benchmarks are scored.
    """
    from .prompts import load_classnames

    folder = FolderSource.open(Path(rest).expanduser(), spec, split)
    wnids, subsets = imagenet_wordnet()
    index = {w: i for i, w in enumerate(wnids)}
    mapping = []
    for name in folder.classnames:
        if name in index:
            mapping.append(index[name])
        elif name.isdigit() and int(name) < len(wnids):
            mapping.append(int(name))
        else:
            raise InputError(
                f"imagenet: class folder '{folder.root / name}' is neither a WordNet ID of the 1000 ImageNet "
                "classes (like n01440764) nor a class index 0-999: rename it, or use the folder as plain "
                "ImageFolder data (--data PATH)"
            )
    if len(set(mapping)) != len(mapping):
        raise InputError(f"imagenet: '{folder.root}' holds the same class twice (a WordNet ID and its index): "
                         "keep one folder per class")
    lookup = np.asarray(mapping, np.int32)
    subset = sorted(mapping) if len(mapping) < len(wnids) else None
    named = next((k for k, v in subsets.items() if subset is not None and [index[w] for w in v] == subset), None)
    identity = {**folder.identity, "kind": "imagenet", "class_subset": subset, "subset_name": named}
    return FolderSource(folder.root, folder.keys, lookup[folder.labels], load_classnames("imagenet"), identity)


BUILDERS: dict[str, Callable[[str, str, str | None, bool], Source]] = {
    "cifar10": torchvision_cifar("cifar10"),
    "cifar100": torchvision_cifar("cifar100"),
    "cifar10c": cifar_corrupted("cifar10"),
    "cifar100c": cifar_corrupted("cifar100"),
    "shapes": generated_shapes,
    "imagenet": imagenet_folder,
    "mnist": mnist_idx,
    "svhn": svhn_torchvision,
    "wds": lambda *args, **options: webdataset_source(*args, **options),
}
INDEXED = frozenset({"wds"})  # builders that index their files first, with progress when asked


def webdataset_source(spec: str, rest: str, split: str | None, download: bool, progress: bool = True) -> Source:
    """``wds:SPEC``: WebDataset shards or a CLIP_benchmark root (``webdata``, imported when used)."""
    from .webdata import open_webdataset

    return open_webdataset(spec, rest, split, download, progress)


def open_source(spec: str, split: str | None = None, download: bool = False, progress: bool = True) -> Source:
    """Open a dataset from a spec: ``PREFIX:ARGS`` for a registered builder, else a folder path."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BUILDERS:
        if not rest and prefix != "shapes":
            raise InputError(f"data spec '{spec}' has no root: write {prefix}:PATH")
        options = {"progress": progress} if prefix in INDEXED else {}
        return BUILDERS[prefix](spec, rest, split, download, **options)
    if sep and len(prefix) > 1 and not Path(spec).exists():
        raise InputError(f"unknown data source '{prefix}' in '{spec}': use one of {', '.join(sorted(BUILDERS))} "
                         "(as PREFIX:ROOT) or an ImageFolder path")
    return FolderSource.open(Path(spec).expanduser(), spec, split)


def local_roots(spec: str) -> list[Path]:
    """The local files or folders a data spec reads (``cifar10:ROOT`` reads ROOT; a brace pattern
    the folders of the shards it names), none when it reads none (``shapes:`` generates its
    images, a URL is remote)."""
    from .storage import is_url

    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BUILDERS and not rest.strip():
        return []  # no root given: open_source says so, naming the spec
    if sep and prefix == "wds":
        if is_url(rest):
            return []
        if "{" in rest or "}" in rest:
            from .webdata import expand_braces

            try:
                names = expand_braces(spec, rest)
            except InputError:
                return []  # open_source says so, naming the pattern
            return sorted({Path(name).expanduser().parent for name in names if not is_url(name)})
        return [Path(rest).expanduser()]
    if sep and prefix in BUILDERS:
        return [Path(rest.split(":")[0]).expanduser()] if prefix != "shapes" else []
    return [Path(spec).expanduser()]


def known_size(spec: str, split: str | None = None) -> int | None:
    """The number of images a data spec names without reading anything (the generated world's
    ``shapes:...:n=N``, or its split's default size), or None when only opening it tells."""
    prefix, sep, rest = spec.partition(":")
    if not (sep and prefix == "shapes"):
        return None
    from .world.shapes import parse_spec

    return parse_spec(spec, rest, split).n
