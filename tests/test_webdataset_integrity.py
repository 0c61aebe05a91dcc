"""``wds:`` input that never lies: every sample read under its own key with its own label, or one
line naming the shard and the key. The shards are built here with the standard library's
``tarfile`` (PAX and GNU formats, any member order) and WebDataset's ``TarWriter``, from the
repository's real CIFAR-10 test JPEGs; every store is checked row by row against what was written."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupt_writes_after
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lpclip_cache.errors import InputError, StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import FeatureStore

CIFAR = Path(__file__).parent / "data" / "cifar10" / "test"
CLASSES = sorted(p.name for p in CIFAR.iterdir())
JPEGS = [path for name in CLASSES for path in sorted((CIFAR / name).glob("*.jpg"))[:4]]


def tar_of(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A tar at ``path`` holding ``members`` (name, bytes) in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if "\0" in name and fmt == tarfile.PAX_FORMAT:  # a ustar name field would end at the NUL
                info.pax_headers = {"path": name}
            info.size = len(data)
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return path


def samples(keys: list[str], labels: list[int | bytes], start: int = 0) -> list[tuple[str, bytes]]:
    """Members ``KEY.jpg`` + ``KEY.cls`` for each key, images taken in turn from the fixture."""
    members = []
    for number, (key, label) in enumerate(zip(keys, labels)):
        members.append((f"{key}.jpg", JPEGS[(start + number) % len(JPEGS)].read_bytes()))
        members.append((f"{key}.cls", label if isinstance(label, bytes) else str(label).encode()))
    return members


def names_file(folder: Path, count: int = 10) -> Path:
    path = folder / "names.txt"
    path.write_text("\n".join(CLASSES[:count]) + "\n")
    return path


def settings_for(data: str, out: Path, checkpoint: Path, **extra) -> ExtractConfig:
    base = dict(data=data, out=str(out), model="test-tiny", pretrained=str(checkpoint), weak_views=0,
                strong_views=0, shard_size=8, batch_size=16, num_workers=0, progress=False)
    return ExtractConfig(**{**base, **extra})


def rows(store: Path) -> dict[str, int]:
    """The store's key -> label map (every key once)."""
    opened = FeatureStore(store)
    keys = [str(k) for k in opened.read("keys")]
    assert len(set(keys)) == len(keys), keys
    return dict(zip(keys, opened.labels().tolist()))


class Ran:
    """A command's exit status and streams, run in this process as ``lpclip-cache`` would run it."""

    def __init__(self, *args: object) -> None:
        from click.testing import CliRunner

        from lpclip_cache.cli import main

        result = CliRunner().invoke(main, [str(a) for a in args])
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def run_cli(*args: object) -> Ran:
    return Ran(*args)


def extract_cli(tmp_path: Path, data: str, checkpoint: Path, *extra: str, out: str = "s.zarr"):
    return run_cli("extract", "--data", data, "--classnames", str(names_file(tmp_path)), "--model", "test-tiny",
                   "--pretrained", str(checkpoint), "--workers", "0", "--weak-views", "0", "--strong-views", "0",
                   "--quiet", "--out", str(tmp_path / out), *extra)


