"""Faults at run time: signals, a full disk, a crash while writing, and two writers at once.

Nothing is lost (an interrupted or failed extraction resumes to the store an uninterrupted run
makes, bit for bit; an output being replaced stays whole) and nothing is confusing (one line,
a documented exit code, no traceback, no half-written file that looks complete).

Signals are real: the commands run in their own process group (as a shell runs a job) and the
whole group is signalled, DataLoader workers included, as Ctrl-C at a terminal does. A full disk
cannot be made here without root (no tmpfs to fill), so it is simulated by making the writes of
one library raise ``OSError(ENOSPC)`` (or, for safetensors, the error its Rust writer raises),
part-way through where the writer is Python; every such test says so.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Hold, assert_same_store, clustered_embeddings, run_cli, write_store

from lpclip_cache.cli import main
from lpclip_cache.errors import StoreError
from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.runs import load_run
from lpclip_cache.store import FeatureStore, StoreLock
from lpclip_cache.training import TrainConfig, train

DATA = "shapes:train:n=160:seed=5"
SHARD = 16
SHARDS = 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def extract_args(out: Path, checkpoint: Path, workers: int = 0) -> list[str]:
    return ["extract", "--data", DATA, "--out", str(out), "--model", "test-tiny", "--pretrained", str(checkpoint),
            "--weak-views", "0", "--strong-views", "1", "--shard-size", str(SHARD), "--batch-size", str(SHARD),
            "--workers", str(workers), "--device", "cpu", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# The CLI as a terminal's shell starts a foreground job: SIGINT handled by Python (KeyboardInterrupt)
# and no signal blocked. A process started with SIGINT ignored keeps it ignored across exec, and
# Python then installs no handler for it: that is how a POSIX shell without job control starts a
# command with `&`, so a suite run as `make test &` from a script (as it was beside other work)
# gave every command it started a deaf ear to SIGINT, and the Ctrl-C tests failed there.
FOREGROUND = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "signal.pthread_sigmask(signal.SIG_SETMASK, ()); runpy.run_module('lpclip_cache', run_name='__main__')")


def start(args: list[str], hold: Hold | None = None, **popen) -> subprocess.Popen:
    """The CLI in a fresh interpreter, leading its own process group, as a foreground job (see
    FOREGROUND); with ``hold``, held at its point (``hold.reached`` waits for that)."""
    popen = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **popen}
    env, fds = ({**ENV, **hold.env}, hold.fds) if hold else (ENV, ())
    process = subprocess.Popen([sys.executable, "-c", FOREGROUND, *args], env=env, pass_fds=fds, text=True,
                               start_new_session=True, **popen)
    if hold:
        hold.started()
    return process


def held_after_shards(args: list[str], shards: int, **popen) -> tuple[subprocess.Popen, Hold]:
    """An extraction started and held once it has handed ``shards`` more shards to its writer: those
    are done when it stops, and it cannot finish before it is stopped."""
    hold = Hold("img", shards * SHARD)
    process = start(args, hold, **popen)
    hold.reached(process)
    return process, hold


def assert_group_gone(process: subprocess.Popen) -> None:
    """No process of the command's group (a DataLoader worker, say) outlives it (the deadline only
    bounds a failing test: a worker leaves within seconds of its main process)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("a process of the interrupted command is still running")


def assert_one_line(stderr: str, prefix: str, *fragments: str) -> str:
    __tracebackhide__ = True
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith(prefix), stderr
    assert sum(line.startswith("lpclip-cache:") for line in lines) == 1, stderr
    for fragment in fragments:
        assert str(fragment) in lines[-1], lines[-1]
    return lines[-1]


def assert_unlocked(out: Path) -> None:
    assert not Path(f"{out}.lock").exists()
    with StoreLock(out):  # another writer may take it now
        pass



