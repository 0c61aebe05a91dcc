"""One writer per store: the locks of local and S3 stores (moto's real server on 127.0.0.1, reached
through s3fs), their takeover races, fencing of a writer that lost its lock, the shard records
``verify`` checks, and a crash between creating a store and writing its head.

Races are forced with barriers and events, never with sleeps: a poll waits only for a condition
to hold (a done chunk written, a lock object older than the stale time by the server's clock)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import Hold, assert_same_store, clustered_embeddings, write_store
from test_object_store import BUCKET, s3  # noqa: F401 (s3 is a fixture)

from lpclip_cache.errors import InputError, StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import FeatureStore, Layout, ObjectStoreLock, StoreLock, StoreWriter
from lpclip_cache.verify import verify

STALE = 1.0  # the stale time of the locks these tests take over (seconds, by the server's clock)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until it holds (a guard, not a synchronisation: it fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def server_age(s3, key: str) -> float:  # noqa: F811
    """How long ago the server last wrote an object, by the server's own clock."""
    from email.utils import parsedate_to_datetime

    head = s3.fs.call_s3("head_object", Bucket=BUCKET, Key=key)
    now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
    return (now - head["LastModified"]).total_seconds()


def wait_until_stale(s3, key: str, stale: float = STALE) -> None:  # noqa: F811
    wait_for(lambda: server_age(s3, key) > stale, f"'{key}' to be older than {stale} s")


def lock_of(url: str, stale: float = STALE, heartbeat: float | None = None) -> ObjectStoreLock:
    lock = ObjectStoreLock(url)
    lock.STALE_SECONDS = stale
    if heartbeat is not None:
        lock.HEARTBEAT_SECONDS = heartbeat
    return lock


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert isinstance(exc, StoreError) and message and "\n" not in message, repr(exc)
    return message


def tiny_layout() -> tuple[Layout, dict, np.ndarray]:
    """A small layout, its manifest and head, for writers that never reach the model."""
    layout = Layout(n=8, dim=4, n_classes=2, weak_views=0, strong_views=0, shard_size=4)
    manifest = {"model": {"name": "synthetic"}, "classnames": ["a", "b"], "teacher": {"logit_scale": 1.0,
                "temperature": 1.0}, "views": {"seed": 0}}
    return layout, manifest, np.eye(2, 4, dtype=np.float32)


# -- the takeover race -------------------------------------------------------------------------------


def one_after_the_other(monkeypatch):
    """Make two takers interleave at the takeover: each decides on the stale lock it read (a
    barrier holds each until both have read it), then the leader completes its takeover before
    the other acts on what it read. Returns the wrapper to run each taker through."""
    barrier = threading.Barrier(2, timeout=60)  # the timeout only guards a lost thread
    leader_done = threading.Event()
    roles: dict[int, int] = {}
    original = ObjectStoreLock._stale

    def stale(self, *args):
        verdict = original(self, *args)
        if threading.get_ident() not in roles:
            roles[threading.get_ident()] = barrier.wait()
            if roles[threading.get_ident()] != 0:
                assert leader_done.wait(60)
        return verdict

    def taker(take):
        def run():
            try:
                return take()
            finally:
                if roles.get(threading.get_ident()) == 0:
                    leader_done.set()
        return run

    monkeypatch.setattr(ObjectStoreLock, "_stale", stale)
    return taker