def one_line(result, code: int, *parts: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for part in parts:
        assert part in errors[0], (part, errors[0])


# 1. The index is exact


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_non_ascii_and_long_names_are_each_their_own_sample(fmt, tiny_checkpoint, tmp_path):
    long_key = "folder/" + "a-very-long-sample-name-" * 6  # 151 characters: beyond ustar's 100
    keys = ["café_1", "cafè_1", "plain_2", "plain_3", long_key, "ünïcödé/日本_5"]
    tar_of(tmp_path / "s" / "0.tar", samples(keys, [0, 1, 2, 3, 4, 5]), fmt)
    extract(settings_for(f"wds:{tmp_path / 's'}", tmp_path / "s.zarr", tiny_checkpoint,
                         classnames=str(names_file(tmp_path))))
    assert rows(tmp_path / "s.zarr") == dict(zip(keys, range(6)))


def test_webdatasets_own_writer_with_long_keys(tiny_checkpoint, tmp_path):
    import webdataset as wds

    keys = [f"{'x' * 120}-{n}" for n in range(5)]
    (tmp_path / "s").mkdir()
    with wds.TarWriter(str(tmp_path / "s" / "0.tar")) as sink:
        for n, key in enumerate(keys):
            sink.write({"__key__": key, "jpg": JPEGS[n].read_bytes(), "cls": str(9 - n).encode()})
    extract(settings_for(f"wds:{tmp_path / 's'}", tmp_path / "s.zarr", tiny_checkpoint,
                         classnames=str(names_file(tmp_path))))
    assert rows(tmp_path / "s.zarr") == {key: 9 - n for n, key in enumerate(keys)}


def test_members_out_of_order_are_grouped_by_key_with_a_warning(tiny_checkpoint, tmp_path):
    """``tar cf x.tar *.jpg *.cls``: every image first, then every label."""
    members = samples([f"k{n}" for n in range(6)], [5, 4, 3, 2, 1, 0])
    tar_of(tmp_path / "s" / "0.tar", members[0::2] + members[1::2])
    result = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    assert "not adjacent" in result.stderr and "'k0'" in result.stderr and "0.tar" in result.stderr
    assert rows(tmp_path / "s.zarr") == {f"k{n}": 5 - n for n in range(6)}


def test_a_key_repeated_in_a_shard_or_across_shards_never_shifts_another(tiny_checkpoint, tmp_path):
    tar_of(tmp_path / "s" / "0.tar", samples(["a", "b", "a", "c"], [0, 1, 2, 3]))
    tar_of(tmp_path / "s" / "1.tar", samples(["d", "c", "e"], [4, 5, 6]))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "'a'", "appears 2 times", "--skip-bad")
    assert not (tmp_path / "s.zarr").exists()
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "--skip-bad: 3 problem(s) left samples out" in skipped.stderr
    assert rows(tmp_path / "s.zarr") == {"b": 1, "d": 4, "e": 6}
    problems = FeatureStore(tmp_path / "s.zarr").manifest["dataset"]["problems"]
    assert sorted((Path(p["shard"]).name, p["key"]) for p in problems if p["severity"] == "refuse") == [
        ("0.tar", "a"), ("0.tar", "c"), ("1.tar", "c")]


# 2. A truncated shard


def three_shards(folder: Path) -> list[Path]:
    return [tar_of(folder / f"{n}.tar", samples([f"s{n}-{i:02d}" for i in range(20)], [i % 10 for i in range(20)],
                                              start=n * 20)) for n in range(3)]


def test_a_shard_cut_short_is_one_line_or_keeps_its_complete_samples(tiny_checkpoint, tmp_path):
    shards = three_shards(tmp_path / "s")
    with tarfile.open(shards[1]) as archive:
        inside = archive.getmembers()[21]  # the image of the eleventh sample
    cut = inside.offset_data + inside.size // 2
    shards[1].write_bytes(shards[1].read_bytes()[:cut])
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "1.tar", "cut short", f"ends at byte {cut}",
             f"inside member '{inside.name}'", "fetch the shard again", "--skip-bad")
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    kept = rows(tmp_path / "s.zarr")
    # the ten samples before the cut are whole; the eleventh lost half its image
    assert sorted(k for k in kept if k.startswith("s1-")) == [f"s1-{i:02d}" for i in range(10)]
    assert kept == {k: int(k[-2:]) % 10 for k in kept} and len(kept) == 50
    info = run_cli("info", str(tmp_path / "s.zarr"))
    verify = run_cli("verify", str(tmp_path / "s.zarr"))
    assert verify.returncode == 0, verify.stderr
    for shown in (info.stdout, verify.stdout):
        assert "1.tar" in shown and "cut short" in shown, shown


