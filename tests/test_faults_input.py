"""Bad input, unreadable paths and untrusted files: one clear line naming what and where, the
documented exit code, no traceback, and nothing previously written damaged.

docs/reliability.md lists every case with its expected behaviour and the test that checks it.
Most cases run the command line in-process (click's CliRunner); the ``test_e2e_*`` ones run it as
a user would, in a fresh interpreter, and look for a traceback in the real stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import SCRIPT, UNPRIVILEGED, clustered_embeddings, run_cli, write_store
from PIL import Image

from lpclip_cache.cli import main
from lpclip_cache.data import FolderSource
from lpclip_cache.decode import DecodedDataset

SIZE = (32, 32)  # test-tiny's input size


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(result, code: int, *fragments: object) -> str:
    """Exit ``code``, exactly one ``lpclip-cache: error:`` line holding every fragment, no traceback."""
    __tracebackhide__ = True
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpclip-cache: error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def assert_process_error(result: subprocess.CompletedProcess, code: int, *fragments: object) -> None:
    """The same for a real process: its exit status, its last stderr line, no traceback anywhere."""
    __tracebackhide__ = True
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lpclip-cache: error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert str(fragment) in last, (fragment, last)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes, to compare before and after."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def extract_args(tiny_checkpoint):
    """The cheapest extraction: test-tiny from a file, one strong view, no decode workers."""
    return ["--pretrained", tiny_checkpoint, "--workers", "0", "--weak-views", "0", "--strong-views", "1",
            "--templates", "simple", "--quiet"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Synthetic stores (16-d, 3 classes, 2 weak and 2 strong views; an 8-d one; a 4-class one) and a
    run trained on the first."""
    base = tmp_path_factory.mktemp("stores")
    centres, labels, clean, views = clustered_embeddings(48, 3, 16, 0.3, seed=0, views=2)
    good = write_store(base / "good.zarr", clean, centres, labels, weak=views, strong=views, shard_size=16)
    centres8, labels8, clean8, _ = clustered_embeddings(48, 3, 8, 0.3, seed=1)
    dim8 = write_store(base / "dim8.zarr", clean8, centres8, labels8, shard_size=16)
    centres4, labels4, clean4, _ = clustered_embeddings(48, 4, 16, 0.3, seed=2)
    four = write_store(base / "four.zarr", clean4, centres4, labels4, shard_size=16)
    run = base / "run"
    result = invoke("train", "--store", good, "--out", run, "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    return SimpleNamespace(base=base, good=good, dim8=dim8, four=four, run=run)


def copy_store(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def set_attribute(store: Path, **fields) -> None:
    root = zarr.open_group(str(store), mode="r+")
    meta = dict(root.attrs["lpclip_cache"])
    meta.update(fields)
    root.attrs["lpclip_cache"] = meta


def plant(store: Path, name: str, index: tuple[int, ...], value: float) -> None:
    """Write one value into one element of an array, through zarr (as a faulty writer would)."""
    array = zarr.open_array(str(store / name), mode="r+")
    data = np.asarray(array[...])
    data[index] = value
    array[...] = data


# --- 1. missing and unreadable paths ------------------------------------------------------------


MISSING = {
    "data": (lambda t, s, a: ["extract", "--data", t / "nowhere", *a, "--out", t / "o.zarr"], 3,
             ["data path", "nowhere", "does not exist"]),
    "store": (lambda t, s, a: ["train", "--store", t / "nowhere.zarr", "--out", t / "o"], 5,
              ["store", "nowhere.zarr", "does not exist", "lpclip-cache extract"]),
    "run": (lambda t, s, a: ["evaluate", "--run", t / "norun", "--store", s.good, "--out", t / "o.json"], 5,
            ["run", "norun", "does not exist", "--out folder of 'lpclip-cache train'"]),
    "templates": (lambda t, s, a: ["extract", "--data", s.images, *a, "--templates", t / "none.txt",
                                   "--out", t / "o.zarr"], 3, ["template file not found", "none.txt"]),
    "classnames": (lambda t, s, a: ["extract", "--data", s.images, *a, "--classnames", t / "none.json",
                                    "--out", t / "o.zarr"], 3, ["class-name file not found", "none.json"]),
    "pretrained": (lambda t, s, a: ["extract", "--data", s.images, *a, "--pretrained", t / "none.pt",
                                    "--out", t / "o.zarr"], 4, ["checkpoint file", "none.pt", "not found"]),
}


@pytest.mark.parametrize("option", sorted(MISSING))
def test_missing_path_is_one_line_naming_it(option, stores, image_folder, extract_args, tmp_path):
    build, code, fragments = MISSING[option]
    context = SimpleNamespace(good=stores.good, images=image_folder)
    assert_error(invoke(*build(tmp_path, context, extract_args)), code, *fragments)
    assert not any(tmp_path.glob("o*"))




def permission_prefix(probe: Path) -> list[str] | None:
    """How to run a command for which chmod 000 restricts: as is for a user; for root, through
    setpriv without the capabilities that bypass file permissions. None when neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe.write_text("secret")
    probe.chmod(0)
    try:
        done = subprocess.run([setpriv, *UNPRIVILEGED, "cat", str(probe)], capture_output=True, timeout=30)
    except OSError:
        return None
    finally:
        probe.chmod(0o600)
    return [setpriv, *UNPRIVILEGED] if done.returncode != 0 else None


def test_unreadable_paths_are_one_line_naming_them(stores, image_folder, extract_args, tiny_checkpoint, tmp_path):
    prefix = permission_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("running as root with no way to drop CAP_DAC_OVERRIDE: chmod 000 does not restrict root")
    data_root = shutil.copytree(image_folder, tmp_path / "data_root")
    class_dir = shutil.copytree(image_folder, tmp_path / "class_dir")
    one_image = shutil.copytree(image_folder, tmp_path / "one_image")
    store = copy_store(stores.good, tmp_path / "store.zarr")
    chunk_store = copy_store(stores.good, tmp_path / "chunk.zarr")
    run = shutil.copytree(stores.run, tmp_path / "run")
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")
    classnames = tmp_path / "classnames.txt"
    classnames.write_text("a\nb\nc\n")
    checkpoint = shutil.copy(tiny_checkpoint, tmp_path / "weights.pt")
    locked = [data_root, class_dir / "class_1", one_image / "class_0" / "img_0.jpg", store,
              chunk_store / "clean" / "emb" / "c" / "0" / "0", run, templates, classnames, Path(checkpoint)]
    args = [str(a) for a in extract_args]
    cases = [
        (["extract", "--data", data_root, *args, "--out", tmp_path / "o1.zarr"], 3,
         ["cannot read data folder", data_root, "Permission denied"]),
        (["extract", "--data", class_dir, *args, "--out", tmp_path / "o2.zarr"], 3,
         ["cannot read data folder", class_dir / "class_1", "Permission denied"]),
        (["extract", "--data", one_image, *args, "--out", tmp_path / "o3.zarr"], 3,
         ["cannot read image 'class_0/img_0.jpg'", "Permission denied", "run the same command again"]),
        (["train", "--store", store, "--out", tmp_path / "o4"], 5, ["cannot read store", store, "Permission denied"]),
        (["train", "--store", chunk_store, "--out", tmp_path / "o5"], 5,
         ["cannot read array 'clean/emb'", chunk_store, "Permission denied"]),
        (["evaluate", "--run", run, "--store", stores.good, "--out", tmp_path / "o6.json"], 5,
         ["cannot read run", run, "Permission denied"]),
        (["extract", "--data", image_folder, *args, "--templates", templates, "--out", tmp_path / "o7.zarr"], 3,
         ["cannot read template file", templates, "Permission denied"]),
        (["extract", "--data", image_folder, *args, "--classnames", classnames, "--out", tmp_path / "o8.zarr"], 3,
         ["cannot read class-name file", classnames, "Permission denied"]),
        (["extract", "--data", image_folder, *args, "--pretrained", checkpoint, "--out", tmp_path / "o9.zarr"], 4,
         ["cannot read checkpoint file", checkpoint, "Permission denied"]),
    ]
    modes = {path: path.stat().st_mode for path in locked}
    for path in locked:
        path.chmod(0)
    try:
        payload = json.dumps([[str(a) for a in case[0]] for case in cases])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([*prefix, sys.executable, "-c", SCRIPT, payload], capture_output=True, text=True,
                              env=env, timeout=300)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (_, code, fragments), result in zip(cases, results):
        assert_error(SimpleNamespace(exit_code=result["code"], stderr=result["stderr"], output=result["output"]),
                     code, *fragments)
    # the two unreadable inputs that made no store left nothing behind (o3 failed after creating its store)
    assert not (tmp_path / "o1.zarr").exists() and not (tmp_path / "o4").exists()


# --- 2. empty dataset, empty class folder --------------------------------------------------------


def test_empty_dataset_folder_is_refused(extract_args, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(invoke("extract", "--data", tmp_path / "empty", *extract_args, "--out", tmp_path / "s.zarr"), 3,
                 "no images found", tmp_path / "empty")
    (tmp_path / "text_only" / "cat").mkdir(parents=True)
    (tmp_path / "text_only" / "cat" / "notes.txt").write_text("not an image")
    assert_error(invoke("extract", "--data", tmp_path / "text_only", *extract_args, "--out", tmp_path / "s.zarr"), 3,
                 "no images found", tmp_path / "text_only")
    assert not (tmp_path / "s.zarr").exists()


def test_class_folder_without_images_is_an_error_naming_it(image_folder, extract_args, tmp_path):
    (image_folder / "class_3").mkdir()
    (image_folder / "class_3" / "readme.txt").write_text("images to come")
    line = assert_error(invoke("extract", "--data", image_folder, *extract_args, "--out", tmp_path / "s.zarr"), 3,
                        "class folder", image_folder / "class_3", "holds no images", "move the folder out")
    assert "and 1 more" not in line
    (image_folder / "class_4").mkdir()
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--out", tmp_path / "s.zarr"), 3,
                 image_folder / "class_3", "(and 1 more)")
    assert not (tmp_path / "s.zarr").exists()


def test_hidden_folders_are_not_classes(image_folder):
    (image_folder / ".ipynb_checkpoints").mkdir()
    source = FolderSource.open(image_folder, str(image_folder), None)
    assert source.classnames == ["class_0", "class_1", "class_2"] and len(source) == 12


# --- 3. images -------------------------------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def jpeg_bytes(seed: int = 0) -> bytes:
    import io

    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def make_uniform(path: Path, mode: str, value) -> Path:
    if mode == "I;16":
        Image.fromarray(np.full((30, 40), value, np.uint16)).save(path)
    elif mode == "F":
        Image.fromarray(np.full((30, 40), value, np.float32)).save(path)
    elif mode == "P":
        image = Image.new("P", (40, 30), 1)
        image.putpalette([0, 0, 0, *value] + [0, 0, 0] * 254)
        image.save(path)
    else:
        Image.new(mode, (40, 30), value).save(path)
    return path


ODD_MODES = {
    # name: (file, mode, value written, RGB expected after decoding, tolerance)
    "grayscale": ("g.png", "L", 100, (100, 100, 100), 0),
    "one_bit": ("b.png", "1", 1, (255, 255, 255), 0),
    "cmyk_white": ("cw.jpg", "CMYK", (0, 0, 0, 0), (255, 255, 255), 2),
    "cmyk_cyan": ("cc.jpg", "CMYK", (255, 0, 0, 0), (0, 255, 255), 3),
    "16bit_white": ("w16.png", "I;16", 65535, (255, 255, 255), 0),
    "16bit_half": ("h16.png", "I;16", 32768, (128, 128, 128), 0),
    "16bit_low": ("l16.png", "I;16", 257 * 7, (7, 7, 7), 0),
    "16bit_black": ("k16.png", "I;16", 0, (0, 0, 0), 0),
    "float_half": ("f.tif", "F", 0.5, (128, 128, 128), 0),
    # open_clip resizes before dropping alpha, and PIL resizes RGBA premultiplied: a fully
    # transparent image comes out black (test_preprocess_fidelity checks the equality itself)
    "rgba_transparent": ("a.png", "RGBA", (10, 200, 30, 0), (0, 0, 0), 0),
    # resized in LA mode as open_clip does, through premultiplied alpha: 90 at alpha 40 comes back 89
    "gray_alpha": ("la.png", "LA", (90, 40), (90, 90, 90), 1),
    "palette": ("p.png", "P", (250, 10, 20), (250, 10, 20), 0),
}


@pytest.mark.parametrize("case", sorted(ODD_MODES))
def test_odd_image_modes_decode_to_sensible_rgb(case, tmp_path):
    name, mode, value, expected, tolerance = ODD_MODES[case]
    path = make_uniform(tmp_path / name, mode, value)
    with Image.open(path) as image:
        assert image.mode == mode, image.mode  # the file really is in that mode
    source = FolderSource(tmp_path, [name], np.zeros(1, np.int32), ["a"], {})
    index, pixels, ok, reason = DecodedDataset(source, SIZE, "shortest", "bicubic")[0]
    assert ok and reason == "" and index == 0
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, *SIZE)
    got = pixels.numpy().reshape(3, -1).astype(int)
    assert np.abs(got - np.array(expected)[:, None]).max() <= tolerance, (got.min(1), got.max(1), expected)


def test_odd_modes_extract_like_their_8bit_twins(extract_args, tmp_path):
    """A 16-bit white PNG and an 8-bit white PNG (a grayscale and an RGB gray) give the same embedding."""
    root = tmp_path / "data"
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
    make_uniform(root / "a" / "white16.png", "I;16", 65535)
    Image.new("RGB", (40, 30), (255, 255, 255)).save(root / "a" / "white8.png")
    make_uniform(root / "b" / "gray_l.png", "L", 100)
    Image.new("RGB", (40, 30), (100, 100, 100)).save(root / "b" / "gray_rgb.png")
    make_uniform(root / "b" / "cmyk.jpg", "CMYK", (0, 0, 0, 0))
    make_uniform(root / "b" / "rgba.png", "RGBA", (10, 200, 30, 0))
    result = invoke("extract", "--data", root, *extract_args, "--out", tmp_path / "s.zarr")
    assert result.exit_code == 0, result.stderr
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    keys = list(np.asarray(group["keys"][...]))
    emb = np.asarray(group["clean/emb"][...]).astype(np.float32)
    assert np.asarray(group["valid"][...]).all() and np.isfinite(emb).all()
    row = {key: emb[i] for i, key in enumerate(keys)}
    np.testing.assert_array_equal(row["a/white16.png"], row["a/white8.png"])
    np.testing.assert_array_equal(row["b/gray_l.png"], row["b/gray_rgb.png"])
    assert not np.array_equal(row["a/white8.png"], row["b/gray_rgb.png"])


BAD_IMAGES = {
    # name: (how to make it, a fragment of the recorded reason)
    "corrupt.jpg": (lambda p: p.write_bytes(b"this is not an image at all " * 8), "UnidentifiedImageError"),
    "corrupt_header.jpg": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after its marker" * 4), "OSError"),
    "truncated.jpg": (lambda p: p.write_bytes(jpeg_bytes()[:400]), "runcated"),
    "empty.png": (lambda p: p.write_bytes(b""), "UnidentifiedImageError"),
    "bomb.png": (lambda p: png_header_only(p, 20000, 10000), "DecompressionBombError"),
    "huge.png": (lambda p: png_header_only(p, 9500, 9500), "DecompressionBombWarning"),  # just over MAX_IMAGE_PIXELS
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_decodes_to_a_reason_not_an_exception(name, tmp_path):
    # huge.png is over PIL's MAX_IMAGE_PIXELS, where PIL only warns; bomb.png over twice it, where PIL refuses
    assert Image.MAX_IMAGE_PIXELS < 9500 * 9500 < 2 * Image.MAX_IMAGE_PIXELS < 20000 * 10000
    make, fragment = BAD_IMAGES[name]
    make(tmp_path / name)
    source = FolderSource(tmp_path, [name], np.zeros(1, np.int32), ["a"], {})
    index, pixels, ok, reason = DecodedDataset(source, SIZE, "shortest", "bicubic")[0]
    assert not ok and fragment in reason and "\n" not in reason
    assert tuple(pixels.shape) == (3, *SIZE) and int(pixels.sum()) == 0


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_stops_extract_naming_the_file(name, image_folder, extract_args, tmp_path):
    make, fragment = BAD_IMAGES[name]
    make(image_folder / "class_1" / name)
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--out", tmp_path / "s.zarr"), 3,
                 f"cannot decode image 'class_1/{name}'", fragment, "--skip-bad")


def test_bad_images_with_skip_bad_are_recorded_invalid(image_folder, extract_args, tmp_path):
    for name, (make, _) in BAD_IMAGES.items():
        make(image_folder / "class_1" / name)
    result = invoke("extract", "--data", image_folder, *extract_args, "--skip-bad", "--out", tmp_path / "s.zarr")
    assert result.exit_code == 0, result.stderr
    assert f"{len(BAD_IMAGES)} sample(s) are marked invalid" in result.stderr
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    keys = np.asarray(group["keys"][...])
    valid = np.asarray(group["valid"][...])
    reasons = dict(zip(keys.tolist(), np.asarray(group["reason"][...]).tolist()))
    assert sorted(keys[~valid].tolist()) == sorted(f"class_1/{name}" for name in BAD_IMAGES)
    for name, (_, fragment) in BAD_IMAGES.items():
        assert fragment in reasons[f"class_1/{name}"]
        assert f"class_1/{name}" in result.stderr
    assert valid.sum() == 12 and np.isfinite(np.asarray(group["clean/emb"][...])[valid].astype(np.float32)).all()
    recorded = group.attrs["lpclip_cache"]["invalid"]
    assert sorted(item["key"] for item in recorded) == sorted(f"class_1/{name}" for name in BAD_IMAGES)


def test_e2e_bad_image_in_a_decode_worker(image_folder, tiny_checkpoint, tmp_path):
    """A real process with a DataLoader worker: the worker's failure is one line, not its traceback."""
    BAD_IMAGES["truncated.jpg"][0](image_folder / "class_2" / "truncated.jpg")
    result = run_cli("extract", "--data", str(image_folder), "--pretrained", str(tiny_checkpoint), "--workers", "1",
                     "--weak-views", "0", "--strong-views", "0", "--templates", "simple", "--quiet",
                     "--out", str(tmp_path / "s.zarr"))
    assert_process_error(result, 3, "cannot decode image 'class_2/truncated.jpg'", "runcated", "--skip-bad")


# --- 4. class-name and template files --------------------------------------------------------------


PROMPT_FILES = {
    # case: (option, file name, content, fragments)
    "templates_empty": ("--templates", "t.txt", "", ["template file", "t.txt", "is empty"]),
    "templates_bad_json": ("--templates", "t.json", '["a photo of a {}.",', ["t.json", "not valid JSON", "line 1"]),
    "template_without_placeholder": ("--templates", "t.txt", "a photo\n", ["t.txt, line 1", "no '{}' placeholder"]),
    "classnames_empty": ("--classnames", "c.txt", "\n\n", ["class-name file", "c.txt", "is empty"]),
    "classnames_bad_json": ("--classnames", "c.json", '{"classnames": [1, 2]}', ["c.json, entry 1",
                                                                               "expected a string"]),
    "classnames_too_few": ("--classnames", "c.txt", "cat\ndog\n", ["lists 2 classes", "has 3 (class_0, class_1"]),
    "classnames_too_many": ("--classnames", "c.txt", "a\nb\nc\nd\ne\n", ["lists 5 classes", "has 3",
                                                                        "one name per data class"]),
}


@pytest.mark.parametrize("case", sorted(PROMPT_FILES))
def test_bad_template_or_classname_file(case, image_folder, extract_args, tmp_path):
    option, name, content, fragments = PROMPT_FILES[case]
    (tmp_path / name).write_text(content)
    result = invoke("extract", "--data", image_folder, *extract_args, option, tmp_path / name,
                    "--out", tmp_path / "s.zarr")
    assert_error(result, 3, *fragments)
    assert not (tmp_path / "s.zarr").exists()


def test_builtin_classnames_of_another_dataset_are_refused(image_folder, extract_args, tmp_path):
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--classnames", "cifar10",
                        "--out", tmp_path / "s.zarr"), 3, "--classnames 'cifar10' lists 10 classes", "has 3")