def race(takers) -> list:
    """Run each taker in its own thread; their results (or the exceptions they raised)."""
    results: list = [None] * len(takers)

    def run(index: int) -> None:
        try:
            results[index] = takers[index]()
        except Exception as exc:  # the loser's refusal
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(takers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_takers_of_a_stale_s3_lock_one_wins(s3, monkeypatch):  # noqa: F811
    """Both read the same stale lock; the first takes it over, then the second acts on what it
    read. A takeover replaces exactly the object read (If-Match on its ETag), so the second's
    fails and it finds the first's live lock: one wins, the other is refused."""
    url, key = s3.url("race.zarr"), "race.zarr.lock"
    s3.fs.pipe_file(f"{BUCKET}/{key}", json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": 0}).encode())
    wait_until_stale(s3, key)
    taker = one_after_the_other(monkeypatch)
    locks = [lock_of(url), lock_of(url)]
    results = race([taker(lock.__enter__) for lock in locks])
    try:
        winners = [lock for lock, result in zip(locks, results) if result is lock and lock.held]
        losers = [result for result in results if isinstance(result, Exception)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert "is being written by pid" in one_line(losers[0])
        assert json.loads(s3.fs.cat_file(f"{BUCKET}/{key}"))["job"] == winners[0].job
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
    assert not s3.fs.exists(f"{BUCKET}/{key}")


def test_two_writers_of_a_file_url_one_wins(tmp_path, monkeypatch):
    """A file:// store with a dead writer's lock file: of two writers racing for it (interleaved
    as on S3, should they decide on staleness: a file lock never needs to), one writes."""
    store = tmp_path / "race.zarr"
    Path(f"{store}.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": 0}))
    taker = one_after_the_other(monkeypatch)
    layout, manifest, head = tiny_layout()
    writers = [StoreWriter(f"file://{store}", layout, manifest) for _ in range(2)]
    results = race([taker(lambda w=w: w.begin(head)) for w in writers])
    try:
        assert sorted(type(r).__name__ for r in results) == ["StoreError", "str"], results
        assert "is being written by pid" in one_line(next(r for r in results if isinstance(r, Exception)))
    finally:
        for writer in writers:
            writer.release()


def test_a_local_path_and_its_file_url_exclude_each_other(tmp_path):
    store = tmp_path / "s.zarr"
    layout, manifest, head = tiny_layout()
    with StoreLock(store):
        with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()}: wait"):
            StoreWriter(f"file://{store}", layout, manifest).begin(head)
    url_writer = StoreWriter(f"file://{store}", layout, manifest)
    assert url_writer.begin(head) == "new"
    try:
        with pytest.raises(StoreError, match=rf"being written by pid {os.getpid()}: wait"):
            StoreWriter(store, layout, manifest).begin(head)
    finally:
        url_writer.release()
    assert not Path(f"{store}.lock").exists()


def test_local_and_s3_locks_hold_the_same_record(s3, tmp_path):  # noqa: F811
    """One record for both kinds of lock (``locks.LockRecord``): the same fields, read back whole."""
    from lpclip_cache.locks import LockRecord

    store = tmp_path / "record.zarr"
    with StoreLock(store) as local:
        on_disk = Path(f"{store}.lock").read_bytes()
    with lock_of(s3.url("record.zarr"), stale=ObjectStoreLock.STALE_SECONDS) as remote:
        in_s3 = s3.fs.cat_file(f"{BUCKET}/record.zarr.lock")
    assert set(json.loads(on_disk)) == set(json.loads(in_s3)) == {"host", "pid", "job", "heartbeat"}
    for data, lock in ((on_disk, local), (in_s3, remote)):
        record = LockRecord.parse(data)
        assert (record.job, record.host, record.pid) == (lock.job, socket.gethostname(), os.getpid())
        assert record.heartbeat is not None and abs(record.heartbeat - time.time()) < 600


def test_a_filesystem_without_atomic_create_gets_the_warning_and_no_lock(caplog):
    """fsspec's generic ``mode="create"`` checks, then writes: not a lock (memory:// here)."""
    caplog.set_level(logging.INFO, logger="lpclip_cache")
    lock = ObjectStoreLock(f"memory://locks-{os.getpid()}/s.zarr")
    with lock:
        assert not lock.held
    err = [record.getMessage() for record in caplog.records]
    assert len(err) == 1 and "without atomic create-if-absent writes: no lock" in err[0]
    assert caplog.records[0].levelname == "WARNING"


# -- what a lock holds, and reading it -----------------------------------------------------------------

NOW = time.time()
CONTENTS = {
    "empty": b"",
    "garbage": b"\x00not json{",
    "list": b"[]",
    "number": b"123",
    "string": b'"x"',
    "null": b"null",
    "pid_float_1e20": json.dumps({"host": socket.gethostname(), "pid": 1e20, "heartbeat": NOW}).encode(),
    "pid_int_1e20": json.dumps({"host": socket.gethostname(), "pid": 10**20, "heartbeat": NOW}).encode(),
    "pid_text": json.dumps({"host": ["x"], "pid": "7", "heartbeat": NOW}).encode(),
    "heartbeat_nan": json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": math.nan}).encode(),
    "heartbeat_infinity": json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": math.inf}).encode(),
    "heartbeat_future": json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": NOW + 10**7}).encode(),
    "host_with_newline": json.dumps({"host": "a\nb", "pid": 1, "heartbeat": NOW}).encode(),
}


