"""An exact index of a tar shard, from the standard library's ``tarfile``.

``index_tar`` reads every header once (PAX and GNU long names, UTF-8 names, in archive order) and
keeps each regular member's full name, data offset, size and header checksum, so a member is read
later with one seek; a sparse member (``tar --sparse``, GNU or PAX format) keeps ``tarfile``'s
sparse map, by which ``Member.content`` puts its data back in place between the holes. Archives
written one after another into one file (``cat a.tar b.tar``) are read one after another, as
``tar --ignore-zeros`` reads them. The index also says how the file ends: whole (data complete,
then tar's end-of-archive blocks), without those blocks (the usual shape of an interrupted
download cut at a block boundary), or cut short or damaged (the member or header where the bytes
stop), which ``tarfile`` alone passes over in silence when it happens after the first member.

``group_samples`` turns members into WebDataset samples: a member's key is its name up to the
first dot of its basename and its extension the rest, lower-cased, as WebDataset splits them;
members WebDataset skips (``__x__`` metadata names and folders) belong to no sample.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK = 512
END_BLOCKS = 2 * BLOCK  # tar's end-of-archive marker: two zero blocks
# WebDataset's split of a member name into a sample key and an extension (``base_plus_ext``):
# the key runs to the first dot of the basename, and a name that does not match has no sample
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# what WebDataset's tar reader skips before grouping (``tar_file_iterator``'s ``skip_meta`` and its
# ``__x__`` test): a name whose first path component is ``__x__``
_WDS_META = re.compile(r"__[^/]*__($|/)")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of its data in the file
    size: int  # of its content
    checksum: int  # of its header (covers name, size, mtime, mode)
    sparse: tuple[tuple[int, int], ...] | None = None  # a sparse member's (offset, length) chunks

    @property
    def stored(self) -> int:
        """Bytes of the member in the file: its content, or a sparse member's chunks alone."""
        return self.size if self.sparse is None else sum(length for _, length in self.sparse)

    def content(self, handle: BinaryIO) -> bytes:
        """The member's bytes read from ``handle`` (the shard); a sparse member's chunks, stored
        one after another from ``offset``, are put at their places and the holes are zeros."""
        handle.seek(self.offset)
        if self.sparse is None:
            return handle.read(self.size)
        data = bytearray(self.size)
        for start, length in self.sparse:
            data[start : start + length] = handle.read(length)
        return bytes(data)


@dataclass
class TarIndex:
    path: str
    size: int  # of the file, in bytes
    members: list[Member]
    others: int = 0  # members that are not regular files nor folders (links, devices), not read
    damage: str | None = None  # where the file is cut short or unreadable; complete members are kept
    unterminated: bool = False  # tar's end-of-archive blocks are missing: the file may have been cut there
    archives: int = 1  # tar archives found one after another in the file

    def digest_items(self) -> list[str]:
        """What the fingerprint of a source covers of this shard: its size and every member's
        name, offset, size and header checksum (and a sparse member's map)."""
        return [f"{self.size}"] + [f"{m.name}\0{m.offset}\0{m.size}\0{m.checksum}"
                                   + (f"\0{m.sparse}" if m.sparse is not None else "") for m in self.members]


class NotATar(Exception):
    """The file is not an uncompressed tar archive at all."""


def _first_data(handle: BinaryIO, start: int, size: int) -> int | None:
    """The offset of the first block at or after ``start`` that is not all zeros, or None."""
    handle.seek(start)
    position = start
    while position < size:
        chunk = handle.read(1 << 16)
        if not chunk:
            break
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return start + (position - start + len(chunk) - len(stripped)) // BLOCK * BLOCK
        position += len(chunk)
    return None


def _read_archive(handle: BinaryIO, start: int, index: TarIndex) -> tuple[int, str | None]:
    """Index the archive starting at ``start`` into ``index``; return where its members end (the
    header after the last one starts, or would) and the error that stopped ``tarfile``, if any."""
    handle.seek(start)
    try:
        archive = tarfile.open(fileobj=handle, mode="r:")
    except tarfile.ReadError as exc:
        raise NotATar(str(exc) or "not a tar archive") from None
    stopped = None
    while True:
        try:
            info = archive.next()
        except tarfile.ReadError as exc:  # a header cut short, or data running past the end
            stopped = str(exc)
            break
        if info is None:
            break
        if info.isreg():
            sparse = tuple((int(a), int(b)) for a, b in info.sparse) if info.sparse is not None else None
            index.members.append(Member(info.name, info.offset_data, info.size, info.chksum, sparse))
        elif not info.isdir():
            index.others += 1
    return archive.offset, stopped


def index_tar(path: str) -> TarIndex:
    """Index the tar at ``path`` (see the module docstring); raises ``NotATar`` when its first
    header is not a tar header."""
    size = os.path.getsize(path)
    index = TarIndex(path, size, [])
    with open(path, "rb") as handle:
        end, stopped = _read_archive(handle, 0, index)
        while True:
            cut = next((m for m in index.members if m.offset + m.stored > size), None)
            if cut is not None:
                present = max(0, size - cut.offset)
                index.damage = (f"the file ends at byte {size}, inside member '{cut.name}' "
                                f"({present} of its {cut.stored} stored bytes present)")
                return index
            last = f"after member '{index.members[-1].name}'" if index.members else "before any member"
            data = _first_data(handle, end, size)
            if data is None:  # zeros, or nothing, to the end of the file
                index.unterminated = size - end < END_BLOCKS
                return index
            if data == end or stopped:  # tarfile stopped at a block that is not a header
                what = "a header cut short" if size - data < BLOCK else "a header tar cannot read"
                index.damage = f"the file holds {what} at byte {data}, {last}" + (f" ({stopped})" if stopped else "")
                return index
            try:  # data after the end-of-archive: another archive, or damage
                end, stopped = _read_archive(handle, data, index)
            except NotATar:
                end, stopped = data, None
            if end == data:  # not even one header there
                index.damage = f"the file holds data that is not a tar header at byte {data}, {last}"
                return index
            index.archives += 1


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as WebDataset splits it (the extension lower-cased, as
    its ``group_by_keys`` does), or None for a name WebDataset puts in no sample."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def webdataset_skips(name: str) -> bool:
    """Whether WebDataset's tar reader skips the member before grouping: ``__x__`` at the top, or
    anything under a top-level ``__x__/`` folder."""
    return bool(_WDS_META.match(name)) or ("/" not in name and name.startswith("__") and name.endswith("__"))


@dataclass
class Sample:
    key: str
    members: dict[str, Member] = field(default_factory=dict)  # extension -> member
    first: int = 0  # position of its first member in the archive
    adjacent: bool = True  # its members follow one another in the archive
    repeated: list[str] = field(default_factory=list)  # extensions seen twice under this key


def group_samples(members: list[Member]) -> tuple[list[Sample], int]:
    """The samples of an archive's members, in the order of their first member, and the number of
    members in no sample (without an extension, or skipped as WebDataset skips them)."""
    samples: dict[str, Sample] = {}
    previous: str | None = None
    loose = 0
    for position, member in enumerate(members):
        split = None if webdataset_skips(member.name) else split_name(member.name)
        if split is None:
            loose += 1
            previous = None
            continue
        key, extension = split
        sample = samples.get(key)
        if sample is None:
            sample = samples[key] = Sample(key, first=position)
        elif previous != key:
            sample.adjacent = False
        if extension in sample.members:
            sample.repeated.append(extension)
        else:
            sample.members[extension] = member
        previous = key
    return list(samples.values()), loose