# --- 5. models and checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_architecture(tmp_path_factory):
    """A real state dict of another open_clip configuration: test-tiny's text tower, a wider and
    shallower image tower (random init). lpclip-shapes would not do: it differs from test-tiny only
    in context length, whose positional embedding open_clip resizes on load."""
    import open_clip

    import lpclip_cache.models  # noqa: F401  (registers the project's configurations)

    folder = tmp_path_factory.mktemp("other")
    config = json.loads((Path(lpclip_cache.models.CONFIG_DIR) / "test-tiny.json").read_text())
    config["vision_cfg"].update(width=128, layers=2, head_width=64)
    (folder / "faults-other-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "faults-other-tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("faults-other-tiny", pretrained=None)
    path = folder / "faults-other-tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def test_checkpoint_of_another_architecture(image_folder, extract_args, other_architecture, tmp_path):
    result = invoke("extract", "--data", image_folder, *extract_args, "--pretrained", other_architecture,
                    "--out", tmp_path / "s.zarr")
    assert_error(result, 4, f"checkpoint '{other_architecture}' does not fit architecture test-tiny",
                 "tensor(s) of another shape, first visual.", "missing tensor(s)", "pass the architecture")
    assert not (tmp_path / "s.zarr").exists()


def test_unknown_tag_and_corrupt_checkpoint(image_folder, extract_args, tmp_path):
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--pretrained", "laion400m_e32",
                        "--out", tmp_path / "s.zarr"), 4, "'laion400m_e32' is neither a checkpoint file nor a "
                 "pretrained tag of test-tiny", "tags: none")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--pretrained", garbage,
                        "--out", tmp_path / "s.zarr"), 4, f"checkpoint '{garbage}' could not be read as weights only")
    assert not (tmp_path / "s.zarr").exists()