def test_a_shard_without_end_blocks_is_cut_short_or_keeps_its_whole_samples(tiny_checkpoint, tmp_path):
    """An interrupted download cut at a block boundary: the second of three shards of 20 cut at
    about half its size, after the image of a sample and before its label. Its tail samples are
    gone and the last one read may have lost members: refused like a cut shard, or with
    --skip-bad its whole samples are kept and the shard is listed as cut short."""
    shards = three_shards(tmp_path / "s")
    with tarfile.open(shards[1]) as archive:
        image = archive.getmembers()[20]  # s1-10.jpg; s1-10.cls follows it
    boundary = image.offset_data + 512 * ((image.size + 511) // 512)
    shards[1].write_bytes(shards[1].read_bytes()[:boundary])
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "1.tar", "cut short", "end-of-archive",
             "fetch the shard again", "--skip-bad")
    assert not (tmp_path / "s.zarr").exists()
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    kept = rows(tmp_path / "s.zarr")
    assert sorted(k for k in kept if k.startswith("s1-")) == [f"s1-{i:02d}" for i in range(10)]
    assert kept == {k: int(k[-2:]) % 10 for k in kept} and len(kept) == 50  # s1-10 lost its label: left out
    for command in ("info", "verify"):
        shown = run_cli(command, str(tmp_path / "s.zarr"))
        assert shown.returncode == 0, shown.stderr
        assert "1.tar" in shown.stdout and "cut short" in shown.stdout, shown.stdout


def test_concatenated_tars_are_read_whole(tiny_checkpoint, tmp_path):
    """``cat a.tar b.tar > 0.tar``: both archives' samples, as ``tar --ignore-zeros`` reads them."""
    first = tar_of(tmp_path / "parts" / "a.tar", samples(["a0", "a1", "a2"], [0, 1, 2]))
    second = tar_of(tmp_path / "parts" / "b.tar", samples(["b0", "b1"], [3, 4], start=3), tarfile.GNU_FORMAT)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "0.tar").write_bytes(first.read_bytes() + second.read_bytes())
    result = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "s.zarr") == {"a0": 0, "a1": 1, "a2": 2, "b0": 3, "b1": 4}


def test_junk_after_the_end_of_archive_is_damage(tmp_path):
    from lpclip_cache.tarindex import index_tar

    shard = tar_of(tmp_path / "0.tar", samples(["a"], [0]))
    shard.write_bytes(shard.read_bytes() + b"\x01" * 512)
    assert "not a tar header" in index_tar(str(shard)).damage


def test_a_file_that_is_not_a_tar_is_one_line(tiny_checkpoint, tmp_path):
    three_shards(tmp_path / "s")
    (tmp_path / "s" / "1.tar").write_bytes(b"<html>404 not found</html>" * 40)
    one_line(extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint), 3, "1.tar",
             "cannot be read as a tar file")
    skipped = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert sorted({k[:3] for k in rows(tmp_path / "s.zarr")}) == ["s0-", "s2-"]


def test_a_sample_without_an_image_names_shard_and_key(tiny_checkpoint, tmp_path):
    tar_of(tmp_path / "s" / "0.tar", samples(["a"], [1]) + [("b.cls", b"2"), ("b.txt", b"a caption")]
           + samples(["c"], [3]))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "'b'", "has no image", "cls, txt")
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "could not be decoded" not in skipped.stderr and "  b: has no image" in skipped.stderr
    store = FeatureStore(tmp_path / "s.zarr")
    assert dict(zip(store.read("keys").tolist(), store.read("reason").tolist()))["b"].startswith("has no image")
    assert dict(zip(store.read("keys").tolist(), store.read("valid").tolist())) == {"a": True, "b": False, "c": True}


