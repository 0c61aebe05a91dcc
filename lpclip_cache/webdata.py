"""WebDataset tar shards as a data source: ``--data wds:SPEC``.

SPEC is a brace pattern (``shards/{00000..00099}.tar``), a folder of ``.tar`` files, an fsspec
URL of either, or a CLIP_benchmark dataset root (``classnames.txt``,
``zeroshot_classification_templates.txt`` and ``{split}/nshards.txt`` with ``{split}/{n}.tar``),
whose class names and templates then come with the data. A sample is the tar members sharing a
key (the member name up to the first dot of its basename, as WebDataset splits it): its image is
the first of ``jpg``, ``jpeg``, ``png``, ``webp`` present, its label the plain decimal integer in
``cls`` (-1, unlabelled, without one), its key that key.

Each shard is indexed with the standard library's ``tarfile`` (``tarindex``): every member under
its full name, with its data offset, so an image is read on its own with one seek in whichever
order extraction asks for it, and a shard of the store stays the unit of work, resumable,
bit-identical and dealt to torchrun ranks as before. Remote shards (an fsspec URL) are copied
once into a local cache folder first.

Nothing is dropped or renumbered in silence. What the index finds wrong is a ``Problem``:
``refuse`` (a shard cut short or unreadable, a key repeated, which would otherwise shift or mix
samples), ``invalid`` (a sample without an image or with a ``cls`` that is not a class index) or
``warning`` (no end-of-archive blocks, members of a key not adjacent, skipped files, a shard count
that disagrees with ``nshards.txt``). ``admit`` turns the first refusal or invalid sample into one
line, or with ``--skip-bad`` keeps the complete samples, makes invalid samples invalid rows with
their reason, and records every problem in the store's manifest, where ``info`` and ``verify``
show them (docs/reliability.md lists the cases).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
OPEN_SHARDS = 16  # files a process keeps open at once
RECORDED_PROBLEMS = 1000  # a manifest lists at most this many problems, and counts the rest
_LABEL = re.compile(r"-?[0-9]{1,10}")  # ASCII digits only: no '1_0', no '٣', no '+3'
NON_SHARDS = "hidden files, AppleDouble '._' files and files not ending in .tar"


@dataclass(frozen=True)
class Problem:
    """Something wrong in the data, where it is (``key`` None for a whole shard), and what
    ``--skip-bad`` does with it (``refuse``: the samples concerned are left out; ``invalid``: the
    sample is an invalid row; ``warning``: nothing is left out)."""

    severity: str
    shard: str
    key: str | None
    problem: str

    def line(self) -> str:
        where = f"shard '{self.shard}'" + (f", sample '{self.key}'" if self.key is not None else "")
        return f"{where}: {self.problem}"


def expand_braces(spec: str, pattern: str) -> list[str]:
    """``a/{000..002}.tar`` -> the three names (``braceexpand``, which WebDataset itself uses)."""
    from braceexpand import UnbalancedBracesError, braceexpand

    try:
        return list(braceexpand(pattern))
    except UnbalancedBracesError:
        raise InputError(f"data spec '{spec}': the brace pattern '{pattern}' is unbalanced: write it as "
                         "shards/{00000..00009}.tar") from None


def read_text(fs: Any, path: str, shown: str) -> bytes:
    try:
        return fs.cat_file(path)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise InputError(f"cannot read '{shown}' ({why}): check that it is readable") from None


def clip_benchmark_root(
    root: str, split: str | None
) -> tuple[list[str], list[str], list[str] | None, list[Problem]] | None:
    """Shards, class names, templates and warnings of a CLIP_benchmark dataset root, or None
    when ``root`` is not one (no ``classnames.txt``). Its class names are read as CLIP_benchmark
    reads them, one per line (``prompts.classnames_from_text``), its templates through the same
    loader as ``--templates`` files."""
    from .outputs import filesystem
    from .prompts import classnames_from_text, templates_from_text

    fs, inner = filesystem(root)
    if not fs.isfile(f"{inner}/classnames.txt"):
        return None
    split = split or "test"
    base = root.rstrip("/")
    if not fs.isfile(f"{inner}/{split}/nshards.txt"):
        found = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False) if fs.isdir(p))
        raise InputError(f"CLIP_benchmark root '{root}' has no split '{split}' ({split}/nshards.txt not found; "
                         f"splits there: {', '.join(found) or 'none'}): pass --split NAME")
    text = read_text(fs, f"{inner}/{split}/nshards.txt", f"{base}/{split}/nshards.txt").decode("utf-8", "replace")
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()) or int(text) <= 0:
        raise InputError(f"'{base}/{split}/nshards.txt' holds {text.strip()[:20]!r}, not a positive number of "
                         f"shards: write the number of {split}/N.tar files in it")
    count = int(text)
    classnames = classnames_from_text(read_text(fs, f"{inner}/classnames.txt", f"{base}/classnames.txt"),
                                      f"{base}/classnames.txt", one_per_line=True)
    templates = None
    if fs.isfile(f"{inner}/zeroshot_classification_templates.txt"):
        name = f"{base}/zeroshot_classification_templates.txt"
        templates = templates_from_text(read_text(fs, f"{inner}/zeroshot_classification_templates.txt", name), name)
    shards = [f"{base}/{split}/{n}.tar" for n in range(count)]
    present = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{inner}/{split}", detail=False) if p.lower().endswith(".tar")}
    notes = []
    extra = sorted(present - {f"{n}.tar" for n in range(count)})
    if extra:
        notes.append(Problem("warning", f"{base}/{split}", None,
                             f"nshards.txt says {count} shard(s), but {len(extra)} more .tar file(s) lie beside them "
                             f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): they are not read"))
    return shards, classnames, templates, notes


def shard_list(spec: str, rest: str) -> tuple[list[str], list[Problem]]:
    """The shards a SPEC names (a brace pattern, a folder of ``.tar`` files, or one file, local
    or URL) and a warning counting the files of a folder that are not shards."""
    from .outputs import filesystem, is_url

    if "{" in rest or "}" in rest:
        return expand_braces(spec, rest), []
    fs, inner = filesystem(rest)
    if fs.isdir(inner):
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False) if not fs.isdir(p))
        tars = [n for n in names if n.lower().endswith(".tar") and not n.startswith(".")]
        if not tars:
            raise InputError(f"data spec '{spec}': folder '{rest}' holds no .tar shards")
        notes = []
        if len(tars) < len(names):
            notes.append(Problem("warning", rest, None, f"{len(names) - len(tars)} file(s) skipped, not read as "
                                 f"shards ({NON_SHARDS}): first '{sorted(set(names) - set(tars))[0]}'"))
        base = rest.rstrip("/") if is_url(rest) else inner.rstrip("/")
        return [f"{base}/{n}" for n in tars], notes
    if fs.isfile(inner):
        return [rest], []
    raise InputError(f"data spec '{spec}': '{rest}' is neither a .tar shard, a folder of shards, a brace pattern "
                     "(shards/{00000..00009}.tar) nor a CLIP_benchmark root")


def parse_label(data: bytes) -> tuple[int | None, str | None]:
    """A ``cls`` member's class index (-1: unlabelled) or the reason it is not one."""
    try:
        text = data.decode("utf-8").strip(" \t\r\n")
    except UnicodeDecodeError:
        return None, "its .cls is not UTF-8 text"
    if not _LABEL.fullmatch(text):
        return None, f"its .cls holds {text[:20]!r}, not a plain decimal class index"
    value = int(text)
    if value < -1:
        return None, f"its .cls holds {value}: class indices are 0 or more (-1 marks an unlabelled sample)"
    return value, None


