"""``--data wds:SPEC``: WebDataset shards and CLIP_benchmark's layout, built here from the
repository's real CIFAR-10 test JPEGs with WebDataset's own writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    Hold,
    assert_same_store,
    interrupt_writes_after,
    local_shards_written,
    run_cli,
    sigkill_after_shards,
)

from lpclip_cache.errors import Interrupted, StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import FeatureStore

CIFAR = Path(__file__).parent / "data" / "cifar10" / "test"
CLASSES = sorted(p.name for p in CIFAR.iterdir())
IMAGES = [(label, path) for label, name in enumerate(CLASSES) for path in sorted((CIFAR / name).glob("*.jpg"))[:5]]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}."]


def write_shards(folder: Path, per_shard: int, broken: str | None = None, with_cls: bool = True) -> list[Path]:
    """The images as WebDataset shards (``{key}.jpg`` + ``{key}.cls``), in ImageFolder order."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(IMAGES), per_shard)):
        path = folder / f"{number}.tar"
        with wds.TarWriter(str(path)) as sink:
            for label, image in IMAGES[start : start + per_shard]:
                key = f"{CLASSES[label]}-{image.stem}"
                sample = {"__key__": key, "jpg": b"not a jpeg" if key == broken else image.read_bytes()}
                if with_cls:
                    sample["cls"] = str(label).encode()
                sink.write(sample)
        paths.append(path)
    return paths


def clip_benchmark_root(root: Path) -> Path:
    """A dataset root exactly as CLIP_benchmark lays it out, split ``test`` in two shards."""
    shards = write_shards(root / "test", per_shard=30)
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (root / "dataset_type.txt").write_text("zeroshot_classification\n")
    return root


def options(data: str, out: Path, checkpoint: Path, **extra) -> dict:
    settings = dict(data=data, out=str(out), model="test-tiny", pretrained=str(checkpoint), weak_views=0,
                    strong_views=0, shard_size=16, batch_size=32, num_workers=0, progress=False)
    return {**settings, **extra}


@pytest.fixture(scope="module")
def folder_store(tiny_checkpoint, tmp_path_factory):
    """The same 60 images read as an ImageFolder tree: the reference."""
    import shutil

    base = tmp_path_factory.mktemp("folder")
    for label, image in IMAGES:
        (base / "images" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, base / "images" / CLASSES[label] / image.name)
    names = base / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    templates = base / "templates.txt"
    templates.write_text("\n".join(t.replace("{c}", "{}") for t in TEMPLATES) + "\n")
    out = base / "folder.zarr"
    extract(ExtractConfig(**options(str(base / "images"), out, tiny_checkpoint, classnames=str(names),
                                    templates=str(templates))))
    return out


def test_plain_shards_give_the_images_labels_and_keys_of_the_folder(folder_store, tiny_checkpoint, tmp_path):
    write_shards(tmp_path / "shards", per_shard=20)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    templates = tmp_path / "t.txt"
    templates.write_text("\n".join(t.replace("{c}", "{}") for t in TEMPLATES) + "\n")
    stores = {}
    for name, spec in (("dir", f"wds:{tmp_path / 'shards'}"), ("brace", f"wds:{tmp_path / 'shards'}/{{0..2}}.tar")):
        out = tmp_path / f"{name}.zarr"
        summary = extract(ExtractConfig(**options(spec, out, tiny_checkpoint, classnames=str(names),
                                                  templates=str(templates))))
        assert summary["images"] == len(IMAGES)
        stores[name] = FeatureStore(out)
    reference = FeatureStore(folder_store)
    for store in stores.values():
        np.testing.assert_array_equal(store.labels(), reference.labels())  # rows in the same permutation
        keys = [str(k) for k in store.read("keys")]
        expected = [Path(str(k)).parent.name + "-" + Path(str(k)).stem for k in reference.read("keys")]
        assert keys == expected  # each row's key is its sample's __key__
        np.testing.assert_array_equal(store.read("clean/emb"), reference.read("clean/emb"))
        assert store.manifest["dataset"]["kind"] == "wds" and len(store.manifest["dataset"]["shards"]) == 3