class Payload:
    """Unpickling this calls open(path, 'w'): a file appears if the checkpoint's code ever runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_e2e_pickled_code_in_a_checkpoint_never_runs(image_folder, tmp_path):
    # the library-level refusal is tests/test_models_views.py::test_pickled_code_in_a_checkpoint_is_refused
    import pickle

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    result = run_cli("extract", "--data", str(image_folder), "--pretrained", str(evil), "--workers", "0",
                     "--quiet", "--out", str(tmp_path / "s.zarr"))
    assert_process_error(result, 4, f"checkpoint '{evil}' could not be read as weights only")
    assert not marker.exists()
    assert not (tmp_path / "s.zarr").exists()


# --- 6. stores and runs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("other", "fragments"), [
    ("dim8", ["8-d embeddings", "expects 16-d", "extract it with the run's model"]),
    ("four", ["has classes", "(4)", "(3)", "--ood"]),
])
def test_store_from_another_model_or_classes_is_refused_by_evaluate(other, fragments, stores, tmp_path):
    store = getattr(stores, other)
    assert_error(invoke("evaluate", "--run", stores.run, "--store", store, "--out", tmp_path / "r.json"), 5,
                 store, *fragments)
    assert not (tmp_path / "r.json").exists()


def test_store_with_another_models_head_is_refused_by_train(stores, tmp_path):
    store = copy_store(stores.good, tmp_path / "s.zarr")
    root = zarr.open_group(str(store), mode="r+")
    del root["head"]
    root.create_array("head", shape=(3, 8), dtype="float32", fill_value=0.0)
    root["head"][...] = np.eye(3, 8, dtype=np.float32)
    assert_error(invoke("train", "--store", store, "--out", tmp_path / "run"), 5,
                 f"store '{store}' is damaged", "array 'head' is float32 (3, 8)", "needs shape (3, 16)", "re-extract")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_incomplete_store_is_refused(command, stores, tmp_path):
    store = copy_store(stores.good, tmp_path / "s.zarr")
    set_attribute(store, complete=False)
    zarr.open_array(str(store / "done"), mode="r+")[1] = 0
    args = (["train", "--store", store, "--out", tmp_path / "o"] if command == "train"
            else ["evaluate", "--run", stores.run, "--store", store, "--out", tmp_path / "o"])
    assert_error(invoke(*args), 5, f"store '{store}' is incomplete (2 of 3 shards written)", "extract command again")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_store_of_a_newer_format_is_refused(command, stores, tmp_path):
    store = copy_store(stores.good, tmp_path / "s.zarr")
    set_attribute(store, format_version=3)
    args = (["train", "--store", store, "--out", tmp_path / "o"] if command == "train"
            else ["evaluate", "--run", stores.run, "--store", store, "--out", tmp_path / "o"])
    assert_error(invoke(*args), 5, f"store '{store}' has format version 3, newer than this lpclip-cache reads (2)",
                 "upgrade lpclip-cache")
    assert not (tmp_path / "o").exists()


NONFINITE = {
    # case: (command, array, element, value)
    "train_nan_strong_emb": ("train", "strong/emb", (5, 1, 3), np.nan),
    "train_inf_weak_conf": ("train", "weak/conf", (17, 0), np.inf),
    "train_nan_clean_emb": ("train", "clean/emb", (2, 0), np.nan),
    "train_nan_head": ("train", "head", (1, 4), np.nan),
    "evaluate_inf_clean_emb": ("evaluate", "clean/emb", (40, 7), -np.inf),
}


@pytest.mark.parametrize("case", sorted(NONFINITE))
def test_nan_or_inf_in_a_store_is_refused_and_the_old_output_kept(case, stores, tmp_path):
    command, name, element, value = NONFINITE[case]
    store = copy_store(stores.good, tmp_path / "s.zarr")
    plant(store, name, element, value)
    if command == "train":  # an earlier run at --out, which --overwrite would replace
        out = shutil.copytree(stores.run, tmp_path / "old-run")
        args = ["train", "--store", store, "--out", out, "--overwrite", "--quiet"]
    else:
        out = tmp_path / "old-report"
        out.mkdir()
        (out / "report.json").write_text('{"tool": "lpclip-cache"}\n')
        (out / "plot.png").write_bytes(b"old plot")
        args = ["evaluate", "--run", stores.run, "--store", store, "--report", out, "--overwrite"]
    before = snapshot(out)
    assert_error(invoke(*args), 5, f"store '{store}' holds NaN or infinite values in '{name}'", "1 valid row",
                 "lpclip-cache verify", "re-extract")
    assert snapshot(out) == before


def test_nan_in_an_invalid_row_is_ignored(stores, tmp_path):
    store = copy_store(stores.good, tmp_path / "s.zarr")
    plant(store, "strong/emb", (5, 0, 0), np.nan)
    zarr.open_array(str(store / "valid"), mode="r+")[5] = False
    result = invoke("train", "--store", store, "--out", tmp_path / "run", "--epochs", "1", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 47
    from lpclip_cache.runs import load_run

    assert np.isfinite(load_run(tmp_path / "run").weight).all()


def test_nan_in_a_run_is_refused_by_evaluate(stores, tmp_path):
    from safetensors.numpy import load_file, save_file

    run = shutil.copytree(stores.run, tmp_path / "run")
    tensors = load_file(str(run / "probe.safetensors"))
    tensors["weight"][0, 0] = np.nan
    save_file(tensors, str(run / "probe.safetensors"))
    assert_error(invoke("evaluate", "--run", run, "--store", stores.good, "--out", tmp_path / "r.json"), 5,
                 f"run '{run}' holds NaN or infinite probe weights", "train it again")
    assert not (tmp_path / "r.json").exists()


def test_e2e_nan_store_and_newer_store_in_a_real_process(stores, tmp_path):
    store = copy_store(stores.good, tmp_path / "nan.zarr")
    plant(store, "strong/emb", (0, 0, 0), np.nan)
    result = run_cli("train", "--store", str(store), "--out", str(tmp_path / "run"), "--quiet")
    assert_process_error(result, 5, f"store '{store}' holds NaN or infinite values in 'strong/emb'")
    assert not (tmp_path / "run").exists()
    newer = copy_store(stores.good, tmp_path / "newer.zarr")
    set_attribute(newer, format_version=7)
    result = run_cli("evaluate", "--run", str(stores.run), "--store", str(newer), "--out", str(tmp_path / "r.json"))
    assert_process_error(result, 5, "format version 7, newer", "upgrade lpclip-cache")
    assert not (tmp_path / "r.json").exists()


INSIDE = {
    # case: (arguments given the stores' namespace and the image folder, the input named)
    "train_out_in_store": (lambda s, i: ["train", "--store", s.store, "--out", s.store / "run"], "store"),
    "train_out_is_store": (lambda s, i: ["train", "--store", s.store, "--out", s.store, "--overwrite"], "store"),
    "evaluate_out_in_run": (lambda s, i: ["evaluate", "--run", s.run, "--store", s.store, "--out",
                                          s.run / "r.json"], "run"),
    "evaluate_report_in_store": (lambda s, i: ["evaluate", "--run", s.run, "--store", s.store, "--report",
                                               s.store / "rep"], "store"),
    "export_out_in_store": (lambda s, i: ["export", s.store, "--out", s.store / "x.h5"], "store"),
    "analyze_out_in_store": (lambda s, i: ["analyze", "latent", "clusters", "--store", s.store, "--k", "2",
                                           "--out", s.store / "c.json"], "store"),
    "extract_out_in_data": (lambda s, i: ["extract", "--data", i, "--out", i / "s.zarr"], "data"),
}


@pytest.mark.parametrize("case", sorted(INSIDE))
def test_output_inside_the_input_is_refused(case, stores, image_folder, tmp_path):
    build, named = INSIDE[case]
    context = SimpleNamespace(store=copy_store(stores.good, tmp_path / "s.zarr"),
                              run=shutil.copytree(stores.run, tmp_path / "run"))
    inputs = {"store": context.store, "run": context.run, "data": image_folder}
    before = {name: snapshot(path) for name, path in inputs.items()}
    assert_error(invoke(*build(context, image_folder)), 3, "lies inside the input", inputs[named].name,
                 "elsewhere")
    assert {name: snapshot(path) for name, path in inputs.items()} == before


# --- 5. names, reads and downloads that fail -------------------------------------------------------


def test_an_image_file_name_that_is_not_utf8_is_one_line(image_folder, extract_args, tmp_path):
    """``b'\\xff\\xfe bad.png'`` in a class folder: no store key can hold it (nor the fingerprint)."""
    shutil.copy(image_folder / "class_0" / "img_1.png", os.fsencode(image_folder / "class_0") + b"/\xff\xfe bad.png")
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--out", tmp_path / "s.zarr"), 3,
                 "class_0/\\xff\\xfe bad.png", "not valid UTF-8")
    assert not (tmp_path / "s.zarr").exists()


def test_an_image_that_cannot_be_read_stops_the_run_even_with_skip_bad(image_folder, extract_args, tmp_path,
                                                                      monkeypatch):
    """An I/O error is no property of the image: it stops the run in one line, nothing invalid is
    recorded, and the same command run again (the file back) finishes the store whole. Here the
    file vanishes between the scan and its decoding (moved away once the decoding dataset is made)."""
    import lpclip_cache.decode as decode

    victim = image_folder / "class_2" / "img_3.png"

    class LosingAFile(DecodedDataset):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            victim.rename(tmp_path / "aside.png")

    monkeypatch.setattr(decode, "DecodedDataset", LosingAFile)
    out = tmp_path / "s.zarr"
    assert_error(invoke("extract", "--data", image_folder, *extract_args, "--skip-bad", "--out", out), 3,
                 "cannot read image 'class_2/img_3.png'", "No such file", "run the same command again")
    assert not zarr.open_group(str(out), mode="r").attrs["lpclip_cache"].get("complete")
    monkeypatch.setattr(decode, "DecodedDataset", DecodedDataset)
    (tmp_path / "aside.png").rename(victim)
    done = invoke("extract", "--data", image_folder, *extract_args, "--skip-bad", "--out", out)
    assert done.exit_code == 0, done.stderr
    group = zarr.open_group(str(out), mode="r")
    assert np.asarray(group["valid"][...]).all() and not group.attrs["lpclip_cache"].get("invalid")


def test_a_read_error_in_a_decode_worker_is_one_line(image_folder):
    """The same error raised in a DataLoader worker comes back to the main process as the one
    line, not as the worker's traceback."""
    from lpclip_cache.errors import DataUnavailable

    source = FolderSource.open(image_folder, str(image_folder), None)
    (image_folder / source.keys[1]).unlink()
    loader = torch.utils.data.DataLoader(DecodedDataset(source, SIZE, "shortest", "bicubic"), batch_size=4,
                                         num_workers=1)
    with pytest.raises(DataUnavailable) as raised:
        list(loader)
    assert "\n" not in raised.value.message and f"cannot read image '{source.keys[1]}'" in raised.value.message


def test_memory_exhausted_while_decoding_is_not_an_invalid_image():
    from lpclip_cache.errors import DataUnavailable

    class Exhausted:
        keys = ["big.png"]

        def __len__(self) -> int:
            return 1

        def image(self, index: int) -> Image.Image:
            raise MemoryError

    with pytest.raises(DataUnavailable, match="out of memory decoding image 'big.png'.*run the same command again"):
        DecodedDataset(Exhausted(), SIZE, "shortest", "bicubic")[0]


def test_a_dataset_download_without_a_network_is_one_line(tmp_path):
    """``extract --data cifar10:ROOT --download`` offline. A real download cannot happen here, so
    the network is made unreachable honestly: every HTTP(S) request goes through a proxy on a
    loopback port where nothing listens (the connection is refused)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    env = {name: proxy for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    env.update(no_proxy="", NO_PROXY="")
    result = run_cli("extract", "--data", f"cifar10:{tmp_path / 'cifar'}", "--download", "--out",
                     str(tmp_path / "s.zarr"), env=env)
    assert_process_error(result, 3, "cifar10 could not be downloaded", str(tmp_path / "cifar"), "connected machine",
                         "cifar-10-python.tar.gz")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