def test_an_invalid_rows_reason_is_the_problem_the_manifest_lists(tmp_path):
    """One record says why a row is invalid: the reason its image gives (the store's ``reason``
    and ``invalid``) is the text of the problem the manifest lists, for a sample without an image
    and for a label beyond the classes alike."""
    from lpclip_cache.data import open_source
    from lpclip_cache.decode import DecodedDataset

    tar_of(tmp_path / "s" / "0.tar", samples(["a"], [1]) + [("b.cls", b"0"), ("b.txt", b"x")] + samples(["c"], [7]))
    source = open_source(f"wds:{tmp_path / 's'}")
    source.admit(3, skip_bad=True)
    recorded = {p["key"]: p["problem"] for p in source.identity["problems"] if p["severity"] == "invalid"}
    assert set(recorded) == {"b", "c"} and "outside the 3 classes" in recorded["c"]
    decoded = DecodedDataset(source, (32, 32), "shortest", "bicubic")
    for row, key in enumerate(source.keys):
        _, _, ok, reason = decoded[row]
        assert (ok, reason) == ((True, "") if key == "a" else (False, recorded[key]))


# 3. Labels are checked where they are read


@pytest.mark.parametrize("value, reason", [
    (b"12", "outside the 10 classes"),
    (b"-3", "class indices are 0 or more"),
    (b"1_0", "not a plain decimal class index"),
    ("٣".encode(), "not a plain decimal class index"),
    (b"99999999999", "not a plain decimal class index"),
    (b"2147483648", "too large for a class index"),  # 10 digits, beyond int32
    (b"\xff\xfe", "not UTF-8"),
    (b"dog", "not a plain decimal class index"),
])
def test_a_cls_that_is_not_a_class_index_names_shard_and_key(value, reason, tiny_checkpoint, tmp_path):
    tar_of(tmp_path / "s" / "0.tar", samples(["a", "b", "c"], [1, value, 2]))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "'b'", reason)
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    # the real reason, not "could not be decoded" nor an exception's name
    assert "could not be decoded" not in skipped.stderr and "ValueError" not in skipped.stderr
    assert "  b: its .cls " in skipped.stderr and reason in skipped.stderr
    store = FeatureStore(tmp_path / "s.zarr")
    assert rows(tmp_path / "s.zarr") == {"a": 1, "b": -1, "c": 2}
    assert dict(zip(store.read("keys").tolist(), store.read("valid").tolist())) == {"a": True, "b": False, "c": True}
    assert store.meta["invalid"][0]["reason"].startswith("its .cls ") and store.meta["invalid"][0]["key"] == "b"
    assert reason in store.meta["invalid"][0]["reason"]
    assert run_cli("verify", str(tmp_path / "s.zarr")).returncode == 0


def test_minus_one_and_a_missing_cls_are_unlabelled(tiny_checkpoint, tmp_path):
    members = samples(["a", "b"], [b"-1", b" 7\n"]) + [("c.jpg", JPEGS[5].read_bytes())]
    tar_of(tmp_path / "s" / "0.tar", members)
    extract(settings_for(f"wds:{tmp_path / 's'}", tmp_path / "s.zarr", tiny_checkpoint,
                         classnames=str(names_file(tmp_path))))
    assert rows(tmp_path / "s.zarr") == {"a": -1, "b": 7, "c": -1}


# 4. A CLIP_benchmark root's own files go through the loaders


def root(folder: Path, classnames: bytes, templates: bytes | None = b"a photo of a {c}.\n") -> Path:
    tar_of(folder / "test" / "0.tar", samples([f"k{n}" for n in range(4)], [0, 1, 2, 3]))
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_bytes(classnames)
    if templates is not None:
        (folder / "zeroshot_classification_templates.txt").write_bytes(templates)
    return folder