@pytest.fixture(scope="module")
def aged_locks(s3):  # noqa: F811
    """One lock object per content, written together, then older than the stale time."""
    for case, data in CONTENTS.items():
        s3.fs.pipe_file(f"{BUCKET}/aged-{case}.zarr.lock", data)
    for case in CONTENTS:
        wait_until_stale(s3, f"aged-{case}.zarr.lock")
    return {case: s3.url(f"aged-{case}.zarr") for case in CONTENTS}


@pytest.mark.parametrize("case", sorted(CONTENTS))
def test_a_fresh_lock_of_any_content_is_refused_in_one_line(s3, case):  # noqa: F811
    """Fresh, whatever it holds: another writer, maybe mid-create. Never a traceback."""
    key = f"fresh-{case}.zarr.lock"
    s3.fs.pipe_file(f"{BUCKET}/{key}", CONTENTS[case])
    with pytest.raises(StoreError) as refused:
        lock_of(s3.url(f"fresh-{case}.zarr"), stale=ObjectStoreLock.STALE_SECONDS).__enter__()
    assert "is being written by" in one_line(refused.value) and "wait for it to finish" in str(refused.value)
    assert s3.fs.cat_file(f"{BUCKET}/{key}") == CONTENTS[case]  # left as it was


@pytest.mark.parametrize("case", sorted(CONTENTS))
def test_a_lock_of_any_content_is_taken_over_once_old(s3, aged_locks, case):  # noqa: F811
    """Old by the server's clock, whatever its heartbeat says (NaN, infinite, in the future)."""
    with lock_of(aged_locks[case]) as lock:
        assert lock.held
        assert json.loads(s3.fs.cat_file(f"{BUCKET}/aged-{case}.zarr.lock"))["job"] == lock.job
    assert not s3.fs.exists(f"{BUCKET}/aged-{case}.zarr.lock")


def test_a_live_lock_hidden_by_a_warm_listing_cache_is_not_taken(s3):  # noqa: F811
    """s3fs answers 'no such file' from a listing cached before the lock existed: only a fresh
    read of the object decides."""
    from lpclip_cache.storage import filesystem

    url = s3.url("cached/s.zarr")
    s3.fs.pipe_file(f"{BUCKET}/cached/other", b"x")
    fs, _ = filesystem(url)  # the instance the lock uses
    fs.ls(f"{BUCKET}/cached")  # listing cached without the lock
    live = json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}).encode()
    s3.fs.pipe_file(f"{BUCKET}/cached/s.zarr.lock", live)  # written by another client
    with pytest.raises(StoreError, match="is being written by pid 1 on elsewhere"):
        ObjectStoreLock(url).__enter__()
    assert s3.fs.cat_file(f"{BUCKET}/cached/s.zarr.lock") == live


def test_a_lock_released_between_the_create_and_the_read_is_created_again(s3, monkeypatch):  # noqa: F811
    from lpclip_cache.locks import S3Objects

    url = s3.url("vanish.zarr")
    holder = lock_of(url).__enter__()
    original = S3Objects.read

    def read_after_the_holder_let_go(self):
        if holder.held:
            holder.__exit__(None, None, None)
        return original(self)

    monkeypatch.setattr(S3Objects, "read", read_after_the_holder_let_go)
    with lock_of(url) as lock:
        assert lock.held


def test_a_lock_that_cannot_be_read_is_not_stale(s3, monkeypatch):  # noqa: F811
    """A read error (a denied or failed request) is one line, and the lock stays as it is."""
    from lpclip_cache.locks import S3Objects

    key = "unreadable.zarr.lock"
    s3.fs.pipe_file(f"{BUCKET}/{key}", json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": 0}).encode())
    wait_until_stale(s3, key)
    original = s3.fs.cat_file(f"{BUCKET}/{key}")

    def denied(self):
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(S3Objects, "read", denied)
    with pytest.raises(StoreError) as refused:
        lock_of(s3.url("unreadable.zarr")).__enter__()
    assert "cannot read the lock" in one_line(refused.value)
    assert s3.fs.cat_file(f"{BUCKET}/{key}") == original


@pytest.mark.parametrize("name,value", [("LPCLIP_LOCK_STALE_SECONDS", "soon"), ("LPCLIP_LOCK_STALE_SECONDS", "nan"),
                                        ("LPCLIP_LOCK_HEARTBEAT_SECONDS", "-1"),
                                        ("LPCLIP_LOCK_HEARTBEAT_SECONDS", "500")])
def test_lock_times_from_the_environment_are_checked(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=rf"\${name}|must be shorter") as refused:
        ObjectStoreLock("s3://bucket/s.zarr")
    assert "\n" not in str(refused.value)


# -- heartbeat and release ---------------------------------------------------------------------------


def heartbeat_thread() -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == "lpclip-store-lock"]
    return thread


