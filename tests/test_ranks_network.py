"""One network per store, the same data on every rank, one line from every rank.

``--pretrained none`` builds its random network from ``--seed``; the manifest records the image
tower's and the head's digests, which resume (through the cache key) and ``check_compatible``
compare. Under torchrun the ranks agree on the manifest before anything is written, and an error
that stops the job (another job holds the store; a rank sees other data) is the same one line on
every rank, each exiting with its code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_same_store, interrupt_writes_after

from lpclip_cache.cli import main
from lpclip_cache.errors import StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import ATTR, FeatureStore, StoreLock, cache_key

DATA = "shapes:test:n=32"


def options(out: Path, **extra) -> dict:
    base = dict(data=DATA, out=str(out), model="test-tiny", pretrained="none", weak_views=0, strong_views=0,
                shard_size=8, batch_size=32, num_workers=0, device="cpu", progress=False)
    return {**base, **extra}


def cli_extract(out: Path, *more: str) -> list[str]:
    return ["extract", "--data", DATA, "--out", str(out), "--model", "test-tiny", "--pretrained", "none",
            "--shard-size", "16", "--workers", "0", "--device", "cpu", "--quiet", *more]



@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    """A store of a random-init test-tiny (seed 0), written in one go."""
    out = tmp_path_factory.mktemp("random") / "a.zarr"
    extract(ExtractConfig(**options(out)))
    return out


def test_the_same_random_init_command_gives_the_same_network_and_embeddings(random_store, tmp_path):
    extract(ExtractConfig(**options(tmp_path / "b.zarr")))
    assert_same_store(random_store, tmp_path / "b.zarr")
    manifest = FeatureStore(random_store).manifest
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["model"]["image_tower_sha256"])
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["teacher"]["head_sha256"])
    other = FeatureStore(Path(extract(ExtractConfig(**options(tmp_path / "c.zarr", seed=1)))["store"])).manifest
    assert other["model"]["image_tower_sha256"] != manifest["model"]["image_tower_sha256"]
    assert other["teacher"]["head_sha256"] != manifest["teacher"]["head_sha256"]


def test_a_seeded_build_leaves_the_global_random_state_alone():
    import torch

    from lpclip_cache.models import load_model

    before = torch.get_rng_state()
    first = load_model("test-tiny", "none", device="cpu", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    second = load_model("test-tiny", "none", device="cpu", seed=7)
    assert first.describe() == second.describe()
    assert load_model("test-tiny", "none", device="cpu", seed=8).describe() != first.describe()


def test_a_resumed_random_init_extraction_keeps_its_network(random_store, tmp_path, monkeypatch):
    out = tmp_path / "r.zarr"
    restore = interrupt_writes_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(**options(out)))
    restore()
    assert int(FeatureStore(out, require_complete=False).read("done").sum()) == 2
    summary = extract(ExtractConfig(**options(out)))
    assert summary["state"] == "resume" and summary["written"] == 16
    assert_same_store(random_store, out)


def test_a_store_without_digests_is_not_resumed_with_a_network_it_cannot_name(random_store, tmp_path):
    import zarr

    out = tmp_path / "old.zarr"
    shutil.copytree(random_store, out)
    root = zarr.open_group(str(out), mode="r+")
    meta = dict(root.attrs[ATTR])
    del meta["manifest"]["model"]["image_tower_sha256"], meta["manifest"]["teacher"]["head_sha256"]
    root["done"][3] = 0
    root.attrs[ATTR] = {**meta, "cache_key": cache_key(meta["manifest"]), "complete": False}
    with pytest.raises(StoreError, match=r"differs in: model\.image_tower_sha256, teacher\.head_sha256"):
        extract(ExtractConfig(**options(out)))


def test_a_run_is_refused_on_a_store_of_another_network_in_one_line(random_store, tmp_path):
    import zarr

    from lpclip_cache.training import TrainConfig, train

    other = Path(extract(ExtractConfig(**options(tmp_path / "seed1.zarr", seed=1)))["store"])
    run = tmp_path / "run"
    train(TrainConfig(store=str(random_store), out=str(run), epochs=1, progress=False))
    report = str(tmp_path / "r.json")
    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--store", str(other), "--out", report])
    assert result.exit_code == 5, result.output
    assert result.stderr.count("\n") == 1 and "image tower sha256" in result.stderr, result.stderr
    assert f"store '{other}' was made by another test-tiny network than run '{run}'" in result.stderr
    assert not (tmp_path / "r.json").exists()
    # a store written before the digest was recorded is compared without it
    old = tmp_path / "old.zarr"
    shutil.copytree(random_store, old)
    root = zarr.open_group(str(old), mode="r+")
    meta = dict(root.attrs[ATTR])
    del meta["manifest"]["model"]["image_tower_sha256"]
    root.attrs[ATTR] = {**meta, "cache_key": cache_key(meta["manifest"])}
    ok = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--store", str(old), "--out", report])
    assert ok.exit_code == 0, ok.stderr


SIGTERM_SCRIPT = """
import signal