@pytest.mark.parametrize("classnames, templates, parts", [
    (b"a\nb\n#c\nd\n", None, ["classnames.txt, line 3", "starts with '#'", "class 2"]),
    (b"a\n\nb\nc\nd\n", None, ["classnames.txt, line 2", "blank line", "shift"]),
    (b"a\nb\na\nd\n", None, ["classnames.txt, line 3", "duplicate class name 'a'"]),
    ("caf\u00e9\nb\nc\nd\n".encode("latin-1"), None, ["classnames.txt is not UTF-8"]),
    (b"a\nb\nc\nd\n", b"a photo.\n", ["zeroshot_classification_templates.txt, line 1", "no '{}' placeholder"]),
    (b"a\nb\nc\nd\n", b"a {x} of {c}.\n", ["zeroshot_classification_templates.txt, line 1", "not a valid format"]),
])
def test_a_roots_sloppy_files_are_one_line(classnames, templates, parts, tmp_path):
    result = run_cli("extract", "--data", f"wds:{root(tmp_path / 'cb', classnames, templates or b'a {c}.')}",
                     "--model", "test-tiny", "--pretrained", "none", "--out", str(tmp_path / "x.zarr"))
    one_line(result, 3, *parts)
    assert not (tmp_path / "x.zarr").exists()


def test_a_roots_bom_and_trailing_blank_lines_are_read_as_clip_benchmark_does(tmp_path):
    from lpclip_cache.data import open_source

    folder = root(tmp_path / "cb", b"\xef\xbb\xbfa\r\nb\nc\nd\n\n\n", b"a {c}.\n{c}, a photo.\n")
    source = open_source(f"wds:{folder}")
    assert source.classnames == ["a", "b", "c", "d"] and source.templates == ["a {}.", "{}, a photo."]


# 5. Resume cannot mix content


def test_a_shard_changed_under_a_partial_store_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from lpclip_cache.errors import Interrupted

    shards = three_shards(tmp_path / "s")
    spec = f"wds:{tmp_path / 's'}"
    config = settings_for(spec, tmp_path / "s.zarr", tiny_checkpoint, classnames=str(names_file(tmp_path)))
    restore = interrupt_writes_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        extract(config)
    restore()
    # one image of the first shard (already written) replaced by another of the same label
    members = samples([f"s0-{i:02d}" for i in range(20)], [i % 10 for i in range(20)])
    members[2] = ("s0-01.jpg", JPEGS[30].read_bytes())
    tar_of(shards[0], members)
    with pytest.raises(StoreError, match="made with another configuration .*dataset"):
        extract(config)
    assert FeatureStore(tmp_path / "s.zarr", require_complete=False).state.kind != "complete"


