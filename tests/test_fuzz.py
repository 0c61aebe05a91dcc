"""Property-based fuzzing of the two readers of untrusted files (hypothesis, bounded and seeded).

(a) Image decoding (``DecodedDataset`` over a ``FolderSource``): random bytes, and real images of
random modes, sizes and formats, whole or damaged. It must never raise: always index, a uint8
3 x H x W tensor, an ok flag and a one-line reason (empty exactly when ok).

(b) The store reader (``FeatureStore``, ``verify``, ``info``): a real store with arrays replaced by
others of random shapes and dtypes, arrays deleted, files overwritten with random bytes, and
attribute fields set to random JSON. It may accept the store or refuse it with an LpclipError (a
one-line message), but never raise anything else (no raw KeyError, ValueError, IndexError).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import clustered_embeddings, write_store
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from lpclip_cache.cli import main
from lpclip_cache.data import IMAGE_SUFFIXES, FolderSource
from lpclip_cache.decode import DecodedDataset
from lpclip_cache.errors import LpclipError
from lpclip_cache.store import ATTR, FeatureStore
from lpclip_cache.verify import check_ok, format_verify, verify

SIZE = (32, 32)


# LPCLIP_FUZZ_SCALE=20 runs twenty times the examples, with fresh random ones each run (the
# default is a fixed, derandomized set that fits the test-suite budget)
FUZZ_SCALE = float(os.environ.get("LPCLIP_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    """Bounded runs: a fixed number of examples, no deadline, no example database on disk."""
    return settings(max_examples=max(1, int(examples * FUZZ_SCALE)), deadline=None, database=None,
                    derandomize=FUZZ_SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- (a) image decoding ----------------------------------------------------------------------------

# formats each mode saves to (and the mode it reads back in); checked with Pillow 13
FORMATS = {
    "1": ["PNG", "BMP", "TIFF", "PPM", "JPEG", "GIF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM"],
    "LA": ["PNG", "TIFF", "WEBP"],
    "P": ["PNG", "BMP", "TIFF", "GIF", "WEBP"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP", "PPM"],
    "RGBA": ["PNG", "TIFF", "WEBP", "BMP"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF", "PPM"],
    "I": ["TIFF", "PPM"],
    "F": ["TIFF"],
}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp", "PPM": ".ppm"}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"P5\n40 30\n65535\n"]


def random_image(mode: str, height: int, width: int, seed: int, special: bool) -> Image.Image:
    """An image of ``mode`` with random pixels (``special`` puts NaN and infinity in float images)."""
    rng = np.random.default_rng(seed)
    count = height * width
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    if mode in ("L", "LA", "RGB", "RGBA"):
        channels = {"L": (), "LA": (2,), "RGB": (3,), "RGBA": (4,)}[mode]
        return Image.fromarray(rng.integers(0, 256, (height, width, *channels), dtype=np.uint8))
    if mode == "P":
        image = Image.frombytes("P", (width, height), rng.integers(0, 256, count, dtype=np.uint8).tobytes())
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        return image
    if mode == "CMYK":
        return Image.frombytes("CMYK", (width, height), rng.integers(0, 256, 4 * count, dtype=np.uint8).tobytes())
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32))
    values = rng.uniform(-0.5, 1.5, (height, width)).astype(np.float32)
    if special:
        values.flat[rng.integers(0, count, 3)] = [np.nan, np.inf, -np.inf]
    return Image.fromarray(values)


def decode_one(folder: Path, name: str, resize_mode: str = "shortest", interpolation: str = "bicubic"):
    """Decode one file through the real source and dataset, checking the contract on the way."""
    source = FolderSource(folder, [name], np.zeros(1, np.int32), ["a"], {})
    index, pixels, ok, reason = DecodedDataset(source, SIZE, resize_mode, interpolation)[0]
    assert index == 0 and isinstance(ok, bool) and isinstance(reason, str)
    assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, *SIZE)
    assert ok == (reason == ""), reason
    if not ok:
        assert "\n" not in reason and ":" in reason and int(pixels.sum()) == 0
    return ok, pixels


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns of the corrupt EXIF data it is fed
@fuzz_settings(120)
@given(data=st.binary(max_size=1024), magic=st.sampled_from(MAGIC), suffix=st.sampled_from(sorted(IMAGE_SUFFIXES)))
def test_random_bytes_never_raise(scratch, data, magic, suffix):
    (scratch / f"random{suffix}").write_bytes(magic + data)
    decode_one(scratch, f"random{suffix}")


@pytest.mark.filterwarnings("ignore::UserWarning")
@fuzz_settings(120)
@given(
    mode=st.sampled_from(sorted(FORMATS)),
    format_pick=st.integers(0, 6),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    seed=st.integers(0, 2**16),
    special=st.booleans(),
    damage=st.sampled_from(["none", "none", "truncate", "flip", "tail"]),
    where=st.floats(0.0, 1.0),
    resize_mode=st.sampled_from(["shortest", "squash", "longest"]),
    interpolation=st.sampled_from(["bicubic", "bilinear", "nearest"]),
)
def test_random_images_never_raise_and_whole_ones_decode(scratch, mode, format_pick, height, width, seed, special,
                                                         damage, where, resize_mode, interpolation):
    fmt = FORMATS[mode][format_pick % len(FORMATS[mode])]
    buffer = io.BytesIO()
    random_image(mode, height, width, seed, special).save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    cut = int(where * (len(data) - 1))
    if damage == "truncate":
        data = data[:cut]
    elif damage == "flip":
        for offset in range(cut, min(len(data), cut + 4)):
            data[offset] ^= 0xA5
    elif damage == "tail":
        data += bytes(range(256))
    name = f"image{SUFFIX[fmt]}"
    (scratch / name).write_bytes(bytes(data))
    ok, _ = decode_one(scratch, name, resize_mode, interpolation)
    if damage in ("none", "tail"):
        assert ok, (mode, fmt, height, width)


@fuzz_settings(60)
@given(value=st.integers(0, 65535), fmt=st.sampled_from(["PNG", "TIFF", "PPM"]),
       height=st.integers(1, 40), width=st.integers(1, 40))
def test_16bit_images_are_scaled_not_clipped(scratch, value, fmt, height, width):
    Image.fromarray(np.full((height, width), value, np.uint16)).save(scratch / f"v16{SUFFIX[fmt]}", fmt)
    ok, pixels = decode_one(scratch, f"v16{SUFFIX[fmt]}")
    assert ok
    assert set(pixels.unique().tolist()) == {round(value / 257)}, (value, fmt)


# --- (b) the store reader --------------------------------------------------------------------------

ARRAYS = ["clean/emb", "clean/label", "clean/conf", "weak/emb", "weak/label", "weak/conf", "strong/emb",
          "strong/label", "strong/conf", "head", "labels", "keys", "valid", "reason", "done", "shard_job",
          "shard_sha256"]
FILES = ["zarr.json", "clean/emb/zarr.json", "head/zarr.json", "clean/emb/c/0/0", "clean/conf/c/0", "head/c/0/0",
         "keys/c/0", "valid/c/0", "done/c/0", "weak/emb/c/1/0/0", "labels/c/2"]
ATTR_PATHS = ["format_version", "complete", "cache_key", "invalid", "jobs", "layout", "layout.n", "layout.dim",
              "layout.n_classes", "layout.weak_views", "layout.strong_views", "layout.shard_size", "manifest",
              "manifest.classnames", "manifest.teacher", "manifest.teacher.logit_scale",
              "manifest.teacher.temperature", "manifest.model", "manifest.model.name", "manifest.templates"]
DTYPES = ["float16", "float32", "float64", "int16", "int32", "uint8", "bool", "str"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
tampers = st.one_of(
    st.tuples(st.just("array"), st.sampled_from(ARRAYS), st.lists(st.integers(0, 6), max_size=3),
              st.sampled_from(DTYPES)),
    st.tuples(st.just("delete"), st.sampled_from(ARRAYS)),
    st.tuples(st.just("bytes"), st.sampled_from(FILES), st.binary(max_size=64)),
    st.tuples(st.just("attr"), st.sampled_from(ATTR_PATHS), json_values),
    st.tuples(st.just("attr_delete"), st.sampled_from(ATTR_PATHS)),
    st.tuples(st.just("attr_replace"), json_values),
    st.tuples(st.just("plant"), st.sampled_from(["clean/emb", "weak/conf", "strong/emb", "head"]),
              st.sampled_from([np.nan, np.inf, -np.inf, 1e4])),
)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    """A small complete store: 20 samples, 4-d, 2 classes, one weak and one strong view, shards of 8."""
    centres, labels, clean, views = clustered_embeddings(20, 2, 4, 0.2, seed=3, views=1)
    return write_store(tmp_path_factory.mktemp("base") / "s.zarr", clean, centres, labels, weak=views,
                       strong=views, shard_size=8)


def set_path(meta: dict, dotted: str, value, delete: bool = False) -> None:
    keys = dotted.split(".")
    node = meta
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


def apply(store: Path, tamper: tuple) -> None:
    """Damage a store copy as a faulty writer, a bad disk or a hostile file would."""
    kind = tamper[0]
    if kind in ("attr", "attr_delete", "attr_replace"):
        document = json.loads((store / "zarr.json").read_text())
        meta = document["attributes"].get(ATTR)
        if kind == "attr_replace":
            document["attributes"][ATTR] = tamper[1]
        elif isinstance(meta, dict):
            set_path(meta, tamper[1], tamper[2] if kind == "attr" else None, delete=kind == "attr_delete")
        (store / "zarr.json").write_text(json.dumps(document))  # NaN and Infinity as Python writes them
        return
    if kind == "bytes":
        target = store / tamper[1]
        if target.parent.is_dir():
            target.write_bytes(tamper[2])
        return
    root = zarr.open_group(str(store), mode="r+")
    name = tamper[1]
    if kind == "delete":
        if name in root:
            del root[name]
    elif kind == "array":
        shape, dtype = tuple(tamper[2]), tamper[3]
        root.create_array(name, shape=shape, dtype=str if dtype == "str" else dtype, overwrite=True)
    elif kind == "plant" and name in root:
        array = root[name]
        if array.size:
            values = np.asarray(array[...])
            values.flat[0] = tamper[2]
            array[...] = values


def read_everything(path: Path) -> None:
    store = FeatureStore(path, require_complete=False)
    assert store.classnames and store.logit_scale > 0 and store.temperature > 0 and store.cache_key
    for name in store.arrays():
        store.read(name)
    store.head()
    store.labels()
    store.has("weak/emb")


def check_cli(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 5), (result.exit_code, result.stderr)
    if result.exit_code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lpclip-cache: error: "), result.stderr


@fuzz_settings(50)
@given(changes=st.lists(tampers, min_size=1, max_size=3))
def test_tampered_store_is_read_or_refused_with_a_store_error(base_store, changes):
    with tempfile.TemporaryDirectory() as folder:
        store = Path(shutil.copytree(base_store, Path(folder) / "s.zarr"))
        for change in sorted(changes, key=lambda c: c[0] == "bytes"):  # zarr cannot edit what random bytes broke
            try:
                apply(store, change)
            except Exception:  # zarr refused to write that damage itself: nothing to read
                assume(False)
        for action in (lambda: FeatureStore(store), lambda: read_everything(store),
                       lambda: check_ok(verify(str(store))), lambda: format_verify(verify(str(store)))):
            try:
                action()
            except LpclipError as exc:
                assert exc.message and "\n" not in exc.message and exc.exit_code == 5, exc.message
        check_cli(["info", str(store)])
        check_cli(["info", str(store), "--json"])
