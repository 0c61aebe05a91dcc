"""Extraction that survives crashes and runs across processes: resume, lock, torchrun, verify, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Hold, assert_same_store, local_shards_written, sigkill_after_shards

from lpclip_cache.cli import main
from lpclip_cache.errors import StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import FeatureStore, StoreLock

DATA = "shapes:train:n=640:seed=3"


def options(out: Path, checkpoint: Path, **extra) -> dict:
    base = dict(data=DATA, out=str(out), model="test-tiny", pretrained=str(checkpoint), weak_views=1,
                strong_views=2, shard_size=64, batch_size=64, num_workers=0, device="cpu", progress=False)
    return {**base, **extra}


def cli_args(out: Path, checkpoint: Path) -> list[str]:
    return ["extract", "--data", DATA, "--out", str(out), "--model", "test-tiny", "--pretrained", str(checkpoint),
            "--weak-views", "1", "--strong-views", "2", "--shard-size", "64", "--batch-size", "64",
            "--workers", "0", "--device", "cpu", "--quiet"]



@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tmp_path_factory):
    """The store made in one uninterrupted single-process run, one thread (as torchrun ranks use)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "lpclip_cache", *cli_args(out, tiny_checkpoint)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_killed_extract_resumes_to_a_bit_identical_store(reference, tiny_checkpoint, tmp_path):
    out = tmp_path / "s.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "lpclip_cache", *cli_args(out, tiny_checkpoint)]
    hold = Hold("img", 3 * 64)  # held after three shards: it cannot finish first, and exactly three are done
    process = subprocess.Popen(command, env={**env, **hold.env}, pass_fds=hold.fds, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    hold.started()
    sigkill_after_shards(process, local_shards_written(out), hold=hold)
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(out)
    finished = int(FeatureStore(out, require_complete=False).read("done").sum())
    assert finished == 3
    resumed = subprocess.run(command + ["--json"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["state"] == "resume" and summary["written"] == 640 - 64 * finished
    assert_same_store(reference, out)


def test_lost_shards_are_redone_and_a_complete_store_is_left_alone(reference, tiny_checkpoint, tmp_path):
    import shutil

    import zarr

    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    root = zarr.open_group(str(out), mode="r+")
    root["done"][4] = 0
    root["strong/emb"][4 * 64 : 5 * 64] = np.full((64, 2, 64), np.nan, np.float16)
    meta = dict(root.attrs["lpclip_cache"])
    meta["complete"] = False
    root.attrs["lpclip_cache"] = meta
    summary = extract(ExtractConfig(**options(out, tiny_checkpoint)))
    assert summary["state"] == "resume" and summary["written"] == 64
    assert_same_store(reference, out)
    again = extract(ExtractConfig(**options(out, tiny_checkpoint)))
    assert again["state"] == "complete" and again["written"] == 0


def test_resuming_with_another_configuration_names_the_fields(reference, tiny_checkpoint, tmp_path):
    import shutil

    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    with pytest.raises(StoreError, match=r"differs in: views\.seed, views\.strong"):
        extract(ExtractConfig(**options(out, tiny_checkpoint, seed=5, strong_views=3)))
    assert_same_store(reference, out)


def test_a_second_writer_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "s.zarr"
    with StoreLock(out):
        with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()}"):
            extract(ExtractConfig(**options(out, tiny_checkpoint)))
    assert not out.exists()
    extract(ExtractConfig(**options(out, tiny_checkpoint, data="shapes:test:n=64")))
    assert not Path(f"{out}.lock").exists()


def test_torchrun_two_processes_give_the_single_process_store(reference, tiny_checkpoint, tmp_path):
    out = tmp_path / "dist.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lpclip_cache", *cli_args(out, tiny_checkpoint), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"ranks": 2' in result.stdout
    assert_same_store(reference, out)


def test_verify_passes_a_good_store_and_finds_a_planted_nan(reference, tmp_path):
    import shutil

    import zarr

    good = CliRunner().invoke(main, ["verify", str(reference)])
    assert good.exit_code == 0 and "every check passed" in good.stdout
    bad = tmp_path / "bad.zarr"
    shutil.copytree(reference, bad)
    root = zarr.open_group(str(bad), mode="r+")
    emb = np.asarray(root["weak/emb"][100:101])
    emb[0, 0, 7] = np.nan
    root["weak/emb"][100:101] = emb
    scaled = np.asarray(root["clean/emb"][5:6]) * 2
    root["clean/emb"][5:6] = scaled
    result = CliRunner().invoke(main, ["verify", str(bad)])
    assert result.exit_code == 5
    assert "weak: 1 nonfinite rows" in result.stdout and "clean: 1 non unit rows" in result.stdout
    assert "failed verification" in result.stderr


def test_export_hdf5_holds_the_same_arrays(reference, tmp_path):
    import h5py

    out = tmp_path / "s.h5"
    result = CliRunner().invoke(main, ["export", str(reference), "--format", "hdf5", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    store = FeatureStore(reference)
    with h5py.File(out, "r") as handle:
        for name in ("clean/emb", "weak/label", "strong/emb", "head", "labels", "valid", "done"):
            np.testing.assert_array_equal(handle[name][...], store.read(name), err_msg=name)
        assert [k.decode() for k in handle["keys"][:3]] == store.read("keys")[:3].tolist()
        assert json.loads(handle.attrs["lpclip_cache"])["cache_key"] == store.cache_key
    again = CliRunner().invoke(main, ["export", str(reference), "--out", str(out)])
    assert again.exit_code == 5 and "already exists" in again.stderr


def test_a_store_on_an_fsspec_url_works_end_to_end(reference, tiny_checkpoint, tmp_path):
    from lpclip_cache.training import TrainConfig, train
    from lpclip_cache.verify import verify

    url = f"file://{tmp_path}/remote/s.zarr"
    summary = extract(ExtractConfig(**options(url, tiny_checkpoint)))
    assert summary["state"] == "new" and summary["store"] == url
    assert_same_store(reference, url)
    assert verify(url)["ok"]
    train(TrainConfig(store=url, out=str(tmp_path / "run"), epochs=1, progress=False))
    assert extract(ExtractConfig(**options(url, tiny_checkpoint)))["state"] == "complete"
    with pytest.raises(StoreError, match="another configuration"):
        extract(ExtractConfig(**options(url, tiny_checkpoint, seed=9)))
