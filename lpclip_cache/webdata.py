"""WebDataset tar shards as a data source: ``--data wds:SPEC``.

SPEC is a brace pattern (``shards/{00000..00099}.tar``), a folder of ``.tar`` files, an fsspec
URL of either, or a CLIP_benchmark dataset root (``classnames.txt``,
``zeroshot_classification_templates.txt`` and ``{split}/nshards.txt`` with ``{split}/{n}.tar``),
whose class names and templates then come with the data (a root whose ``dataset_type.txt`` says
``retrieval`` or ``multilabel`` is refused: it is not single-label classification). A sample is the
tar members sharing a key (the member name up to the first dot of its basename, as WebDataset
splits it; members under ``__x__`` names are skipped, as WebDataset skips them): its image is the
first of ``webp``, ``png``, ``jpg``, ``jpeg`` present (CLIP_benchmark's order), its label the plain
decimal integer in ``cls`` (-1, unlabelled, without one), its key that key.

Each shard is indexed with the standard library's ``tarfile`` (``tarindex``): every member under
its full name, with its data offset, so an image is read on its own with one seek in whichever
order extraction asks for it, and a shard of the store stays the unit of work, resumable,
bit-identical and dealt to torchrun ranks as before. Remote shards (an fsspec URL) are copied
into a local cache folder first, under the remote object's version (its size, ETag and
modification time, asked for on every run), so a shard replaced remotely is copied again; a copy
is written under a private name and renamed into place, so a process never reads another's
half-written copy.

Nothing is dropped or renumbered in silence. What the index finds wrong is a ``Problem``
(``problems.Problem``, the one record of why a sample is refused or invalid):
``refuse`` (a shard cut short, without its end-of-archive blocks or unreadable, a key repeated,
a member name with control characters or not in UTF-8, which would otherwise shift, mix or
misname samples), ``invalid`` (a sample without an image or with a ``cls`` that is not a class
index) or ``warning`` (members of a key not adjacent, skipped files, a shard count that
disagrees with ``nshards.txt``). ``admit`` turns the first refusal or invalid sample into one
line, or with ``--skip-bad`` keeps the complete samples, makes invalid samples invalid rows with
their problem's text as reason, records every problem in the store's manifest, where ``info`` and
``verify`` show them (docs/reliability.md lists the cases), and logs the warnings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadImage, DataUnavailable, InputError
from .problems import Problem, labels_outside

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # a sample's image: the first present, as CLIP_benchmark takes it
OPEN_SHARDS = 16  # files a process keeps open at once
RECORDED_PROBLEMS = 1000  # a manifest lists at most this many problems, and counts the rest
_LABEL = re.compile(r"-?[0-9]{1,10}")  # ASCII digits only: no '1_0', no '٣', no '+3'
LARGEST_LABEL = 2**31 - 1  # labels are stored as int32
NOT_CLASSIFICATION = ("retrieval", "multilabel")  # dataset_type.txt values CLIP_benchmark reads otherwise
NON_SHARDS = "hidden files, AppleDouble '._' files and files not ending in .tar"

log = logging.getLogger(__name__)


def shown(name: str) -> str:
    """A name as one printable line: control characters as ``\\xNN``, and the bytes of a name
    that is not UTF-8 (``tarfile`` and ``os`` keep them as surrogate escapes) as ``\\xNN`` too."""
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char) in ("Cc", "Cs"):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def bad_name(name: str) -> str | None:
    """Why a member or file name cannot be a key as it is (None when it can): a store keeps keys
    exactly, and a control character (NUL is dropped by numpy's strings, newlines break every
    listing) or bytes that are not UTF-8 would not survive."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "is not valid UTF-8 (rename it in UTF-8)"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "holds a control character (rename it without one)"
    return None


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
    from .prompts import classnames_from_text, templates_from_text
    from .storage import filesystem

    fs, inner = filesystem(root)
    if not fs.isfile(f"{inner}/classnames.txt"):
        return None
    split = split or "test"
    base = root.rstrip("/")
    if fs.isfile(f"{inner}/dataset_type.txt"):
        kind = read_text(fs, f"{inner}/dataset_type.txt", f"{base}/dataset_type.txt").decode("utf-8", "replace")
        if kind.strip().lower() in NOT_CLASSIFICATION:
            raise InputError(f"CLIP_benchmark root '{root}' holds a {kind.strip().lower()} dataset (dataset_type.txt), "
                             "not single-label classification, which lpclip-cache reads: pass a classification "
                             "dataset")
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
    from .storage import filesystem, is_url

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
    if value > LARGEST_LABEL:
        return None, f"its .cls holds {value}, too large for a class index"
    if value < -1:
        return None, f"its .cls holds {value}: class indices are 0 or more (-1 marks an unlabelled sample)"
    return value, None