def test_the_heartbeat_renews_only_its_own_lock(s3):  # noqa: F811
    """Another job replaced the lock (as a takeover does): the next heartbeat leaves it alone,
    the lock is lost, and the writer's check says so in one line."""
    url, key = s3.url("beat.zarr"), f"{BUCKET}/beat.zarr.lock"
    lock = lock_of(url, heartbeat=0.05)
    beats = []
    original = lock._record
    lock._record = lambda: (beats.append(threading.current_thread().name), original())[1]
    with lock:
        other = json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time(), "job": "other"}).encode()
        s3.fs.pipe_file(key, other)
        before = len(beats)
        thread = heartbeat_thread()
        wait_for(lambda: len(beats) >= before + 2 or (len(beats) > before and not thread.is_alive()),
                 "a heartbeat after the replacement")
        assert s3.fs.cat_file(key) == other
        with pytest.raises(StoreError) as lost:
            lock.check()
        assert "this job lost its lock" in one_line(lost.value) and "pid 1 on elsewhere" in str(lost.value)
    assert s3.fs.cat_file(key) == other  # release removes only its own lock


def test_release_waits_for_a_heartbeat_in_flight(s3):  # noqa: F811
    """A renewal already under way when the job lets go finishes before the lock is removed, so
    it cannot write the lock again after release."""
    url, key = s3.url("release.zarr"), f"{BUCKET}/release.zarr.lock"
    lock = lock_of(url, heartbeat=0.01)
    in_flight, go, joining = threading.Event(), threading.Event(), threading.Event()
    original = lock._record

    def record():
        if threading.current_thread().name == "lpclip-store-lock" and not go.is_set():
            in_flight.set()
            go.wait()
        return original()

    lock._record = record
    lock.__enter__()
    assert in_flight.wait(60)
    thread = heartbeat_thread()

    class Watched:  # the heartbeat thread, telling when release starts waiting for it
        def join(self):
            joining.set()
            thread.join()

    lock._thread = Watched()
    release = threading.Thread(target=lambda: (lock.__exit__(None, None, None), joining.set()))
    release.start()
    assert joining.wait(60)  # release is waiting for the heartbeat (or, without that wait, done)
    go.set()
    release.join()
    thread.join()
    assert not s3.fs.exists(key)


# -- fencing and the shard records ----------------------------------------------------------------------


def test_a_writer_that_lost_its_lock_writes_nothing(tmp_path):
    """Someone removed the lock file and another job locked the store: the first writer's next
    shard is refused before a chunk is written."""
    store = tmp_path / "s.zarr"
    layout, manifest, head = tiny_layout()
    writer = StoreWriter(store, layout, manifest)
    writer.begin(head)
    try:
        Path(f"{store}.lock").unlink()
        with StoreLock(store) as other:
            rows = {"clean/emb": np.ones((4, 4), np.float16) / 2, "labels": np.zeros(4, np.int32)}
            with pytest.raises(StoreError) as lost:
                writer.write_shard(0, rows)
            assert "this job lost its lock" in one_line(lost.value) and f"pid {os.getpid()}" in str(lost.value)
            with pytest.raises(StoreError, match="this job lost its lock"):
                writer.finish()
            assert other.held
    finally:
        writer.release()
    opened = FeatureStore(store, require_complete=False)
    assert opened.read("done").tolist() == [0, 0] and np.isnan(opened.read("clean/emb")).all()
    assert not opened.meta["complete"]


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory):
    """Two complete stores of one layout, written by two jobs with different embeddings."""
    folder = tmp_path_factory.mktemp("jobs")
    stores = []
    for seed in (1, 2):
        centres, labels, clean, views = clustered_embeddings(24, 3, 8, 0.3, seed=seed, views=2)
        stores.append(write_store(folder / f"{seed}.zarr", clean, centres, labels, weak=views, strong=views,
                                  shard_size=8))
    return stores


