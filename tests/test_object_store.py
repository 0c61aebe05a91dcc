"""Stores on object storage, against a real S3 server: moto's server, started here on 127.0.0.1,
reached through s3fs exactly as a user's ``s3://`` store is (no client is mocked). Extraction in
one process and in two torchrun ranks, a SIGKILL between shards and its resume, training that
streams the store, evaluation, and the object lock that keeps a second writer away."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import Hold, assert_same_store, sigkill_after_shards
from test_extract_scale import cli_args, reference  # noqa: F401 (reference is a fixture)

from lpclip_cache.cli import main
from lpclip_cache.errors import StoreError
from lpclip_cache.store import FeatureStore, ObjectStoreLock

BUCKET = "lpclip-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port, the environment that points s3fs at it (for this
    process and the commands it starts), and an empty bucket."""
    import fsspec
    import s3fs

    # s3fs keeps one filesystem per constructor arguments in each process; one made for another
    # module's server (the same arguments, another endpoint in the environment) would be reused
    s3fs.S3FileSystem.clear_instance_cache()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield SimpleNamespace(endpoint=endpoint, env={**os.environ, **env, "OMP_NUM_THREADS": "1",
                                                      "HF_HUB_OFFLINE": "1"},
                              fs=fs, url=lambda name: f"s3://{BUCKET}/{name}")
    finally:
        patch.undo()
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=30)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_extract_to_s3_is_the_local_store(reference, tiny_checkpoint, s3):  # noqa: F811
    url = s3.url("one.zarr")
    done = run([sys.executable, "-m", "lpclip_cache", *cli_args(url, tiny_checkpoint), "--json"], s3.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["store"] == url
    assert_same_store(reference, url)
    assert not s3.fs.exists(f"{BUCKET}/one.zarr.lock")  # released
    for command in (["info", url], ["verify", url]):
        shown = CliRunner().invoke(main, command)
        assert shown.exit_code == 0 and url in shown.stdout, shown.stderr


def test_two_torchrun_ranks_on_s3_give_the_single_process_store(reference, tiny_checkpoint, s3):  # noqa: F811
    url = s3.url("ranks.zarr")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lpclip_cache", *cli_args(url, tiny_checkpoint), "--json"]
    done = run(command, s3.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"ranks": 2' in done.stdout
    assert_same_store(reference, url)


def test_a_killed_extraction_on_s3_resumes_past_its_own_lock(reference, tiny_checkpoint, s3):  # noqa: F811
    """SIGKILL between shards leaves the lock object behind; the same command takes it over (its
    holder, on this machine, no longer exists) and resumes to the uninterrupted store."""
    url = s3.url("killed.zarr")
    command = [sys.executable, "-m", "lpclip_cache", *cli_args(url, tiny_checkpoint)]
    hold = Hold("img", 3 * 64)  # held after three shards: it cannot finish first, and exactly three are done
    process = subprocess.Popen(command, env={**s3.env, **hold.env}, pass_fds=hold.fds, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    hold.started()

    def written() -> int:
        try:
            return len(s3.fs.ls(f"{BUCKET}/killed.zarr/done/c", refresh=True))
        except FileNotFoundError:
            return 0

    sigkill_after_shards(process, written, hold=hold)
    assert s3.fs.exists(f"{BUCKET}/killed.zarr.lock")
    finished = int(FeatureStore(url, require_complete=False).read("done").sum())
    assert finished == 3
    resumed = run(command + ["--json"], s3.env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["state"] == "resume" and summary["written"] == 640 - 64 * finished
    assert_same_store(reference, url)


def test_a_second_writer_on_s3_is_refused_and_a_dead_ones_lock_is_taken_over(tiny_checkpoint, s3):
    url = s3.url("locked.zarr")
    lock_path = f"{BUCKET}/locked.zarr.lock"
    with ObjectStoreLock(url):
        second = CliRunner().invoke(main, cli_args(url, tiny_checkpoint))
        assert second.exit_code == 5, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is being written by pid {os.getpid()}" in lines[0]
        assert "wait for it to finish" in lines[0]
        assert not s3.fs.exists(f"{BUCKET}/locked.zarr/zarr.json")  # nothing written meanwhile
    assert not s3.fs.exists(lock_path)
    # another machine's lock, just written: refused, whatever its heartbeat claims; once the server
    # last wrote it more than the stale time ago: taken over (tests/test_store_locks.py has the rest)
    old = time.time() - ObjectStoreLock.STALE_SECONDS - 5
    s3.fs.pipe_file(lock_path, json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": old}).encode())
    with pytest.raises(StoreError, match="is being written by pid 1 on elsewhere"):
        ObjectStoreLock(url).__enter__()
    taker = ObjectStoreLock(url)
    taker.STALE_SECONDS = 1.0
    deadline = time.monotonic() + 60
    while True:  # until the condition holds: the lock object older than 1 s by the server's clock
        head = s3.fs.call_s3("head_object", Bucket=BUCKET, Key="locked.zarr.lock")
        now = email.utils.parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        if (now - head["LastModified"]).total_seconds() > taker.STALE_SECONDS:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with taker as lock:
        assert lock.held and json.loads(s3.fs.cat_file(lock_path))["pid"] == os.getpid()
    assert not s3.fs.exists(lock_path)


def test_training_streams_an_s3_store_and_evaluation_reads_it(reference, tiny_checkpoint, s3, tmp_path):  # noqa: F811
    """The s3 store (the uninterrupted one above) trains with its rows streamed shard by shard,
    and scores exactly as its local twin."""
    from lpclip_cache.training import TrainConfig, train

    url = s3.url("one.zarr")
    if not s3.fs.exists(f"{BUCKET}/one.zarr/zarr.json"):
        done = run([sys.executable, "-m", "lpclip_cache", *cli_args(url, tiny_checkpoint)], s3.env)
        assert done.returncode == 0, done.stderr[-3000:]
    summary = train(TrainConfig(store=url, out=str(tmp_path / "run"), epochs=2, progress=False, memory_budget=1))
    assert summary["streamed"] is True
    local = train(TrainConfig(store=str(reference), out=str(tmp_path / "local"), epochs=2, progress=False,
                              memory_budget=1))
    assert summary["final_loss"] == local["final_loss"]
    scores = []
    for number, store in enumerate((url, str(reference))):
        result = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "--store", store, "--out",
                                           str(tmp_path / f"report{number}.json"), "--json"])
        assert result.exit_code == 0, result.stderr
        scores.append(json.loads(result.stdout)["stores"][store])
    assert scores[0] == scores[1]