def test_the_fingerprint_sees_an_image_rewritten_with_the_same_size(tmp_path):
    """An image replaced by other bytes of the same size, the shard written again: names, sizes
    and offsets are unchanged, the member's header (its mtime) is not, and neither is the
    fingerprint. (Bytes swapped in place with the header untouched would not be seen: the
    fingerprint reads headers, not data; docs/reliability.md says so.)"""
    from lpclip_cache.data import open_source

    three_shards(tmp_path / "s")
    before = open_source(f"wds:{tmp_path / 's'}").fingerprint()
    members = samples([f"s1-{i:02d}" for i in range(20)], [i % 10 for i in range(20)], start=20)
    members[0] = ("s1-00.jpg", bytes(reversed(members[0][1])))
    with tarfile.open(tmp_path / "s" / "1.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        for number, (name, data) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000 + (number == 0)
            archive.addfile(info, io.BytesIO(data))
    assert open_source(f"wds:{tmp_path / 's'}").fingerprint() != before


# 6. Specs


def test_a_brace_typo_is_one_line(tmp_path):
    result = run_cli("extract", "--data", f"wds:{tmp_path}/in/{{0..2.tar", "--out", str(tmp_path / "x.zarr"))
    one_line(result, 3, "brace pattern", "unbalanced")


def test_hidden_appledouble_and_other_files_are_skipped_and_counted(tiny_checkpoint, tmp_path):
    three_shards(tmp_path / "s")
    for name in (".x.tar", "._0.tar", "README.md", "0.tar.idx"):
        (tmp_path / "s" / name).write_bytes(b"\0" * 4096)
    (tmp_path / "s" / "2.tar").rename(tmp_path / "s" / "2.TAR")
    result = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    assert "4 file(s) skipped" in result.stderr
    assert len(rows(tmp_path / "s.zarr")) == 60  # 2.TAR is a shard


@pytest.mark.parametrize("count, expected", [("0", "not a positive number"), ("-1", "not a positive number"),
                                             ("two", "not a positive number")])
def test_a_bad_nshards_is_one_line(count, expected, tmp_path):
    folder = root(tmp_path / "cb", b"a\nb\nc\nd\n")
    (folder / "test" / "nshards.txt").write_text(count)
    one_line(run_cli("extract", "--data", f"wds:{folder}", "--out", str(tmp_path / "x.zarr")), 3,
             "nshards.txt", expected)


def test_more_shards_than_nshards_is_a_warning(tiny_checkpoint, tmp_path):
    folder = root(tmp_path / "cb", b"a\nb\nc\nd\n")
    tar_of(folder / "test" / "1.tar", samples(["z"], [0]))
    result = run_cli("extract", "--data", f"wds:{folder}", "--model", "test-tiny", "--pretrained",
                     str(tiny_checkpoint), "--workers", "0", "--weak-views", "0", "--strong-views", "0", "--quiet",
                     "--out", str(tmp_path / "x.zarr"))
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "nshards.txt says 1" in result.stderr and "1.tar" in result.stderr
    assert rows(tmp_path / "x.zarr") == {f"k{n}": n for n in range(4)}


# 7. Random valid tars: the store's key -> label map is the written one


# any character but the separators, control characters and NUL included: those keys are refused
name_chars = st.characters(codec="utf-8", exclude_characters="./", exclude_categories=("Cs",))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(keys=st.lists(st.text(name_chars, min_size=1, max_size=130).map(str.strip).filter(bool), min_size=1,
                     max_size=12, unique=True),
       shuffle=st.randoms(use_true_random=False), fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
       folder=st.booleans())
@example(keys=["x\0", "x", "tab\there", "line\nbreak"], shuffle=random.Random(0), fmt=tarfile.PAX_FORMAT, folder=False)
def test_random_valid_tars_give_exactly_the_written_labels(keys, shuffle, fmt, folder, tiny_checkpoint,
                                                           tmp_path_factory):
    import unicodedata

    from lpclip_cache.webdata import shown

    assume(fmt == tarfile.PAX_FORMAT or not any("\0" in k for k in keys))  # GNU names end at a NUL
    tmp_path = tmp_path_factory.mktemp("random")
    keys = [f"dir/{k}" if folder else k for k in keys]
    labels = [shuffle.randrange(-1, 10) for _ in keys]
    members = samples(keys, labels)
    shuffle.shuffle(members)  # any member order: grouping by key keeps every label on its image
    tar_of(tmp_path / "s" / "0.tar", members, fmt)
    control = {k for k in keys if any(unicodedata.category(c) == "Cc" for c in k)}
    if len(control) == len(keys):
        keys, labels = keys + ["plain"], labels + [0]  # one sample the store can hold
        tar_of(tmp_path / "s" / "1.tar", samples(["plain"], [0]))
    extract(settings_for(f"wds:{tmp_path / 's'}", tmp_path / "s.zarr", tiny_checkpoint, skip_bad=bool(control),
                         classnames=str(names_file(tmp_path))))
    assert rows(tmp_path / "s.zarr") == {k: v for k, v in zip(keys, labels) if k not in control}
    store = FeatureStore(tmp_path / "s.zarr")
    assert store.read("valid").all()
    refused = {p["key"] for p in store.manifest["dataset"].get("problems", []) if p["severity"] == "refuse"}
    assert refused == {shown(k) for k in control}


def test_the_manifest_problem_list_is_json(tmp_path):
    """What the manifest records of the data's problems is plain JSON (shard, key, severity, problem)."""
    from lpclip_cache.data import open_source

    tar_of(tmp_path / "s" / "0.tar", samples(["a", "a", "b"], [0, 1, 2]))
    source = open_source(f"wds:{tmp_path / 's'}")
    with pytest.raises(InputError, match="appears 2 times"):
        source.admit(10, skip_bad=False)
    lines = source.admit(10, skip_bad=True)
    assert any("--skip-bad" in line for line in lines)
    recorded = json.loads(json.dumps(source.identity["problems"]))
    assert {p["key"] for p in recorded} == {"a"} and source.keys == ["b"]


# 8. Member names and members read exactly


def test_a_nul_in_a_key_is_refused_not_merged(tiny_checkpoint, tmp_path):
    """A PAX name ``x\\0.jpg`` beside ``x.jpg``: numpy's strings would drop the NUL and give two
    rows keyed ``x``. The sample with the NUL is refused in one line, or left out with --skip-bad."""
    tar_of(tmp_path / "s" / "0.tar", samples(["x", "x\0", "y"], [1, 2, 3]))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "'x\\x00'", "control character")
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert rows(tmp_path / "s.zarr") == {"x": 1, "y": 3}
    problems = FeatureStore(tmp_path / "s.zarr").manifest["dataset"]["problems"]
    assert [(p["key"], p["severity"]) for p in problems] == [("x\\x00", "refuse")]