def test_shards_without_cls_have_unknown_labels(tiny_checkpoint, tmp_path):
    write_shards(tmp_path / "s", per_shard=30, with_cls=False)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    extract(ExtractConfig(**options(f"wds:{tmp_path / 's'}", tmp_path / "u.zarr", tiny_checkpoint,
                                    classnames=str(names))))
    assert (FeatureStore(tmp_path / "u.zarr").labels() == -1).all()


def test_clip_benchmark_root_brings_its_names_and_templates(folder_store, tiny_checkpoint, tmp_path):
    root = clip_benchmark_root(tmp_path / "cifar10")
    out = tmp_path / "cb.zarr"
    extract(ExtractConfig(**options(f"wds:{root}", out, tiny_checkpoint, split="test")))
    store, reference = FeatureStore(out), FeatureStore(folder_store)
    assert store.classnames == CLASSES
    assert store.manifest["templates"] == [t.replace("{c}", "{}") for t in TEMPLATES]
    assert store.manifest["dataset"]["layout"] == "clip_benchmark"
    # the head from the root's own files equals the one from the same names and templates given explicitly
    np.testing.assert_array_equal(store.head(), reference.head())
    np.testing.assert_array_equal(store.read("clean/emb"), reference.read("clean/emb"))


def test_clip_benchmark_store_trains_and_evaluates(tiny_checkpoint, tmp_path):
    root = clip_benchmark_root(tmp_path / "cifar10")
    store = tmp_path / "cb.zarr"
    extract(ExtractConfig(**options(f"wds:{root}", store, tiny_checkpoint, split="test")))
    trained = run_cli("train", "--store", str(store), "--out", str(tmp_path / "run"), "--epochs", "2", "--json")
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli("evaluate", "--run", str(tmp_path / "run"), "--store", str(store), "--out",
                        str(tmp_path / "report.json"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert 0.0 <= report["stores"][str(store)]["probe"]["accuracy"] <= 1.0


def test_a_missing_split_is_one_line(tmp_path):
    from click.testing import CliRunner

    from lpclip_cache.cli import main

    root = clip_benchmark_root(tmp_path / "cifar10")
    done = CliRunner().invoke(main, ["extract", "--data", f"wds:{root}", "--split", "train", "--out",
                                     str(tmp_path / "x.zarr")])
    assert done.exit_code == 3 and "has no split 'train'" in done.stderr and "splits there: test" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_a_broken_member_names_shard_and_key_or_is_skipped(tiny_checkpoint, tmp_path):
    write_shards(tmp_path / "s", per_shard=25, broken="cat-0002")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    args = ["extract", "--data", f"wds:{tmp_path / 's'}", "--classnames", str(names), "--model", "test-tiny",
            "--pretrained", str(tiny_checkpoint), "--workers", "0", "--weak-views", "0", "--strong-views", "0"]
    failed = run_cli(*args, "--out", str(tmp_path / "bad.zarr"))
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    # cat is class 3: its five images are samples 15-19, in the first shard of 25
    assert "cat-0002" in failed.stderr and "0.tar" in failed.stderr and "not a readable image" in failed.stderr
    extract(ExtractConfig(**options(f"wds:{tmp_path / 's'}", tmp_path / "skip.zarr", tiny_checkpoint,
                                    classnames=str(names), skip_bad=True)))
    store = FeatureStore(tmp_path / "skip.zarr")
    keys = [str(k) for k in store.read("keys")]
    assert [keys[i] for i in np.flatnonzero(~store.read("valid"))] == ["cat-0002"]


def test_an_interrupted_extraction_resumes_to_the_same_store(tiny_checkpoint, tmp_path, monkeypatch):

    write_shards(tmp_path / "s", per_shard=20)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    spec = f"wds:{tmp_path / 's'}"
    reference = tmp_path / "ref.zarr"
    views = dict(classnames=str(names), weak_views=1, strong_views=1)
    extract(ExtractConfig(**options(spec, reference, tiny_checkpoint, **views)))
    restore = interrupt_writes_after(monkeypatch, 2)
    out = tmp_path / "s.zarr"
    with pytest.raises(Interrupted):
        extract(ExtractConfig(**options(spec, out, tiny_checkpoint, **views)))
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(out)
    restore()
    summary = extract(ExtractConfig(**options(spec, out, tiny_checkpoint, **views)))
    assert summary["state"] == "resume"
    assert_same_store(reference, out)


def test_shards_at_an_fsspec_url_are_copied_once_and_read(folder_store, tiny_checkpoint, tmp_path, monkeypatch):
    """A remote root (fsspec's in-memory filesystem stands in for s3:// or gs://, which cannot be
    reached here) in CLIP_benchmark's layout: its shards are copied into the cache folder once."""
    import fsspec

    monkeypatch.setenv("LPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    local = clip_benchmark_root(tmp_path / "local")
    memory = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"/cb/{path.relative_to(local)}", path.read_bytes())
    out = tmp_path / "remote.zarr"
    extract(ExtractConfig(**options("wds:memory://cb", out, tiny_checkpoint, split="test")))
    np.testing.assert_array_equal(FeatureStore(out).read("clean/emb"), FeatureStore(folder_store).read("clean/emb"))
    assert sorted(p.name for p in (tmp_path / "cache" / "shards").rglob("*.tar")) == ["0.tar", "1.tar"]
    memory.rm("/cb", recursive=True)


def test_few_open_shards_read_the_same_images(folder_store, tiny_checkpoint, tmp_path, monkeypatch):
    """A process keeps only a few shard readers open (``OPEN_SHARDS``); with one, every read in
    the store's row order reopens shards, and the store is still the folder's."""
    import lpclip_cache.webdata as webdata

    monkeypatch.setattr(webdata, "OPEN_SHARDS", 1)
    root = clip_benchmark_root(tmp_path / "cb")
    out = tmp_path / "one-open.zarr"
    extract(ExtractConfig(**options(f"wds:{root}", out, tiny_checkpoint, split="test")))
    np.testing.assert_array_equal(FeatureStore(out).read("clean/emb"), FeatureStore(folder_store).read("clean/emb"))


def test_a_cls_that_is_not_a_number_is_one_line(tmp_path):
    import webdataset as wds

    from lpclip_cache.data import open_source
    from lpclip_cache.errors import InputError

    with wds.TarWriter(str(tmp_path / "0.tar")) as sink:
        sink.write({"__key__": "a", "jpg": IMAGES[0][1].read_bytes(), "cls": b"dog"})
    with pytest.raises(InputError, match="sample 'a': its .cls holds 'dog', not a plain decimal class index"):
        open_source(f"wds:{tmp_path}").admit(10, skip_bad=False)


def test_a_killed_extraction_resumes_to_a_bit_identical_store(tiny_checkpoint, tmp_path):
    """SIGKILL while shards are being written (a real process, as a crash or a pre-empted job
    ends), then the same command again: it resumes and the store equals an uninterrupted run's.

    The command is held once it has handed three shards to its writer (``Hold``), so it cannot
    finish before the kill, and exactly three shards are done then. This once failed on a loaded
    machine with ``3 <= 2``: the count of done markers included a chunk zarr was still writing
    (``KEY.<uuid>.partial``, renamed into place when whole), and the kill came before its rename."""
    import os
    import subprocess
    import sys

    import webdataset as wds

    every = [(label, path) for label, name in enumerate(CLASSES) for path in sorted((CIFAR / name).glob("*.jpg"))]
    (tmp_path / "s").mkdir()
    for number, start in enumerate(range(0, len(every), 50)):
        with wds.TarWriter(str(tmp_path / "s" / f"{number}.tar")) as sink:
            for label, image in every[start : start + 50]:
                sink.write({"__key__": f"{CLASSES[label]}-{image.stem}", "jpg": image.read_bytes(),
                            "cls": str(label).encode()})
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "lpclip_cache", "extract", "--data", f"wds:{tmp_path / 's'}", "--classnames",
                str(names), "--model", "test-tiny", "--pretrained", str(tiny_checkpoint), "--weak-views", "2",
                "--strong-views", "2", "--shard-size", "8", "--batch-size", "8", "--workers", "0", "--quiet",
                "--out", str(out)]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reference = subprocess.run(command(tmp_path / "ref.zarr"), env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed.zarr"
    hold = Hold("img", 3 * 8)
    process = subprocess.Popen(command(out), env={**env, **hold.env}, pass_fds=hold.fds, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    hold.started()
    sigkill_after_shards(process, local_shards_written(out), at_least=3, hold=hold)
    assert int(FeatureStore(out, require_complete=False).read("done").sum()) == 3
    resumed = subprocess.run([*command(out), "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["written"] == (25 - 3) * 8
    assert_same_store(tmp_path / "ref.zarr", out)