@dataclass(frozen=True)
class Entry:
    """Where a sample's image is: shard number, data offset and size in the local file."""

    shard: int
    offset: int
    size: int
    extension: str


class WdsSource:
    """Samples of WebDataset shards, by index: shard after shard, each in the order of its
    samples' first members."""

    def __init__(self, spec: str, shards: list[str], classnames: list[str] | None, templates: list[str] | None,
                 layout: str, split: str | None, notes: list[Problem] | None = None, progress: bool = True) -> None:
        from .progress import Progress
        from .tarindex import NotATar, group_samples, index_tar

        self.spec = spec
        self.shards = shards
        self.classnames = classnames
        self.templates = templates
        self.problems: list[Problem] = list(notes or [])
        self._files: dict[int, Any] = {}
        self._local: dict[int, str] = {}
        found: list[tuple[int, Any]] = []  # (shard, Sample) in reading order
        digest = hashlib.sha256()
        meter = Progress(len(shards), "index shards", "shards", enabled=progress and len(shards) >= 50)
        for number, shard in enumerate(shards):
            path = self._local_copy(number)
            try:
                index = index_tar(path)
            except NotATar as exc:
                self._refuse(shard, None, f"cannot be read as a tar file ({exc}): fetch it again or re-create it")
                meter.update()
                continue
            except OSError as exc:
                raise InputError(f"shard '{shard}' cannot be read ({exc.strerror or type(exc).__name__}): "
                                 "check that it is readable") from None
            digest.update(f"{Path(shard).name}\n".encode())
            digest.update("\n".join(index.digest_items()).encode())
            samples, loose = group_samples(index.members)
            if index.damage:
                whole = [s for s in samples if all(m.offset + m.size <= index.size for m in s.members.values())]
                self._refuse(shard, None, f"is cut short or damaged: {index.damage}; {len(whole)} complete sample(s) "
                             "before it are kept with --skip-bad, else fetch the shard again")
                samples = whole
            elif index.unterminated:
                self._warn(shard, None, "lacks tar's end-of-archive blocks (an interrupted copy?); its samples are "
                           "whole and are read, but check the shard")
            scattered = [s.key for s in samples if not s.adjacent]
            if scattered:
                self._warn(shard, None, f"the members of {len(scattered)} key(s) are not adjacent (first "
                           f"'{scattered[0]}'); they are grouped by key, which WebDataset's sequential reader "
                           "would not do")
            if loose or index.others:
                self._warn(shard, None, f"{loose + index.others} member(s) belong to no sample (no extension, or "
                           "not a regular file) and are not read")
            found.extend((number, s) for s in samples)
            meter.update()
        meter.close()
        self._keep(found)
        self._digest = digest.hexdigest()
        self.identity = {"kind": "wds", "spec": spec, "layout": layout, "split": split,
                         "shards": [s if "://" in s else str(Path(s).resolve()) for s in shards]}

    def _refuse(self, shard: str, key: str | None, problem: str) -> None:
        self.problems.append(Problem("refuse", shard, key, problem))

    def _warn(self, shard: str, key: str | None, problem: str) -> None:
        self.problems.append(Problem("warning", shard, key, problem))

    def _keep(self, found: list[tuple[int, Any]]) -> None:
        """Rows for the samples found: a key seen twice (in one shard or across shards) is refused
        in every copy, so no copy takes another's place."""
        seen: dict[str, list[int]] = {}
        for position, (_, sample) in enumerate(found):
            seen.setdefault(sample.key, []).append(position)
        keys: list[str] = []
        labels: list[int] = []
        self._entries: list[Entry | None] = []
        self._invalid: dict[int, str] = {}
        for number, sample in found:
            shard = self.shards[number]
            copies = seen[sample.key]
            if len(copies) > 1:
                places = sorted({self.shards[found[i][0]].rsplit("/", 1)[-1] for i in copies})
                self._refuse(shard, sample.key, f"the key appears {len(copies)} times (in {', '.join(places)}); "
                             "every copy is left out with --skip-bad, else give each sample its own key")
                continue
            if sample.repeated:
                times = 1 + max(sample.repeated.count(e) for e in sample.repeated)
                self._refuse(shard, sample.key, f"the key appears {times} times in this shard (its "
                             f"{', '.join(sorted(set(sample.repeated)))} repeated); every copy is left out with "
                             "--skip-bad, else give each sample its own key")
                continue
            reason = None
            label = -1
            if "cls" in sample.members:
                value, reason = parse_label(self._read(number, sample.members["cls"]))
                label = value if value is not None else -1
            image = next((e for e in IMAGE_EXTENSIONS if e in sample.members), None)
            if image is None and reason is None:
                reason = (f"has no image ({', '.join(IMAGE_EXTENSIONS)}), only "
                          f"{', '.join(sorted(sample.members))}")
            row = len(keys)
            keys.append(sample.key)
            labels.append(label)
            member = sample.members.get(image) if image else None
            self._entries.append(Entry(number, member.offset, member.size, image) if member else None)
            if reason is not None:
                self._invalid[row] = reason
                self.problems.append(Problem("invalid", shard, sample.key, reason))
        self.keys = keys
        self.labels = np.asarray(labels, np.int32)

    def check_labels(self, classes: int) -> None:
        """Make every label at or above ``classes`` an invalid sample (called once the class
        names are known)."""
        for row in np.flatnonzero(self.labels >= classes).tolist():
            reason = f"its .cls holds {int(self.labels[row])}, outside the {classes} classes [0, {classes})"
            entry = self._entries[row]
            self._invalid[row] = reason
            self.labels[row] = -1
            self.problems.append(Problem("invalid", self.shards[entry.shard] if entry else "?", self.keys[row], reason))

    def admit(self, classes: int, skip_bad: bool) -> list[str]:
        """Check the labels against ``classes``, then either raise the first problem that loses or
        invalidates data as one line, or (``skip_bad``, or when there is none) record every problem
        in the identity and return the lines to show: one per warning, one counting the rest."""
        self.check_labels(classes)
        bad = [p for p in self.problems if p.severity != "warning"]
        if bad and not skip_bad:
            more = f" ({len(bad) - 1} more problem(s) in the data)" if len(bad) > 1 else ""
            raise InputError(f"{bad[0].line()}{more}: fix the data, or pass --skip-bad to keep the rest and "
                             "record these")
        if not self.keys:
            raise InputError(f"data spec '{self.spec}': its {len(self.shards)} shard(s) hold no samples"
                             + (f" ({len(self.problems)} problem(s), first: {self.problems[0].line()})"
                                if self.problems else ""))
        if self.problems:
            self.identity["problems"] = [asdict(p) for p in self.problems[:RECORDED_PROBLEMS]]
            self.identity["problem_count"] = len(self.problems)
        lines = [f"warning: {p.line()}" for p in self.problems if p.severity == "warning"][:20]
        if bad:
            counted = {s: sum(p.severity == s for p in bad) for s in ("refuse", "invalid")}
            lines.append(f"--skip-bad: {counted['refuse']} problem(s) left samples out and {counted['invalid']} "
                         f"sample(s) are invalid rows (first: {bad[0].line()}); the store's manifest lists them")
        return lines

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open the shards themselves
        return {**self.__dict__, "_files": {}}

    def _file(self, number: int) -> Any:
        """The shard's open file; a process keeps the ``OPEN_SHARDS`` it used last open, so a
        dataset of many thousand shards never holds as many files open."""
        if number in self._files:
            self._files[number] = self._files.pop(number)  # now the most recently used
        else:
            if len(self._files) >= OPEN_SHARDS:
                self._files.pop(next(iter(self._files))).close()
            self._files[number] = open(self._local_copy(number), "rb")  # noqa: SIM115 (closed when evicted)
        return self._files[number]

    def _read(self, number: int, member: Any) -> bytes:
        handle = self._file(number)
        handle.seek(member.offset)
        return handle.read(member.size)

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
                try:
                    fs.get_file(inner, str(target) + ".part")
                except FileNotFoundError:
                    raise InputError(f"shard '{shard}' not found: check the data spec") from None
                os.replace(str(target) + ".part", target)
            self._local[number] = str(target)
        return self._local[number]

    def image(self, index: int) -> Image.Image:
        import io

        entry = self._entries[index]
        if index in self._invalid or entry is None:
            raise ValueError(self._invalid.get(index, "no image"))
        shard = self.shards[entry.shard]
        data = self._read(entry.shard, entry)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:
            why = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise ValueError(f"shard '{shard}', key '{self.keys[index]}' ({entry.extension}): {why}") from exc
        return image

    def fingerprint(self) -> str:
        """Covers every shard's name, size and member table (names, offsets, sizes, header
        checksums), then the rows' keys and labels: a shard rewritten under a partial store changes
        it, so that store is not resumed with mixed content."""
        digest = hashlib.sha256(self._digest.encode())
        digest.update("\n".join(self.keys).encode())
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


def open_webdataset(spec: str, rest: str, split: str | None, download: bool, progress: bool = True) -> WdsSource:
    """The ``wds:`` builder: a CLIP_benchmark root (with its class names and templates) or shards."""
    benchmark = clip_benchmark_root(rest, split)
    if benchmark is not None:
        shards, classnames, templates, notes = benchmark
        return WdsSource(spec, shards, classnames, templates, "clip_benchmark", split or "test", notes, progress)
    shards, notes = shard_list(spec, rest)
    return WdsSource(spec, shards, None, None, "shards", split, notes, progress)