def test_a_member_name_that_is_not_utf8_is_one_line(tiny_checkpoint, tmp_path):
    """GNU tar stores a Latin-1 ``café.jpg`` as its raw bytes; ``tarfile`` keeps them as
    surrogate escapes, which no store key (and no fingerprint) can encode."""
    path = tmp_path / "s" / "0.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
        for name, data in samples(["café", "plain"], [1, 2]):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "caf\\xe9", "not valid UTF-8")
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert rows(tmp_path / "s.zarr") == {"plain": 2}


def sparse_png(path: Path) -> bytes:
    """A PNG stored uncompressed (long runs of zero bytes), written with real holes where a
    4 KiB block is all zeros, as ``tar --sparse`` finds them; returns its bytes."""
    from PIL import Image

    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[10:20, 10:20] = 255
    pixels[100:120, 50:90] = (0, 200, 30)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    data = buffer.getvalue()
    with open(path, "wb") as handle:
        for start in range(0, len(data), 4096):
            if data[start : start + 4096].strip(b"\0"):
                handle.seek(start)
                handle.write(data[start : start + 4096])
        handle.truncate(len(data))
    return data


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
def test_sparse_members_of_gnu_tar_are_read_through_their_map(fmt, tmp_path):
    """``tar --sparse`` in GNU and PAX format: the image is put back together from its map (not
    read as the compacted data plus the next headers), and the members after it are read right."""
    import subprocess

    from lpclip_cache.data import FolderSource, open_source
    from lpclip_cache.decode import DecodedDataset

    version = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout
    if "GNU tar" not in version:
        pytest.skip("the tar here is not GNU tar")
    files = tmp_path / "files"
    files.mkdir()
    data = sparse_png(files / "a.png")
    (files / "a.cls").write_text("3")
    (files / "b.jpg").write_bytes(JPEGS[0].read_bytes())
    (files / "b.cls").write_text("4")
    (tmp_path / "s").mkdir()
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(tmp_path / "s" / "0.tar"), "a.png", "a.cls",
                    "b.jpg", "b.cls"], cwd=files, check=True)
    with tarfile.open(tmp_path / "s" / "0.tar") as archive:
        assert archive.getmember("a.png").issparse()  # the filesystem kept the holes
    source = open_source(f"wds:{tmp_path / 's'}")
    source.admit(10, skip_bad=False)
    assert source.keys == ["a", "b"] and source.labels.tolist() == [3, 4]
    assert source._read(0, source._entries[0].member) == data
    folder = FolderSource(files, ["a.png", "b.jpg"], np.zeros(2, np.int32), ["x"], {})
    for row in range(2):
        ours = DecodedDataset(source, (32, 32), "shortest", "bicubic")[row]
        theirs = DecodedDataset(folder, (32, 32), "shortest", "bicubic")[row]
        assert ours[2] and theirs[2]
        assert ours[1].equal(theirs[1])


