"""``wds:`` input that never lies: every sample read under its own key with its own label, or one
line naming the shard and the key. The shards are built here with the standard library's
``tarfile`` (PAX and GNU formats, any member order) and WebDataset's ``TarWriter``, from the
repository's real CIFAR-10 test JPEGs; every store is checked row by row against what was written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import interrupt_writes_after
from hypothesis import HealthCheck, given, settings
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


def test_a_shard_without_end_blocks_is_read_with_a_warning(tiny_checkpoint, tmp_path):
    shards = three_shards(tmp_path / "s")
    with tarfile.open(shards[2]) as archive:
        last = archive.getmembers()[-1]
    boundary = last.offset_data + 512 * ((last.size + 511) // 512)
    shards[2].write_bytes(shards[2].read_bytes()[:boundary])
    result = extract_cli(tmp_path, f"wds:{tmp_path / 's'}", tiny_checkpoint)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "2.tar" in result.stderr and "end-of-archive" in result.stderr
    assert len(rows(tmp_path / "s.zarr")) == 60


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
    assert extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad").returncode == 0
    store = FeatureStore(tmp_path / "s.zarr")
    assert dict(zip(store.read("keys").tolist(), store.read("valid").tolist())) == {"a": True, "b": False, "c": True}


# 3. Labels are checked where they are read


@pytest.mark.parametrize("value, reason", [
    (b"12", "outside the 10 classes"),
    (b"-3", "class indices are 0 or more"),
    (b"1_0", "not a plain decimal class index"),
    ("٣".encode(), "not a plain decimal class index"),
    (b"99999999999", "not a plain decimal class index"),
    (b"\xff\xfe", "not UTF-8"),
    (b"dog", "not a plain decimal class index"),
])
def test_a_cls_that_is_not_a_class_index_names_shard_and_key(value, reason, tiny_checkpoint, tmp_path):
    tar_of(tmp_path / "s" / "0.tar", samples(["a", "b", "c"], [1, value, 2]))
    spec = f"wds:{tmp_path / 's'}"
    one_line(extract_cli(tmp_path, spec, tiny_checkpoint), 3, "0.tar", "'b'", reason)
    skipped = extract_cli(tmp_path, spec, tiny_checkpoint, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    store = FeatureStore(tmp_path / "s.zarr")
    assert rows(tmp_path / "s.zarr") == {"a": 1, "b": -1, "c": 2}
    assert dict(zip(store.read("keys").tolist(), store.read("valid").tolist())) == {"a": True, "b": False, "c": True}
    assert reason in store.meta["invalid"][0]["reason"] and store.meta["invalid"][0]["key"] == "b"
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


name_chars = st.characters(codec="utf-8", exclude_characters="./\0", exclude_categories=("Cs", "Cc"))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(keys=st.lists(st.text(name_chars, min_size=1, max_size=130).map(str.strip).filter(bool), min_size=1,
                     max_size=12, unique=True),
       shuffle=st.randoms(use_true_random=False), fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
       folder=st.booleans())
def test_random_valid_tars_give_exactly_the_written_labels(keys, shuffle, fmt, folder, tiny_checkpoint,
                                                           tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("random")
    keys = [f"dir/{k}" if folder else k for k in keys]
    labels = [shuffle.randrange(-1, 10) for _ in keys]
    members = samples(keys, labels)
    shuffle.shuffle(members)  # any member order: grouping by key keeps every label on its image
    tar_of(tmp_path / "s" / "0.tar", members, fmt)
    extract(settings_for(f"wds:{tmp_path / 's'}", tmp_path / "s.zarr", tiny_checkpoint,
                         classnames=str(names_file(tmp_path))))
    assert rows(tmp_path / "s.zarr") == dict(zip(keys, labels))
    assert FeatureStore(tmp_path / "s.zarr").read("valid").all()


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