@dataclass(frozen=True)
class Entry:
    """Where a sample's image is: shard number and member in the local file."""

    shard: int
    member: Any  # tarindex.Member
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
                raise DataUnavailable(f"shard '{shard}' cannot be read ({exc.strerror or type(exc).__name__}): "
                                      "check that it is readable, then run the same command again") from None
            digest.update(f"{Path(shard).name}\n".encode("utf-8", "surrogateescape"))
            digest.update("\n".join(index.digest_items()).encode("utf-8", "surrogateescape"))
            samples, loose = group_samples(index.members)
            if index.damage or index.unterminated:
                samples = self._whole(shard, index, samples)
            samples = [s for s in samples if self._named(shard, s)]
            scattered = [s.key for s in samples if not s.adjacent]
            if scattered:
                self._warn(shard, None, f"the members of {len(scattered)} key(s) are not adjacent (first "
                           f"'{scattered[0]}'); they are grouped by key, which WebDataset's sequential reader "
                           "would not do")
            if loose or index.others:
                self._warn(shard, None, f"{loose + index.others} member(s) belong to no sample (no extension, "
                           "'__x__' names WebDataset skips, or not a regular file) and are not read")
            found.extend((number, s) for s in samples)
            meter.update()
        meter.close()
        self._keep(found)
        self._digest = digest.hexdigest()
        self.identity = {"kind": "wds", "spec": spec, "layout": layout, "split": split,
                         "shards": [s if "://" in s else str(Path(s).resolve()) for s in shards]}

    def _whole(self, shard: str, index: Any, samples: list[Any]) -> list[Any]:
        """The samples of a shard cut short (or without its end-of-archive blocks, the shape of a
        download cut at a block boundary) that are whole: every member in the file, and not the
        sample of the last member, whose other members may have followed it past the cut. The
        shard is recorded as cut short."""
        from .tarindex import split_name

        last = split_name(index.members[-1].name) if index.members else None
        whole = [s for s in samples if all(m.offset + m.stored <= index.size for m in s.members.values())
                 and (last is None or s.key != last[0])]
        if index.damage:
            where = f"is cut short or damaged: {index.damage}"
        else:
            after = f" after member '{shown(index.members[-1].name)}'" if index.members else ""
            where = (f"is cut short: it ends at byte {index.size} without tar's end-of-archive blocks{after} "
                     "(an interrupted download?)")
        self._refuse(shard, None, f"{where}; {len(whole)} whole sample(s) before it are kept with --skip-bad, "
                     "else fetch the shard again")
        return whole

    def _named(self, shard: str, sample: Any) -> bool:
        """Whether the sample's member names can be kept exactly as its key; else it is refused."""
        for member in sample.members.values():
            why = bad_name(member.name)
            if why is not None:
                self._refuse(shard, shown(sample.key), f"its member name '{shown(member.name)}' {why}; the sample "
                             "is left out with --skip-bad")
                return False
        return True

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
        self._invalid: dict[int, Problem] = {}
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
            self._entries.append(Entry(number, member, image) if member else None)
            if reason is not None:
                self._invalidate(row, shard, sample.key, reason)
        self.keys = keys
        self.labels = np.asarray(labels, np.int32)

    def _invalidate(self, row: int, shard: str, key: str, reason: str) -> None:
        """Make the row invalid for ``reason``: one ``Problem``, which the manifest lists and whose
        text the row's ``reason`` is (``image`` raises it)."""
        problem = Problem("invalid", shard, key, reason)
        self._invalid[row] = problem
        self.problems.append(problem)

    def check_labels(self, classes: int) -> None:
        """Make every label at or above ``classes`` an invalid sample (called once the class
        names are known)."""
        for row in labels_outside(self.labels, classes).tolist():
            reason = f"its .cls holds {int(self.labels[row])}, outside the {classes} classes [0, {classes})"
            entry = self._entries[row]
            self.labels[row] = -1
            self._invalidate(row, self.shards[entry.shard] if entry else "?", self.keys[row], reason)

    def admit(self, classes: int, skip_bad: bool) -> list[str]:
        """Check the labels against ``classes``, then either raise the first problem that loses or
        invalidates data as one line, or (``skip_bad``, or when there is none) record every problem
        in the identity and report them: a warning each (the first 20), and a line counting the
        rest. Returns those lines as the command line shows them."""
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
            self.identity["problems"] = [p.record() for p in self.problems[:RECORDED_PROBLEMS]]
            self.identity["problem_count"] = len(self.problems)
        warned = [p.line() for p in self.problems if p.severity == "warning"][:20]
        for line in warned:
            log.warning(line)
        lines = [f"warning: {line}" for line in warned]
        if bad:
            counted = {s: sum(p.severity == s for p in bad) for s in ("refuse", "invalid")}
            lines.append(f"--skip-bad: {counted['refuse']} problem(s) left samples out and {counted['invalid']} "
                         f"sample(s) are invalid rows (first: {bad[0].line()}); the store's manifest lists them")
            log.info(lines[-1])
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
        """A member's bytes; an I/O error stops the run (``DataUnavailable``), never an invalid row."""
        try:
            return member.content(self._file(number))
        except OSError as exc:
            raise DataUnavailable(f"shard '{self.shards[number]}' cannot be read ({exc.strerror or type(exc).__name__})"
                                  ": check the disk or mount, then run the same command again (finished shards "
                                  "are kept)") from None

    def _local_copy(self, number: int) -> str:
        """A local path of the shard: itself, or a cached copy of a remote one."""
        shard = self.shards[number]
        if "://" not in shard or shard.startswith("file://"):
            path = shard.removeprefix("file://")
            if not os.path.isfile(path):
                raise InputError(f"shard '{shard}' not found: check the data spec")
            return path
        if number not in self._local:
            self._local[number] = remote_copy(shard)
        return self._local[number]

    def image(self, index: int) -> Image.Image:
        import io

        entry = self._entries[index]
        if index in self._invalid:
            raise self._invalid[index].invalid_row()
        if entry is None:
            raise BadImage("no image")
        shard = self.shards[entry.shard]
        data = self._read(entry.shard, entry.member)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except MemoryError:
            raise
        except Exception as exc:  # the bytes are in memory: whatever fails is the image's own
            why = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise BadImage(f"shard '{shard}', key '{self.keys[index]}' ({entry.extension}): {why}") from exc
        return image

    def fingerprint(self) -> str:
        """Covers every shard's name, size and member table (names, offsets, sizes, header
        checksums), then the rows' keys and labels: a shard rewritten under a partial store changes
        it, so that store is not resumed with mixed content."""
        digest = hashlib.sha256(self._digest.encode())
        digest.update("\n".join(self.keys).encode("utf-8", "surrogateescape"))
        digest.update(self.labels.tobytes())
        return digest.hexdigest()