# 9. CLIP_benchmark's and WebDataset's own rules


def test_a_sample_with_several_images_takes_clip_benchmarks_choice(tmp_path):
    """CLIP_benchmark's ``to_tuple(["webp", "png", "jpg", "jpeg"], "cls")`` takes the first
    present: the png over the jpg, the webp over both."""
    from PIL import Image

    from lpclip_cache.data import open_source

    def encoded(fmt: str, colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, fmt)
        return buffer.getvalue()

    tar_of(tmp_path / "s" / "0.tar", [
        ("a.jpg", encoded("JPEG", (255, 0, 0))), ("a.png", encoded("PNG", (0, 255, 0))), ("a.cls", b"1"),
        ("b.jpeg", encoded("JPEG", (255, 0, 0))), ("b.png", encoded("PNG", (0, 255, 0))),
        ("b.webp", encoded("WEBP", (0, 0, 255))), ("b.cls", b"2"),
    ])
    source = open_source(f"wds:{tmp_path / 's'}")
    assert [source.image(i).convert("RGB").getpixel((4, 4)) for i in range(2)] == [(0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("kind", ["multilabel", "retrieval", "Retrieval\n"])
def test_a_root_that_is_not_classification_is_one_line(kind, tmp_path):
    folder = root(tmp_path / "cb", b"a\nb\nc\nd\n")
    (folder / "dataset_type.txt").write_text(kind)
    result = run_cli("extract", "--data", f"wds:{folder}", "--out", str(tmp_path / "x.zarr"))
    one_line(result, 3, "dataset_type.txt", kind.strip().lower(), "not single-label classification")
    assert not (tmp_path / "x.zarr").exists()


def test_members_under_double_underscore_names_are_skipped_as_webdataset_skips_them(tiny_checkpoint, tmp_path):
    """WebDataset's reader skips a member whose name is ``__x__`` or lies under a top-level
    ``__x__/`` folder (``skip_meta``), and nothing else: ``a/__x__/k.jpg`` is a sample."""
    import webdataset as wds

    members = (samples(["k0"], [0]) + samples(["__meta__/k1"], [1]) + [("__index__", b"{}")]
               + samples(["a/__x__/k2"], [2]) + samples(["__k3"], [3]))
    tar_of(tmp_path / "s" / "0.tar", members)
    result = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    theirs = {s["__key__"]: int(s["cls"]) for s in wds.WebDataset(str(tmp_path / "s" / "0.tar"), shardshuffle=False)}
    assert rows(tmp_path / "s.zarr") == theirs == {"k0": 0, "a/__x__/k2": 2, "__k3": 3}


def test_a_brace_pattern_starting_with_a_brace_is_not_the_current_folder(tiny_checkpoint, tmp_path, monkeypatch):
    """``wds:{/a/0.tar,/b/0.tar}`` reads /a and /b: a store written in the current folder does not
    lie inside its input."""
    tar_of(tmp_path / "a" / "0.tar", samples(["a0"], [0]))
    tar_of(tmp_path / "b" / "0.tar", samples(["b0"], [1], start=1))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    spec = f"wds:{{{tmp_path / 'a' / '0.tar'},{tmp_path / 'b' / '0.tar'}}}"
    result = run_cli("extract", "--data", spec, "--classnames", str(names_file(tmp_path)), "--model", "test-tiny",
                     "--pretrained", str(tiny_checkpoint), "--workers", "0", "--weak-views", "0", "--strong-views",
                     "0", "--quiet", "--out", "s.zarr")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "work" / "s.zarr") == {"a0": 0, "b0": 1}
    inside = run_cli("extract", "--data", spec, "--out", str(tmp_path / "a" / "s.zarr"))
    one_line(inside, 3, "lies inside the input", str(tmp_path / "a"))
