"""An exact index of a tar shard, from the standard library's ``tarfile``.

``index_tar`` reads every header once (PAX and GNU long names, UTF-8 names, in archive order) and
keeps each regular member's full name, data offset, size and header checksum, so a member is read
later with one seek. It also says how the archive ends: whole (data complete, then tar's
end-of-archive blocks), without those blocks (a warning: ``tarfile`` itself reads such a file),
or cut short or damaged (the member or header where the bytes stop), which ``tarfile`` alone
passes over in silence when it happens after the first member.

``group_samples`` turns members into WebDataset samples: a member's key is its name up to the
first dot of its basename and its extension the rest, lower-cased, as WebDataset splits them.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field

BLOCK = 512
END_BLOCKS = 2 * BLOCK  # tar's end-of-archive marker: two zero blocks
# WebDataset's split of a member name into a sample key and an extension (``base_plus_ext``):
# the key runs to the first dot of the basename, and a name that does not match has no sample
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of its data in the file
    size: int
    checksum: int  # of its header (covers name, size, mtime, mode)


@dataclass
class TarIndex:
    path: str
    size: int  # of the file, in bytes
    members: list[Member]
    others: int = 0  # members that are not regular files nor folders (links, devices), not read
    damage: str | None = None  # where the file is cut short or unreadable; complete members are kept
    unterminated: bool = False  # the data is complete but tar's end-of-archive blocks are missing

    def digest_items(self) -> list[str]:
        """What the fingerprint of a source covers of this shard: its size and every member's
        name, offset, size and header checksum."""
        return [f"{self.size}"] + [f"{m.name}\0{m.offset}\0{m.size}\0{m.checksum}" for m in self.members]


class NotATar(Exception):
    """The file is not an uncompressed tar archive at all."""


def index_tar(path: str) -> TarIndex:
    """Index the tar at ``path`` (see the module docstring); raises ``NotATar`` when its first
    header is not a tar header."""
    size = os.path.getsize(path)
    members: list[Member] = []
    others = 0
    stopped: str | None = None
    with open(path, "rb") as handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.ReadError as exc:
            raise NotATar(str(exc) or "not a tar archive") from None
        while True:
            try:
                info = archive.next()
            except tarfile.ReadError as exc:  # a header cut short, or data running past the end
                stopped = str(exc)
                break
            if info is None:
                break
            if info.isreg():
                members.append(Member(info.name, info.offset_data, info.size, info.chksum))
            elif not info.isdir():
                others += 1
        end = archive.offset  # where the header after the last member starts (or would)
        index = TarIndex(path, size, members, others)
        cut = next((m for m in members if m.offset + m.size > size), None)
        if cut is not None:
            index.damage = (f"the file ends at byte {size}, inside member '{cut.name}' "
                            f"({max(0, size - cut.offset)} of its {cut.size} bytes present)")
            return index
        handle.seek(end)
        tail = handle.read(END_BLOCKS)
    last = f"after member '{members[-1].name}'" if members else "before any member"
    if end >= size or (tail and not tail.strip(b"\0") and len(tail) < END_BLOCKS):
        index.unterminated = True
    elif tail.strip(b"\0"):
        what = "a header cut short" if size - end < BLOCK else "a header tar cannot read"
        index.damage = f"the file holds {what} at byte {end}, {last}" + (f" ({stopped})" if stopped else "")
    return index


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as WebDataset splits it (the extension lower-cased, as
    its ``group_by_keys`` does), or None for a name WebDataset puts in no sample."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


@dataclass
class Sample:
    key: str
    members: dict[str, Member] = field(default_factory=dict)  # extension -> member
    first: int = 0  # position of its first member in the archive
    adjacent: bool = True  # its members follow one another in the archive
    repeated: list[str] = field(default_factory=list)  # extensions seen twice under this key


def group_samples(members: list[Member]) -> tuple[list[Sample], int]:
    """The samples of an archive's members, in the order of their first member, and the number of
    members without an extension (not part of any sample)."""
    samples: dict[str, Sample] = {}
    previous: str | None = None
    loose = 0
    for position, member in enumerate(members):
        split = split_name(member.name)
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