# what fsspec's ``info`` may say of an object's version, by filesystem: S3's ETag and LastModified,
# GCS's md5Hash, generation and updated, a local or memory file's mtime or creation time
VERSION_FIELDS = ("size", "ETag", "etag", "md5Hash", "generation", "VersionId", "LastModified", "last_modified",
                  "updated", "mtime", "created")


def remote_version(info: dict[str, Any]) -> str:
    """A short hash of what identifies one version of a remote object (its size, ETag and
    modification time, whichever the filesystem reports)."""
    fields = "\n".join(f"{name}={info[name]}" for name in VERSION_FIELDS if info.get(name) is not None)
    return hashlib.sha256(fields.encode()).hexdigest()[:16]


def _why(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _remote_info(fs: Any, inner: str, url: str) -> dict[str, Any]:
    """The remote object's current info (the filesystem's listing cache dropped first)."""
    try:
        fs.invalidate_cache(inner)
        return fs.info(inner)
    except FileNotFoundError:
        raise InputError(f"shard '{url}' not found: check the data spec") from None
    except MemoryError:
        raise
    except Exception as exc:  # OSError, or the filesystem's own network and credential errors
        raise DataUnavailable(f"cannot reach shard '{url}' ({_why(exc)}): check the network and credentials, then "
                              "run the same command again") from None


def remote_copy(url: str) -> str:
    """A local copy of the remote shard at ``url``, current on every call: the copy lies in the
    cache folder under the object's version (``remote_version``), so a shard replaced remotely
    is copied again and a stale copy is never read. The copy is downloaded to a private name
    and renamed into place, so processes copying the same shard at once (torchrun ranks) never
    see each other's partial file, and each ends with the whole one."""
    import secrets
    import shutil

    from .storage import cache_dir, filesystem

    fs, inner = filesystem(url)
    info = _remote_info(fs, inner, url)
    version = remote_version(info)
    folder = cache_dir() / "shards" / hashlib.sha256(url.encode()).hexdigest()[:16]
    target = folder / version / Path(inner).name
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fs.get_file(inner, str(part))
        if remote_version(_remote_info(fs, inner, url)) != version or (
                info.get("size") is not None and part.stat().st_size != info["size"]):
            raise DataUnavailable(f"shard '{url}' changed while it was copied: run the same command again")
        os.replace(part, target)
    except (InputError, MemoryError):
        raise
    except FileNotFoundError:
        raise InputError(f"shard '{url}' not found: check the data spec") from None
    except Exception as exc:  # OSError, or the filesystem's own network and credential errors
        raise DataUnavailable(f"cannot copy shard '{url}' ({_why(exc)}): check the network and the free space of "
                              "the cache folder, then run the same command again") from None
    finally:
        part.unlink(missing_ok=True)
    for old in folder.iterdir():  # copies of the shard's older versions
        if old.name != version and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return str(target)


def open_webdataset(spec: str, rest: str, split: str | None, download: bool, progress: bool = True) -> WdsSource:
    """The ``wds:`` builder: a CLIP_benchmark root (with its class names and templates) or shards."""
    benchmark = clip_benchmark_root(rest, split)
    if benchmark is not None:
        shards, classnames, templates, notes = benchmark
        return WdsSource(spec, shards, classnames, templates, "clip_benchmark", split or "test", notes, progress)
    shards, notes = shard_list(spec, rest)
    return WdsSource(spec, shards, None, None, "shards", split, notes, progress)