def copy_chunks(source: Path, target: Path, names: list[str], shard: int) -> None:
    """Copy shard ``shard``'s chunk files of ``names`` from one store into another, as a writer
    that lost its lock would have written them."""
    for name in names:
        for chunk in (source / name / "c").glob(f"{shard}*"):
            destination = target / name / "c" / chunk.name
            if chunk.is_dir():
                shutil.copytree(chunk, destination, dirs_exist_ok=True)
            else:
                shutil.copy(chunk, destination)


def test_verify_rejects_shards_another_job_wrote(two_jobs, tmp_path):
    first, second = two_jobs
    assert verify(str(first))["ok"]

    foreign = Path(shutil.copytree(first, tmp_path / "foreign.zarr"))  # a whole shard of the other job
    names = ["clean/emb", "clean/label", "clean/conf", "weak/emb", "strong/emb", "strong/conf", "shard_job",
             "shard_sha256"]
    copy_chunks(second, foreign, names, 1)
    report = verify(str(foreign))
    assert not report["ok"]
    assert report["problems"] == ["1 done shard(s) written by a job this store does not list (a writer that had "
                                  "lost its lock, or a finish by one that rewrote the attribute): 1"]

    torn = Path(shutil.copytree(first, tmp_path / "torn.zarr"))  # its strong views from the other job
    copy_chunks(second, torn, ["strong/emb", "strong/conf"], 2)
    report = verify(str(torn))
    assert report["problems"] == ["1 done shard(s) whose rows do not match their record (written in part by "
                                  "another job): 2"]

    finished = Path(shutil.copytree(first, tmp_path / "finished.zarr"))  # a fenced writer's finish()
    document = json.loads((finished / "zarr.json").read_text())
    document["attributes"]["lpclip_cache"]["jobs"] = json.loads((second / "zarr.json").read_text())[
        "attributes"]["lpclip_cache"].get("jobs", ["another job"])
    (finished / "zarr.json").write_text(json.dumps(document))
    report = verify(str(finished))
    assert len(report["problems"]) == 1 and report["problems"][0].startswith("3 done shard(s) written by a job")
    jobs = FeatureStore(first).meta["jobs"]
    assert len(jobs) == 1 and set(FeatureStore(first).read("shard_job").tolist()) == set(jobs)


def test_a_store_of_format_1_verifies_without_shard_records(two_jobs, tmp_path):
    """Stores written before the records: read and verified as before, and said so."""
    from click.testing import CliRunner

    from lpclip_cache.cli import main

    old = Path(shutil.copytree(two_jobs[0], tmp_path / "old.zarr"))
    root = zarr.open_group(str(old), mode="r+")
    del root["shard_job"], root["shard_sha256"]
    meta = dict(root.attrs["lpclip_cache"])
    meta.pop("jobs")
    root.attrs["lpclip_cache"] = {**meta, "format_version": 1}
    report = verify(str(old))
    assert report["ok"] and report["shard_records"] is False
    shown = CliRunner().invoke(main, ["verify", str(old)])
    assert shown.exit_code == 0 and "records  none: a store of format 1" in shown.stdout


# -- a crash between creating a store and writing its head -------------------------------------------


def test_a_crash_before_the_head_is_written_resumes_with_the_head(tiny_checkpoint, tmp_path, monkeypatch):
    import lpclip_cache.store as store_module

    options = dict(data="shapes:test:n=48:seed=2", model="test-tiny", pretrained=str(tiny_checkpoint),
                   weak_views=0, strong_views=0, shard_size=16, batch_size=16, num_workers=0, device="cpu",
                   progress=False)
    created = store_module.create_store

    def crash_after_creating(*args, **kwargs):
        created(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C, or a kill, right after the store exists

    out = tmp_path / "s.zarr"
    monkeypatch.setattr(store_module, "create_store", crash_after_creating)
    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(out=str(out), **options))
    monkeypatch.setattr(store_module, "create_store", created)
    assert np.isnan(FeatureStore(out, require_complete=False).read("head")).all()
    assert extract(ExtractConfig(out=str(out), **options))["state"] == "resume"
    assert verify(str(out))["ok"]
    alone = tmp_path / "alone.zarr"
    extract(ExtractConfig(out=str(alone), **options))
    assert_same_store(alone, out)


# -- a writer paused past the takeover: real processes on moto's S3 ------------------------------------