def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings a writer left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ("partial" in p.name
                                                                                 or ".old" in p.name))


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file's bytes under ``path`` (or of the file ``path``), by relative name."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tmp_path_factory) -> Path:
    """The store one uninterrupted run makes (in this process: the tiny model's numbers do not
    depend on the thread count, checked against a one-thread subprocess while writing these tests)."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    extract(ExtractConfig(data=DATA, out=str(out), model="test-tiny", pretrained=str(tiny_checkpoint), weak_views=0,
                          strong_views=1, shard_size=SHARD, batch_size=SHARD, num_workers=0, device="cpu",
                          progress=False))
    return out


# -- signals during extract ------------------------------------------------------------------


def test_extract_survives_sigint_sigterm_and_a_second_writer(reference, tiny_checkpoint, tmp_path):
    """Stopped by SIGINT, then by SIGTERM (exit 130, then 143: one line saying how many shards are
    done, the lock released, no worker left), then finished by a run that a second writer tries to
    join while it holds the lock: that one is refused with one line and exit 5, and the store ends
    bit-identical to an uninterrupted run's. The library-level refusal is
    tests/test_extract_scale.py::test_a_second_writer_is_refused.

    Each run is held (``Hold``) once it has handed a known number of shards to its writer, and
    signalled there: it cannot finish first however loaded the machine is (the test once expected
    130 and got 0), and the shards done are known exactly. The signal interrupts the held wait
    as it would any blocking read; the shards already handed over are finished first."""
    out = tmp_path / "s.zarr"
    first, hold = held_after_shards(extract_args(out, tiny_checkpoint, workers=1), 2)  # a decode worker too
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    hold.release()
    assert first.returncode == 130, stderr
    done = int(FeatureStore(out, require_complete=False).read("done").sum())
    assert done == 2
    assert_one_line(stderr, "lpclip-cache: interrupted by SIGINT: ",
                    f"{done} of {SHARDS} shards of store '{out}' are done; run the same command again to resume")
    assert_group_gone(first)
    assert_unlocked(out)

    second, hold = held_after_shards(extract_args(out, tiny_checkpoint, workers=1), 3)
    os.killpg(second.pid, signal.SIGTERM)
    _, stderr = second.communicate(timeout=120)
    hold.release()
    assert second.returncode == 143, stderr
    again = int(FeatureStore(out, require_complete=False).read("done").sum())
    assert again == done + 3
    assert_one_line(stderr, "lpclip-cache: interrupted by SIGTERM: ", f"{again} of {SHARDS} shards")
    assert_group_gone(second)
    assert_unlocked(out)

    finish, hold = held_after_shards([*extract_args(out, tiny_checkpoint), "--json"], 1, stdout=subprocess.PIPE)
    try:
        intruder = run_cli(*extract_args(out, tiny_checkpoint), env=ENV)
    finally:
        hold.release()
    assert intruder.returncode == 5
    assert_one_line(intruder.stderr, "lpclip-cache: error: ", f"store '{out}' is being written by pid {finish.pid}: "
                    "wait for it to finish, or write another --out")
    stdout, stderr = finish.communicate(timeout=300)
    assert finish.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["state"] == "resume" and summary["written"] == (SHARDS - again) * SHARD
    assert_same_store(reference, out)
    assert_unlocked(out)


# -- signals during train --------------------------------------------------------------------


@pytest.fixture
def train_store(tmp_path) -> Path:
    centres, labels, clean, views = clustered_embeddings(3000, 5, 32, 0.3, seed=1, views=2)
    return write_store(tmp_path / "train.zarr", clean, centres, labels, weak=views, strong=views, shard_size=500)


def run_on_a_terminal(args: list[str], signum: int, hold: Hold) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (as at a terminal: progress redrawn in place), send
    the process group ``signum`` once it is held at ``hold``, and return its status and output."""
    leader, follower = pty.openpty()
    process = start(args, hold, stderr=follower)
    os.close(follower)
    try:
        hold.reached(process)
        os.killpg(process.pid, signum)
        output = b""
        while True:  # until every process holding the terminal has exited
            ready, _, _ = select.select([leader], [], [], 120)
            assert ready, f"no end after {signal.Signals(signum).name}: {output.decode(errors='replace')}"
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        hold.release()
        os.close(leader)
    process.wait(timeout=60)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_train_writes_nothing_and_keeps_the_old_run(signum, code, train_store, tmp_path):
    """Signalled while held inside its first epoch (``Hold``: after its first batch), ``train
    --overwrite`` stops at once and leaves the older run byte-identical.

    The SIGINT case once trained on for two minutes and exited 1 (its terminal closed under it):
    the suite had been started with SIGINT ignored, which every command it started inherited (see
    FOREGROUND), not because the machine was loaded. Run at a terminal, training stops at the
    next Python instruction after Ctrl-C, loaded machine or not: a step is a few milliseconds of
    torch, and nothing in training catches KeyboardInterrupt but to say what was left."""
    run = tmp_path / "run"
    train(TrainConfig(store=str(train_store), out=str(run), epochs=1, progress=False))
    before = snapshot(run)
    args = ["train", "--store", str(train_store), "--out", str(run), "--epochs", "100000", "--overwrite"]
    status, output = run_on_a_terminal(args, signum, Hold("samples", 1))
    assert status == code, output
    line = assert_one_line(output, f"lpclip-cache: interrupted by {signal.Signals(signum).name}: training stopped "
                           f"in epoch 1 of 100000; run '{run}' was not written (any run already there is untouched)")
    assert "run the same command again" in line
    assert snapshot(run) == before
    assert leftovers(tmp_path) == []
    rerun = invoke("train", "--store", train_store, "--out", run, "--epochs", "2", "--overwrite", "--quiet")
    assert rerun.exit_code == 0, rerun.stderr
    assert load_run(run).info["config"]["epochs"] == 2


