"""The clean view equals open_clip's own evaluation preprocessing, pixel for pixel.

The reference is the transform ``open_clip.create_model_and_transforms`` returns (torchvision's
resize and centre crop on PIL images); the side under test is the real decode path
(``DecodedDataset``) followed by the device-side normalisation (``ViewMaker.clean``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lpclip_cache.augment import ViewMaker, load_policy
from lpclip_cache.data import FolderSource
from lpclip_cache.decode import DecodedDataset
from lpclip_cache.models import model_config  # noqa: F401  (registers the project's model configs)

SIZES = [(500, 375), (640, 427), (1000, 667), (333, 500), (17, 999), (32, 32), (999, 17), (224, 224), (225, 224),
         (48, 40), (31, 33)]


def smooth_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A photo-like test image: a smooth random field with edges and noise, in ``mode``."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0), rng.uniform(0, 6.3)
        field = np.sin(fx * 2 * np.pi * xs / max(width, 2) + phase) * np.cos(fy * 2 * np.pi * ys / max(height, 2))
        field += (xs > width * rng.uniform(0.2, 0.8)) * rng.uniform(-0.6, 0.6)
        channels.append(field)
    pixels = np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if mode == "P":
        return image.quantize(64)
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        image.putalpha(alpha)
        return image
    return image if mode == "RGB" else image.convert(mode)


@pytest.fixture(scope="module")
def references():
    """open_clip's evaluation transform and preprocessing config for each model checked."""
    import open_clip

    found = {}
    for name in ("test-tiny", "lpclip-shapes", "ViT-B-32"):
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        found[name] = (preprocess, dict(model.visual.preprocess_cfg))
        del model
    return found


def save(image: Image.Image, folder) -> Path:
    """The image as a file in a format that holds its mode (TIFF for CMYK, PNG otherwise)."""
    path = folder / f"image-{image.mode}.{'tiff' if image.mode == 'CMYK' else 'png'}"
    image.save(path)
    return path


def ours(path: Path, cfg: dict) -> torch.Tensor:
    """The clean view this project stores for the file: decode worker, then device normalisation."""
    size = tuple(cfg["size"]) if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    source = FolderSource(path.parent, [path.name], np.zeros(1, np.int32), ["a"], {})
    _, pixels, ok, reason = DecodedDataset(source, size, cfg["resize_mode"], cfg["interpolation"],
                                           cfg["fill_color"])[0]
    assert ok, reason
    none = load_policy("none")
    views = ViewMaker({"size": list(size), "mean": list(cfg["mean"]), "std": list(cfg["std"])}, none, none, 0,
                      torch.device("cpu"))
    return views.clean(views.to_float(pixels[None]))[0]


def reference(path: Path, preprocess) -> torch.Tensor:
    """open_clip's tensor for the same file, opened as a user's loader would."""
    with Image.open(path) as stored:
        return preprocess(stored)


def max_difference(image: Image.Image, cfg: dict, preprocess, folder) -> float:
    """The largest difference between our clean view and open_clip's for one image."""
    path = save(image, folder)
    got, want = ours(path, cfg), reference(path, preprocess)
    assert got.shape == want.shape
    return float((got - want).abs().max())


@pytest.mark.parametrize("model", ["test-tiny", "lpclip-shapes", "ViT-B-32"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_clean_view_equals_open_clip_preprocess(references, model, width, height, tmp_path):
    preprocess, cfg = references[model]
    assert max_difference(smooth_image(width, height, seed=width * 7 + height), cfg, preprocess, tmp_path) <= 1e-6


def test_the_long_side_is_truncated_as_torchvision_does(references, tmp_path):
    """500x375 resizes to 298x224 (torchvision truncates), not 299x224: the crop then differs by a
    visible amount, which is what the equality above protects."""
    preprocess, cfg = references["ViT-B-32"]
    image = smooth_image(500, 375, seed=3)
    exact = ours(save(image, tmp_path), cfg)
    rounded = image.resize((299, 224), Image.BICUBIC)
    left = int(round((299 - 224) / 2.0))
    rounded = np.asarray(rounded.crop((left, 0, left + 224, 224)), np.float32) / 255.0
    mean, std = np.asarray(cfg["mean"], np.float32), np.asarray(cfg["std"], np.float32)
    rounded_view = torch.from_numpy(((rounded - mean) / std).transpose(2, 0, 1))
    assert float((exact - reference(save(image, tmp_path), preprocess)).abs().max()) <= 1e-6
    assert float((exact - rounded_view).abs().mean()) > 0.01


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_other_image_modes_follow_open_clips_order(references, mode, tmp_path):
    """open_clip resizes in the file's own mode and converts to RGB after; so does the decoder."""
    preprocess, cfg = references["ViT-B-32"]
    assert max_difference(smooth_image(61, 45, seed=11, mode=mode), cfg, preprocess, tmp_path) <= 1e-6


@pytest.mark.parametrize(
    ("size", "resize_mode", "interpolation", "fill"),
    [
        ((224, 224), "longest", "bicubic", 0),
        ((224, 224), "longest", "bilinear", 128),
        ((224, 224), "squash", "bilinear", 0),
        ((256, 192), "shortest", "bilinear", 0),
        ((192, 256), "shortest", "bicubic", 0),
        ((96, 160), "longest", "bicubic", 7),
    ],
)
@pytest.mark.parametrize(("width", "height"), [(500, 375), (17, 999), (640, 427), (40, 40)])
def test_every_resize_mode_equals_open_clips_transform(size, resize_mode, interpolation, fill, width, height,
                                                       tmp_path):
    import open_clip

    cfg = {"size": size, "resize_mode": resize_mode, "interpolation": interpolation, "fill_color": fill,
           "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    preprocess = open_clip.image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                           resize_mode=resize_mode, interpolation=interpolation, fill_color=fill)
    assert max_difference(smooth_image(width, height, seed=width + height), cfg, preprocess, tmp_path) <= 1e-6


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(width=st.integers(1, 1200), height=st.integers(1, 1200), seed=st.integers(0, 2**16))
def test_any_size_equals_open_clip_preprocess(references, tmp_path, width, height, seed):
    preprocess, cfg = references["ViT-B-32"]
    assert max_difference(smooth_image(width, height, seed), cfg, preprocess, tmp_path) <= 1e-6