FENCED = ["--data", "shapes:train:n=96:seed=3", "--model", "test-tiny", "--weak-views", "0", "--strong-views",
          "1", "--shard-size", "16", "--batch-size", "64", "--workers", "0", "--device", "cpu", "--quiet"]
TIMES = {"LPCLIP_LOCK_STALE_SECONDS": "2", "LPCLIP_LOCK_HEARTBEAT_SECONDS": "0.25"}


def second_job(checkpoint: Path, out: str, **extra) -> ExtractConfig:
    """The job that takes over, run in this process (seed 1): the same options as ``FENCED``."""
    return ExtractConfig(data="shapes:train:n=96:seed=3", out=out, model="test-tiny", pretrained=str(checkpoint),
                         weak_views=0, strong_views=1, shard_size=16, batch_size=64, num_workers=0, device="cpu",
                         progress=False, seed=1, **extra)


def one_thread(run):
    """Run ``run()`` with one torch thread, as the command-line processes of these tests use."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alone(tiny_checkpoint, tmp_path_factory):
    """The second job's store, written alone."""
    out = tmp_path_factory.mktemp("alone") / "alone.zarr"
    one_thread(lambda: extract(second_job(tiny_checkpoint, str(out))))
    return out


@pytest.mark.parametrize("takeover", ["overwrite", "resume"])
def test_a_paused_writer_loses_its_lock_and_writes_nothing_more(s3, tiny_checkpoint, alone, monkeypatch,  # noqa: F811
                                                               takeover):
    """SIGSTOP a writer once it has written a shard; once its lock is older than the stale time a
    second job takes the store over (``--overwrite --seed 1``, or the same command resuming), and
    SIGCONT the first as soon as the second holds the lock. The first stops with one line and
    writes nothing more (the second waits for it to exit before writing any shard); the store
    verifies and equals the second job's store written alone."""
    name = f"fenced-{takeover}.zarr"
    url = s3.url(name)
    seed = "0" if takeover == "overwrite" else "1"
    hold = Hold("img", 64)  # held after its first batch: it cannot finish before it is paused
    first = subprocess.Popen([sys.executable, "-m", "lpclip_cache", "extract", *FENCED, "--out", url,
                              "--pretrained", str(tiny_checkpoint), "--seed", seed],
                             env={**s3.env, **TIMES, **hold.env}, pass_fds=hold.fds, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    hold.started()
    try:
        def done_chunks() -> int:
            try:
                return len(s3.fs.ls(f"{BUCKET}/{name}/done/c", refresh=True))
            except FileNotFoundError:
                return 0

        hold.reached(first)
        wait_for(lambda: done_chunks() >= 1 or first.poll() is not None, "the first job's first shard", 300)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first job stopped before it could be paused"
        wait_until_stale(s3, f"{name}.lock", float(TIMES["LPCLIP_LOCK_STALE_SECONDS"]))

        for key, value in TIMES.items():
            monkeypatch.setenv(key, value)
        begin = StoreWriter.begin
        first_err: list[str] = []

        def begin_then_wake_the_first(self, *args, **kwargs):
            state = begin(self, *args, **kwargs)  # this job holds the lock now
            os.kill(first.pid, signal.SIGCONT)
            hold.release()  # the first goes on to its next shard
            first_err.append(first.communicate(timeout=300)[1])
            return state

        monkeypatch.setattr(StoreWriter, "begin", begin_then_wake_the_first)
        config = second_job(tiny_checkpoint, url, overwrite=takeover == "overwrite")
        summary = one_thread(lambda: extract(config))
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert summary["state"] == ("new" if takeover == "overwrite" else "resume")
    assert first.returncode == 5, first_err
    lines = [line for line in first_err[0].splitlines() if line.strip()]
    assert "Traceback" not in first_err[0] and len(lines) == 1, first_err[0]
    assert lines[0].startswith(f"lpclip-cache: error: store '{url}': this job lost its lock '{url}.lock'")
    assert f"pid {os.getpid()}" in lines[0]
    assert not s3.fs.exists(f"{BUCKET}/{name}.lock")  # released by the second; the first did not renew it
    assert verify(url)["ok"]
    assert_same_store(alone, url)
    store = FeatureStore(url)
    jobs, writers = store.meta["jobs"], set(store.read("shard_job").tolist())
    if takeover == "overwrite":
        assert len(jobs) == 1 and writers == set(jobs)  # every shard from the second job
    else:
        assert len(jobs) == 2 and writers == set(jobs)  # the first's shards kept, the rest from the second