# -- a full disk -----------------------------------------------------------------------------


def test_full_disk_during_extract_keeps_done_shards_and_resumes(reference, tiny_checkpoint, tmp_path, monkeypatch):
    """Simulated: zarr's local store refuses every write with ENOSPC once three shards are marked
    done (zarr writes each chunk to a temporary file and renames it, so what it does write is whole)."""
    import zarr

    out = tmp_path / "s.zarr"
    real_set = zarr.storage.LocalStore.set
    marked = []

    async def filling_set(self, key, value):
        if len(marked) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        await real_set(self, key, value)
        if key.startswith("done/c/"):
            marked.append(key)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", filling_set)
    full = invoke(*extract_args(out, tiny_checkpoint))
    assert full.exit_code == 5, full.stderr
    assert_one_line(full.stderr, "lpclip-cache: error: ",
                    f"cannot write store '{out}' (no space left on device): free space, then run the same command "
                    "again: it resumes, keeping the shards already done")
    assert_unlocked(out)
    assert not list(out.rglob("*.partial"))
    opened, whole = FeatureStore(out, require_complete=False), FeatureStore(reference)
    done = opened.read("done").astype(bool)
    assert done.sum() == 3
    rows = np.repeat(done, SHARD)
    for name in ("clean/emb", "strong/emb", "strong/label", "keys"):
        np.testing.assert_array_equal(opened.read_rows(name, check_finite=False)[rows], whole.read(name)[rows])

    monkeypatch.undo()  # space freed
    resumed = invoke(*extract_args(out, tiny_checkpoint), "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["written"] == (SHARDS - 3) * SHARD
    assert_same_store(reference, out)


def rust_disk_full(monkeypatch) -> None:
    """Simulated: safetensors writes half the file, then fails as its Rust writer does on a full disk."""
    import safetensors.numpy
    from safetensors import SafetensorError

    def half_then_full(tensors, filename, metadata=None):
        data = safetensors.numpy.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_full)