from lpclip_cache.cli import interrupt_on_sigterm
from lpclip_cache.distributed import Ranks
from lpclip_cache.errors import Interrupted, StoreError
interrupt_on_sigterm()
try:
    try:
        Ranks().stop_together(StoreError("held elsewhere"))
    finally:
        signal.raise_signal(signal.SIGTERM)  # its handler runs before raise_signal returns
except StoreError as exc:
    print("stopped:", exc)
try:
    signal.raise_signal(signal.SIGTERM)
except Interrupted:
    print("interrupted")
"""


def test_sigterm_does_not_replace_an_error_every_rank_stops_on():
    """torchrun SIGTERMs the ranks still running as soon as one exits: a rank already stopping on
    an error every rank shares still says that error; any other time SIGTERM interrupts."""
    result = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stopped: held elsewhere", "interrupted"]


def torchrun(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Two CPU ranks (gloo) on this machine, one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(launcher + command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def rank_exit_codes(stderr: str) -> list[int]:
    """Each failed rank's exit code, from torchrun's summary."""
    return sorted(int(code) for code in re.findall(r"^\s+exitcode\s+:\s+(-?\d+)", stderr, re.MULTILINE))


def assert_every_rank_said(result: subprocess.CompletedProcess, line: str) -> None:
    assert result.stderr.count(line) == 2, result.stderr[-4000:]
    assert rank_exit_codes(result.stderr) == [5, 5], result.stderr[-4000:]
    assert result.returncode == 1  # torchrun's own code whenever a rank fails; the ranks' are in its summary
    for sign in ("RuntimeError", "lpclip_cache/", "[rank"):  # no traceback from any rank
        assert sign not in result.stderr, result.stderr[-4000:]


def test_torchrun_against_a_held_lock_stops_every_rank_with_the_same_line(tmp_path):
    out = tmp_path / "s.zarr"
    with StoreLock(out):
        result = torchrun(["-m", "lpclip_cache", *cli_extract(out)], tmp_path)
    assert_every_rank_said(result, f"lpclip-cache: error: store '{out}' is being written by pid {os.getpid()}: ")
    assert not out.exists()


def test_torchrun_ranks_that_see_other_data_stop_before_writing(tmp_path):
    """Two nodes, each with its own copy of the shard at the same path, one copy older (one label
    differs). Each rank runs in its own folder and reads the shard through ``/proc/self/cwd``, so
    the same data spec names another file on each rank, as the same path does on two machines."""
    import webdataset as wds

    images = sorted((Path(__file__).parent / "data" / "cifar10" / "test" / "cat").glob("*.jpg"))[:8]
    for node, changed in (("node0", None), ("node1", 5)):
        (tmp_path / node / "shards").mkdir(parents=True)
        with wds.TarWriter(str(tmp_path / node / "shards" / "0.tar")) as sink:
            for i, image in enumerate(images):
                sink.write({"__key__": f"s{i}", "jpg": image.read_bytes(), "cls": b"1" if i == changed else b"0"})
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    out = tmp_path / "s.zarr"
    extract_args = ["-m", "lpclip_cache", "extract", "--data", "wds:file:///proc/self/cwd/shards/0.tar",
                    "--classnames", str(names), "--out", str(out), "--model", "test-tiny", "--pretrained", "none",
                    "--shard-size", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    in_own_folder = ['cd "node$LOCAL_RANK" && exec "$0" "$@"', sys.executable, *extract_args]
    result = torchrun(["--no-python", "sh", "-c", *in_own_folder], tmp_path)
    assert_every_rank_said(result, "lpclip-cache: error: rank 1 of 2 (host ")
    line = next(li for li in result.stderr.splitlines() if li.startswith("lpclip-cache: error: rank 1 of 2"))
    assert "sees other data or settings than rank 0" in line and "dataset.fingerprint" in line, line
    assert "nothing was written" in line
    assert not out.exists()
