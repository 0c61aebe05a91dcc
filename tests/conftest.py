"""Shared fixtures: real CIFAR-10 JPEGs shipped in tests/data, generated images, tiny checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs two workers on two cores: one thread each
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

import numpy as np  # noqa: E402 (after the thread settings, which numpy reads when imported)
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CIFAR_FIXTURE = ROOT / "tests" / "data" / "cifar10"  # 20 real test JPEGs per class (see its README)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# No network here: make the hub client fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def package_logger_as_a_caller_finds_it() -> None:
    """Each test starts with the package's logger as a Python caller finds it: without the handler
    an in-process command (click's CliRunner) gave it, and propagating, so ``caplog`` sees its records."""
    import logging

    logger = logging.getLogger("lpclip_cache")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def cifar_files(split: str = "test") -> list[Path]:
    """The fixture's JPEGs, class by class, in file order."""
    files = sorted((CIFAR_FIXTURE / split).glob("*/*.jpg"))
    assert len(files) == 20 * len(CLASSES), f"the CIFAR-10 fixture under {CIFAR_FIXTURE} is incomplete"
    return files


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder root with ``test/<class>/`` holding 20 real CIFAR-10 JPEGs per class (a copy of
    the repository's fixture, so tests may add files beside them)."""
    dest = tmp_path_factory.mktemp("cifar")
    shutil.copytree(CIFAR_FIXTURE / "test", dest / "test")
    cifar_files()
    return dest


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """A small ImageFolder of generated PNG/JPEG images of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = size + int(rng.integers(0, 9)), size + int(rng.integers(0, 17))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., c % 3] = np.clip(pixels[..., c % 3].astype(int) + 80, 0, 255)
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(pixels).save(folder / f"img_{i}{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Generated images in three classes."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ``test-tiny`` state dict saved to a file (loaded via --pretrained PATH)."""
    import torch

    from lpclip_cache.models import load_model

    torch.manual_seed(1234)
    loaded = load_model("test-tiny", "none", device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "test-tiny.pt"
    torch.save(loaded.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def shapes_teacher(tmp_path_factory: pytest.TempPathFactory):
    """The demo's default teacher, trained once per session into a private cache folder that
    ``$LPCLIP_CACHE_DIR`` points at for the rest of the session (and its subprocesses)."""
    from lpclip_cache.world.teacher import TeacherConfig, ensure_teacher

    # LPCLIP_TEST_CACHE_DIR reuses a folder across sessions (the file name hashes the teacher's
    # configuration, so a stale teacher is never picked up); CI leaves it unset and trains once.
    reuse = os.environ.get("LPCLIP_TEST_CACHE_DIR")
    folder = Path(reuse) if reuse else tmp_path_factory.mktemp("teacher-cache")
    previous = os.environ.get("LPCLIP_CACHE_DIR")
    os.environ["LPCLIP_CACHE_DIR"] = str(folder)
    yield ensure_teacher(TeacherConfig(), progress=False)
    if previous is None:
        os.environ.pop("LPCLIP_CACHE_DIR", None)
    else:
        os.environ["LPCLIP_CACHE_DIR"] = previous


# setpriv options that drop the capabilities by which root ignores file permissions
UNPRIVILEGED = ["--bounding-set=-dac_override,-dac_read_search"]
# runs each argument list (JSON in argv[1]) through the command line in one process, printing the results as JSON
SCRIPT = """
import json, sys
from click.testing import CliRunner
from lpclip_cache.cli import main
out = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args)
    out.append({"code": result.exit_code, "stderr": result.stderr, "output": result.output})
print(json.dumps(out))
"""


class Hold:
    """Holds a command at a known point of its progress, through the test hook of
    ``lpclip_cache.progress``: once its progress line counting ``unit`` reaches ``count``, it says
    so and waits for ``release``. While held it cannot finish, so a test can signal it, kill it or
    run a second command beside it knowing exactly how far it got, on a loaded machine too.

    Start the command with ``env={**env, **hold.env}`` and ``pass_fds=hold.fds``, then call
    ``started``."""

    def __init__(self, unit: str, count: int) -> None:
        from lpclip_cache.progress import HOLD_VARIABLE

        self.report, report_end = os.pipe()
        release_end, self.release_end = os.pipe()
        self.fds = (report_end, release_end)
        self.env = {HOLD_VARIABLE: f"{unit}:{count}:{report_end}:{release_end}"}
        self.expected = f"{unit} {count}\n"

    def started(self) -> None:
        """Close the command's ends here, so that its exit reads as end-of-file."""
        for fd in self.fds:
            os.close(fd)

    def reached(self, process: subprocess.Popen, timeout: float = 300) -> None:
        """Block until the command is held (the timeout only bounds a failing test)."""
        import select

        ready, _, _ = select.select([self.report], [], [], timeout)
        said = os.read(self.report, 100).decode() if ready else ""
        assert said == self.expected, f"the command never reached its hold (said {said!r}, exit {process.poll()})"

    def release(self) -> None:
        """Let the command go on."""
        os.close(self.release_end)
        os.close(self.report)


def sigkill_after_shards(process: subprocess.Popen, written: Any, at_least: int = 3, hold: Hold | None = None,
                         timeout: float = 240) -> None:
    """SIGKILL an extraction once ``written()`` (the number of shard markers it has written so
    far) reaches ``at_least``, as a crash or a pre-empted job would end it; it must still run then.

    With ``hold`` (set to at least ``at_least`` shards of images) it waits for the command to be
    held first, so the count is exact and the command cannot finish before it is killed, however
    slow this machine is; the wait for the markers then only lets the writer thread finish."""
    import signal
    import time

    if hold is not None:
        hold.reached(process)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and written() < at_least:
        time.sleep(0.02)
    assert process.poll() is None, "extraction finished before it could be killed: make it longer"
    assert written() >= at_least
    process.send_signal(signal.SIGKILL)
    process.wait()
    if hold is not None:
        hold.release()


def local_shards_written(store: Path) -> Any:
    """How many shard markers a local store's ``done`` array has on disk (for ``sigkill_after_shards``).

    Only committed chunks count: zarr writes a chunk to ``KEY.<uuid>.partial`` beside it and renames
    it into place, so a name with a suffix is a marker still being written (counting those made a
    killed run look one shard further than it was)."""
    folder = store / "done" / "c"
    return lambda: sum(p.name.isdigit() for p in folder.iterdir()) if folder.is_dir() else 0


def interrupt_writes_after(monkeypatch: pytest.MonkeyPatch, shards: int):
    """Make the store writer raise KeyboardInterrupt, as Ctrl-C would, once ``shards`` shards are
    written; returns the function that puts the real writer back."""
    from lpclip_cache.store import StoreWriter

    original, written = StoreWriter.write_shard, []

    def interrupted(self, shard, arrays):
        if len(written) == shards:
            raise KeyboardInterrupt
        original(self, shard, arrays)
        written.append(shard)

    monkeypatch.setattr(StoreWriter, "write_shard", interrupted)
    return lambda: monkeypatch.setattr(StoreWriter, "write_shard", original)



JOB_RECORDS = ("shard_job",)  # names the job that wrote each shard: random per job, so never equal across jobs


def assert_same_store(a: str | Path, b: str | Path) -> None:
    """Two stores hold the same numbers: every array equal (but the job records), the same cache key."""
    from lpclip_cache.store import FeatureStore

    first, second = FeatureStore(a), FeatureStore(b)
    assert first.arrays() == second.arrays()
    for name in first.arrays():
        if name not in JOB_RECORDS:
            np.testing.assert_array_equal(first.read(name), second.read(name), err_msg=name)
    assert first.cache_key == second.cache_key

def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``lpclip-cache`` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lpclip_cache", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_store(
    path: Path,
    clean: np.ndarray,
    head: np.ndarray,
    labels: np.ndarray,
    weak: np.ndarray | None = None,
    strong: np.ndarray | None = None,
    scale: float = 100.0,
    temperature: float = 1.0,
    model: str = "synthetic",
    shard_size: int = 64,
) -> Path:
    """A complete store from given embeddings, written through the store API (teacher outputs computed)."""
    from lpclip_cache.store import Layout, StoreWriter
    from lpclip_cache.zeroshot import teacher_outputs

    n, dim = clean.shape
    layout = Layout(n, dim, head.shape[0], 0 if weak is None else weak.shape[1],
                    0 if strong is None else strong.shape[1], shard_size)
    manifest = {
        "model": {"name": model, "pretrained": {"kind": "none", "value": None, "sha256": None}, "embed_dim": dim},
        "classnames": [f"class {i}" for i in range(head.shape[0])],
        "templates": ["a photo of a {}."],
        "teacher": {"logit_scale": scale, "temperature": temperature},
        "views": {"weak": layout.weak_views, "strong": layout.strong_views, "seed": 0, "shard_size": shard_size},
        "dataset": {"kind": "synthetic", "spec": "synthetic", "split": None, "n": n},
        "precision": "fp32",
        "device": "cpu",
        "versions": {},
    }
    rows: dict[str, np.ndarray] = {}
    for kind, emb in (("clean", clean), ("weak", weak), ("strong", strong)):
        if emb is None:
            continue
        emb16 = emb.astype(np.float16)
        rows[f"{kind}/emb"] = emb16
        rows[f"{kind}/label"], rows[f"{kind}/conf"] = teacher_outputs(emb16, head.astype(np.float32), scale,
                                                                      temperature)
    rows["labels"] = labels.astype(np.int32)
    rows["valid"] = np.ones(n, bool)
    rows["keys"] = np.array([f"sample/{i}" for i in range(n)])
    rows["reason"] = np.array([""] * n)
    writer = StoreWriter(path, layout, manifest)  # the writer extraction uses: shards recorded, then complete
    try:
        writer.begin(head.astype(np.float32))
        writer.write_shards(0, layout.n_shards, rows)
        writer.finish()
    finally:
        writer.release()
    return path


def clustered_embeddings(
    n: int, classes: int, dim: int, spread: float, seed: int = 0, views: int = 0, centres: np.ndarray | None = None
):
    """Unit embeddings around one centre per class (random unless given), and ``views`` noisy copies each."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = unit(rng.normal(size=(classes, dim)))
    labels = rng.integers(0, classes, n)
    clean = unit(centres[labels] + spread * rng.normal(size=(n, dim)))
    extra = unit(clean[:, None] + spread * rng.normal(size=(n, views, dim))) if views else None
    return centres, labels, clean, extra