def test_full_disk_while_saving_a_run_keeps_the_old_run(train_store, tmp_path, monkeypatch):
    """Simulated full disk (see rust_disk_full) under ``train --overwrite``."""
    run = tmp_path / "run"
    train(TrainConfig(store=str(train_store), out=str(run), epochs=1, progress=False))
    before = snapshot(run)
    rust_disk_full(monkeypatch)
    result = invoke("train", "--store", train_store, "--out", run, "--epochs", "2", "--overwrite", "--quiet")
    assert result.exit_code == 5
    assert_one_line(result.stderr, "lpclip-cache: error: ", f"cannot write run '{run}' (no space left on device): "
                    "free space, then run the same command again (any run already there is untouched)")
    assert snapshot(run) == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert invoke("train", "--store", train_store, "--out", run, "--epochs", "2", "--overwrite",
                  "--quiet").exit_code == 0
    assert load_run(run).info["config"]["epochs"] == 2


# -- outputs are whole or absent ---------------------------------------------------------------


class FailingFile:
    """A file opened for writing that writes half of its first write, then raises ``error``."""

    def __init__(self, stream: io.IOBase, error: BaseException) -> None:
        self.stream, self.error = stream, error

    def write(self, data):
        self.stream.write(data[: len(data) // 2])
        self.stream.flush()
        raise self.error

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


def fail_writes_under(folder: Path, error: BaseException, monkeypatch) -> None:
    """Simulated: every Python-level open for writing under ``folder`` (json, Markdown, PNG through
    PIL) fails part-way with ``error``; HDF5 writes (C library) fail on their first dataset write."""
    import builtins

    import h5py

    real_open = builtins.open

    def failing_open(file, mode="r", *args, **kwargs):
        stream = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        inside = isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(folder.resolve())
        return FailingFile(stream, error) if writing and inside else stream

    def failing_dataset_write(self, key, value):
        raise error if isinstance(error, KeyboardInterrupt) else OSError(
            errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28, error message = 'No "
            "space left on device')")

    monkeypatch.setattr(builtins, "open", failing_open)
    monkeypatch.setattr(io, "open", failing_open)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing_dataset_write)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A small store and a run trained on it, for the writers of reports, plots and exports."""
    work = tmp_path_factory.mktemp("scored")
    centres, labels, clean, weak = clustered_embeddings(400, 4, 16, 0.3, seed=2, views=1)
    store = write_store(work / "s.zarr", clean, centres, labels, weak=weak, strong=weak, shard_size=100)
    train(TrainConfig(store=str(store), out=str(work / "run"), epochs=2, progress=False))
    return store, work / "run"


WRITERS = {
    "report json": (lambda store, run, out: ["evaluate", "--run", run, "--store", store, "--out", out], "r.json"),
    "report folder": (lambda store, run, out: ["evaluate", "--run", run, "--store", store, "--report", out], "rep"),
    "projection png": (lambda store, run, out: ["analyze", "latent", "projection", "--store", store, "--out", out],
                       "p.png"),
    "hdf5 export": (lambda store, run, out: ["export", store, "--out", out], "s.h5"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_full_disk_while_replacing_an_output_keeps_the_old_one(writer, scored, tmp_path, monkeypatch):
    """Simulated full disk (see fail_writes_under) while ``--overwrite`` replaces an output."""
    command, name = WRITERS[writer]
    folder = tmp_path / "outputs"
    out = folder / name
    first = invoke(*command(*scored, out))
    assert first.exit_code == 0, first.stderr
    before = snapshot(out)
    fail_writes_under(folder, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), monkeypatch)
    result = invoke(*command(*scored, out), "--overwrite")
    monkeypatch.undo()
    assert result.exit_code == 5, (result.stderr, result.exception)
    assert_one_line(result.stderr, "lpclip-cache: error: cannot write ", f"'{out}' (no space left on device): "
                    "free space, then run the same command again")
    assert snapshot(out) == before
    assert leftovers(folder) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_output_interrupted_while_written_is_absent_not_half_written(writer, scored, tmp_path, monkeypatch):
    """Simulated crash: an interrupt raised part-way through the write (see fail_writes_under)."""
    command, name = WRITERS[writer]
    folder = tmp_path / "outputs"
    folder.mkdir()
    out = folder / name
    fail_writes_under(folder, KeyboardInterrupt(), monkeypatch)
    result = invoke(*command(*scored, out))
    monkeypatch.undo()
    assert result.exit_code == 130, (result.stderr, result.exception)
    assert_one_line(result.stderr, "lpclip-cache: interrupted by SIGINT")
    assert not out.exists()
    assert leftovers(folder) == []


def test_run_interrupted_while_saved_is_absent(train_store, tmp_path, monkeypatch):
    """Simulated crash: the run's weights are half written when an interrupt arrives."""
    import safetensors.numpy

    def half_then_interrupt(tensors, filename, metadata=None):
        data = safetensors.numpy.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_interrupt)
    result = invoke("train", "--store", train_store, "--out", tmp_path / "run", "--epochs", "1", "--quiet")
    assert result.exit_code == 130
    assert not (tmp_path / "run").exists()
    assert leftovers(tmp_path) == []


# -- two writers of one run ------------------------------------------------------------------


def test_a_run_written_meanwhile_by_another_process_is_not_replaced(tmp_path):
    from lpclip_cache.outputs import atomic_dir

    run = tmp_path / "run"
    with pytest.raises(StoreError, match=rf"run '{run}' was written by another process while this one was working"):
        with atomic_dir(run, "run") as staging:
            (staging / "run.json").write_text("mine")
            run.mkdir()  # the other process renames its whole run into place first
            (run / "run.json").write_text("theirs")
    assert (run / "run.json").read_text() == "theirs"
    assert leftovers(tmp_path) == []
    with atomic_dir(run, "run", replace=True) as staging:  # --overwrite: the last one wins, whole
        (staging / "run.json").write_text("mine")
    assert snapshot(run) == {"run.json": b"mine"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_trains_into_one_run_leave_one_whole_run(overwrite, train_store, tmp_path):
    """No lock is needed: each run is built in its own hidden folder and renamed into place whole.
    Without --overwrite the later one is refused (exit 5); with it the later one replaces the
    earlier; either way the run at --out is whole and loads."""
    run = tmp_path / "run"
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            train(TrainConfig(store=str(train_store), out=str(run), epochs=20, seed=seed, overwrite=overwrite,
                              progress=False))
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if overwrite:
        assert errors == []
    else:
        assert len(errors) == 1
        assert f"run '{run}'" in str(errors[0])
        assert "already exists" in str(errors[0]) or "was written by another process" in str(errors[0])
    assert load_run(run).info["config"]["seed"] in (1, 2)
    assert leftovers(tmp_path) == []


def test_a_decode_worker_keeps_quiet_only_about_the_main_process_leaving():
    """An interrupt can stop the main process while a decode worker's resource-sharer thread is
    handing it a batch; that thread then reports a reset connection through sys.excepthook. The
    worker set-up silences exactly that kind of error and still reports any other."""
    code = (
        "import sys\n"
        "from lpclip_cache.extraction import leave_signals_to_the_main_process\n"
        "leave_signals_to_the_main_process(0)\n"
        "for error in (ConnectionResetError(104, 'Connection reset by peer'), BrokenPipeError(), EOFError()):\n"
        "    sys.excepthook(type(error), error, None)\n"
        "print('quiet so far', file=sys.stderr, flush=True)\n"
        "sys.excepthook(ValueError, ValueError('a real failure'), None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, _, after = result.stderr.partition("quiet so far\n")
    assert "Connection" not in before and "Error" not in before
    assert "ValueError: a real failure" in after
