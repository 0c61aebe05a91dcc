"""The strong and weak view operations against their references: torchvision's
``transforms.v2.functional`` and PIL's ImageEnhance / ImageOps / Image.transform, on the same uint8
images (real CIFAR-10 JPEGs, random smooth images and a ramp) at the same magnitudes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance, ImageOps

from lpclip_cache import augment as A
from lpclip_cache.errors import InputError

LEVEL = 1.0 / 255.0
BILINEAR = TF.InterpolationMode.BILINEAR

# FixMatch's RandAugment ranges (Sohn et al. 2020, appendix Table 12; the same values are in
# kekmodel/FixMatch-pytorch dataset/randaugment.py fixmatch_augment_pool and in
# microsoft/Semi-supervised-learning semilearn/datasets/augmentation/randaugment.py augment_list).
FIXMATCH_TABLE_12 = {
    "auto_contrast": None, "equalize": None, "identity": None,
    "brightness": [0.05, 0.95], "color": [0.05, 0.95], "contrast": [0.05, 0.95], "sharpness": [0.05, 0.95],
    "posterize": [4, 8], "rotate": [-30, 30], "solarize": [0, 1],
    "shear_x": [-0.3, 0.3], "shear_y": [-0.3, 0.3], "translate_x": [-0.3, 0.3], "translate_y": [-0.3, 0.3],
}


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random smooth colour images (bicubic upsampling of 6x6 noise, plus a little pixel noise), uint8."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=generator)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.03 * torch.randn(n, 3, size, size, generator=generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def ramp_image() -> torch.Tensor:
    """1 x 3 x 32 x 32 uint8: every level 0-255 four times per channel (rising in R, falling in G, rotated in B)."""
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    ramp = cols * 8 + rows % 8
    return torch.stack([ramp, 255 - ramp, (ramp + 85) % 256]).to(torch.uint8).unsqueeze(0)


@pytest.fixture(scope="module")
def images(cifar_root: Path) -> torch.Tensor:
    """N x 3 x 32 x 32 uint8: 20 real CIFAR-10 JPEGs (2 per class), 6 smooth images, the ramp."""
    files = sorted((cifar_root / "test").rglob("*.jpg"))
    chosen = [f for f in files if int(f.stem) < 2]
    cifar = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()) for f in chosen])
    return torch.cat([cifar.permute(0, 3, 1, 2), smooth_images(6), ramp_image()]).contiguous()


def cycle(values: list[float], n: int) -> torch.Tensor:
    """``values`` repeated to length n: per-sample magnitudes that differ within the batch."""
    return torch.tensor([values[i % len(values)] for i in range(n)], dtype=torch.float32)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def level_diff(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|ours - reference| in 8-bit levels (ours: float in [0, 1]; reference: uint8)."""
    return (ours * 255.0 - reference.float()).abs()


def per_sample(reference, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """The reference applied to each uint8 image at its own magnitude."""
    return torch.stack([reference(image, magnitude.item()) for image, magnitude in zip(images, magnitudes)])


def pil_reference(function):
    """A (uint8 CHW image, magnitude) -> uint8 CHW function from a PIL image function."""
    return lambda image, magnitude: from_pil(function(to_pil(image), magnitude))


PHOTOMETRIC = {
    # op: (ours, torchvision, PIL, magnitudes incl. FixMatch's range ends and values beyond them)
    "brightness": (A.brightness, TF.adjust_brightness, lambda im, f: ImageEnhance.Brightness(im).enhance(f),
                   [0.05, 0.95, 0.5, 0.3, 1.0, 1.5, 1.9]),
    "contrast": (A.contrast, TF.adjust_contrast, lambda im, f: ImageEnhance.Contrast(im).enhance(f),
                 [0.05, 0.95, 0.5, 0.3, 1.0, 1.5, 1.9]),
    "color": (A.color, TF.adjust_saturation, lambda im, f: ImageEnhance.Color(im).enhance(f),
              [0.05, 0.95, 0.5, 0.3, 1.0, 1.5, 1.9]),
    "sharpness": (A.sharpness, TF.adjust_sharpness, lambda im, f: ImageEnhance.Sharpness(im).enhance(f),
                  [0.05, 0.95, 0.5, 0.3, 1.0, 1.5, 1.9]),
    "posterize": (A.posterize, lambda im, b: TF.posterize(im, int(b)), lambda im, b: ImageOps.posterize(im, int(b)),
                  [4, 8, 5, 6, 7, 1, 2]),
    # torchvision takes the 8-bit threshold (at most 255); PIL also takes 256 (nothing inverted)
    "solarize": (A.solarize, lambda im, t: TF.solarize(im, min(256 * t, 255.0)),
                 lambda im, t: ImageOps.solarize(im, 256 * t), [0.0, 0.99, 0.5, 0.3, 0.75, 0.12]),
    "equalize": (lambda x, m: A.equalize(x), lambda im, m: TF.equalize(im), lambda im, m: ImageOps.equalize(im), [0]),
    "auto_contrast": (lambda x, m: A.autocontrast(x), lambda im, m: TF.autocontrast(im),
                      lambda im, m: ImageOps.autocontrast(im), [0]),
}


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_ops_equal_torchvision_and_pil_to_two_levels(images, name):
    ours, torchvision_op, pil_op, values = PHOTOMETRIC[name]
    magnitudes = cycle(values, len(images))
    out = ours(images.float() / 255.0, magnitudes)
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(level_diff(out, per_sample(torchvision_op, images, magnitudes)).max()) <= 2.0
    assert float(level_diff(out, per_sample(pil_reference(pil_op), images, magnitudes)).max()) <= 2.0


@pytest.mark.parametrize("name", ["posterize", "solarize", "equalize"])
def test_lookup_table_ops_are_exact_on_8_bit_images(images, name):
    """Posterize, solarize and equalize map 8-bit levels through a table: no rounding error at all."""
    ours, torchvision_op, _, values = PHOTOMETRIC[name]
    magnitudes = cycle(values, len(images))
    out = ours(images.float() / 255.0, magnitudes)
    assert torch.equal((out * 255.0).round().to(torch.uint8), per_sample(torchvision_op, images, magnitudes))


def test_lookup_table_ops_quantise_a_chained_input_to_its_8_bit_level(images):
    """An earlier op leaves values between 8-bit levels; the table ops read the nearest level."""
    x = images.float() / 255.0
    nudged = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9 * LEVEL).clamp(0, 1)
    bits, threshold = cycle([4, 5, 6, 7], len(x)), cycle([0.3, 0.5, 0.75], len(x))
    assert torch.equal(A.posterize(nudged, bits), A.posterize(x, bits))
    assert torch.equal(A.equalize(nudged), A.equalize(x))
    inverted = A.solarize(nudged, threshold) != nudged
    assert torch.equal(inverted, A.solarize(x, threshold) != x)


def test_brightness_multiplies_and_contrast_keeps_the_mean_grey():
    """The issue's two facts: brightness scales (0.5 halves every value); contrast blends with the mean grey,
    so the mean stays where it was (the additive/multiplicative versions move it: 0.50 became 0.25)."""
    x = smooth_images(4, seed=3).float() / 255.0
    half = torch.full((4,), 0.5)
    torch.testing.assert_close(A.brightness(x, half), x * 0.5)
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    out = A.contrast(x, half)
    out_gray = 0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]
    torch.testing.assert_close(out_gray.mean(dim=(1, 2)), gray.mean(dim=(1, 2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, 0.5 * x + 0.5 * gray.mean(dim=(1, 2)).view(4, 1, 1, 1))


def test_brightness_clips_a_ramp_as_pil_does_not_as_an_offset_would():
    """Over the old range (factors 0.1 to 1.9) an additive offset of factor - 1 sends about 45% of a ramp's
    pixels to pure black or white; PIL's multiplicative Brightness about 15%. Ours clips what PIL clips."""
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 4, 256).contiguous()
    x = ramp.float() / 255.0

    def clipped(y: torch.Tensor) -> float:  # black or white once stored as 8 bits (PIL truncates)
        levels = y * 255.0
        return float(((levels < 1.0 - 1e-4) | (levels > 255.0 - 1e-4)).float().mean())

    def pil_clipped(factor: float) -> float:
        out = np.asarray(ImageEnhance.Brightness(to_pil(ramp[0])).enhance(factor))
        return float(((out == 0) | (out == 255)).mean())

    for low, high in ((0.1, 1.9), (0.05, 0.95)):
        factors = np.linspace(low, high, 37)
        ours = [clipped(A.brightness(x, torch.tensor([f], dtype=torch.float32))) for f in factors]
        pil = [pil_clipped(f) for f in factors]
        offset = [clipped((x + (f - 1.0)).clamp(0, 1)) for f in factors]
        assert max(abs(a - b) for a, b in zip(ours, pil)) <= 2 / 256  # at most 2 of 256 levels apart
        assert abs(np.mean(ours) - np.mean(pil)) < 0.005
        assert np.mean(offset) > 0.4 and np.mean(ours) < 0.2
    # at the ends of FixMatch's range, 0.05 and 0.95: under 8% black, nothing turns white (an offset: 95% and 5%)
    for factor, most in ((0.05, 0.08), (0.95, 0.01)):
        ours = clipped(A.brightness(x, torch.tensor([factor])))
        assert ours == pytest.approx(pil_clipped(factor), abs=1 / 256) and ours < most
        assert clipped((x + (factor - 1.0)).clamp(0, 1)) > 4 * most


def white_interior(reference_warp, n: int) -> torch.Tensor:
    """Pixels whose bilinear footprint lies inside the source, found by warping a white image with the reference."""
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    return torch.stack([reference_warp(white, i) for i in range(n)]) == 255


GEOMETRIC = {
    # op: (ours, magnitudes, torchvision BILINEAR, PIL BILINEAR with FixMatch's definition)
    "rotate": (A.rotate, [-30.0, 30.0, -12.5, 7.0, 0.0, 21.3],
               lambda im, a: TF.rotate(im, a, interpolation=BILINEAR),
               lambda im, a: im.rotate(a, resample=Image.BILINEAR)),
    "shear_x": (A.shear_x, [-0.3, 0.3, -0.1, 0.17, 0.0, 0.24],
                lambda im, v: TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, interpolation=BILINEAR,
                                        shear=[math.degrees(math.atan(v)), 0.0], center=[0, 0]),
                lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0), resample=Image.BILINEAR)),
    "shear_y": (A.shear_y, [-0.3, 0.3, -0.1, 0.17, 0.0, 0.24],
                lambda im, v: TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, interpolation=BILINEAR,
                                        shear=[0.0, math.degrees(math.atan(v))], center=[0, 0]),
                lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0), resample=Image.BILINEAR)),
}


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_equal_torchvision_bilinear(images, name):
    """Same centre, direction and fill (0) as torchvision's BILINEAR warp; only its rounding to 8 bits differs."""
    ours, values, torchvision_op, _ = GEOMETRIC[name]
    magnitudes = cycle(values, len(images))
    diff = level_diff(ours(images.float() / 255.0, magnitudes), per_sample(torchvision_op, images, magnitudes))
    assert float(diff.max()) <= 0.51 and float(diff.mean()) < 0.3


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_follow_pil_fixmatch_definition_inside_the_image(images, name):
    """PIL's BILINEAR transform (FixMatch's geometry) agrees to 2 levels on every pixel whose bilinear footprint
    lies inside the source; along the warped image's edge PIL cuts to the fill where torchvision and we fade."""
    ours, values, torchvision_op, pil_op = GEOMETRIC[name]
    magnitudes = cycle(values, len(images))
    diff = level_diff(ours(images.float() / 255.0, magnitudes),
                      per_sample(pil_reference(pil_op), images, magnitudes))
    inside = white_interior(lambda white, i: torchvision_op(white, magnitudes[i].item()), len(images))
    assert float(inside.float().mean()) > 0.8
    assert float(diff[inside].max()) <= 2.0
    assert float(diff.mean()) < 4.0  # the edge band included


@pytest.mark.parametrize(("ours", "axis"), [(A.translate_x, 0), (A.translate_y, 1)])
def test_translate_moves_whole_pixels_as_fixmatch_and_torchvision(images, ours, axis):
    """FixMatch's TranslateX/Y: PIL's transform (1, 0, v*W, 0, 1, 0) / (1, 0, 0, 0, 1, v*H), i.e. content moves
    by -v*size, rounded to whole pixels: an exact copy of source pixels, black where nothing comes in."""
    magnitudes = cycle([-0.3, 0.3, -0.1, 0.17, 0.05, -0.22, 0.0, 0.25], len(images))
    out = ours(images.float() / 255.0, magnitudes)

    def pil_op(im: Image.Image, v: float) -> Image.Image:  # PIL's default resampling (nearest), as FixMatch's code
        coefficients = (1, 0, v * im.size[0], 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, v * im.size[1])
        return im.transform(im.size, Image.AFFINE, coefficients)

    def torchvision_op(im: torch.Tensor, v: float) -> torch.Tensor:
        pixels = [-round(v * 32), 0] if axis == 0 else [0, -round(v * 32)]
        return TF.affine(im, angle=0.0, translate=pixels, scale=1.0, shear=[0.0, 0.0], interpolation=BILINEAR)

    assert float(level_diff(out, per_sample(pil_reference(pil_op), images, magnitudes)).max()) < 1e-3
    assert float(level_diff(out, per_sample(torchvision_op, images, magnitudes)).max()) < 1e-3


def strong_views(ops: list[dict], num_ops: int = 1) -> A.PolicyViews:
    return A.PolicyViews({"name": "t", "num_ops": num_ops, "ops": ops}, (32, 32))


def test_apply_ops_maps_each_samples_level_into_the_range_of_its_op(images):
    views = A.PolicyViews(A.load_policy("strong"), (32, 32))
    names = [op["op"] for op in views.policy["ops"]]
    x = images.float() / 255.0
    level = torch.rand(len(x), generator=torch.Generator().manual_seed(2))
    for name, reference in (("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                            ("rotate", lambda im, a: TF.rotate(im, a, interpolation=BILINEAR))):
        low, high = FIXMATCH_TABLE_12[name]
        out = views.apply_ops(x, torch.full((len(x),), names.index(name)), level)
        expected = per_sample(reference, images, low + (high - low) * level)
        assert float(level_diff(out, expected).max()) <= 2.0, name


def test_each_sample_draws_its_own_magnitude_uniformly_in_the_range():
    """One brightness op per sample on 400 copies of one image: the factor out/in of each copy is its own draw."""
    x = (smooth_images(1, seed=5).float() / 255.0).clamp_min(0.05).repeat(400, 1, 1, 1)
    torch.manual_seed(0)
    out = strong_views([{"op": "brightness", "range": [0.05, 0.95]}])(x)
    factors = (out / x).flatten(1)
    assert float((factors.max(1).values - factors.min(1).values).max()) < 1e-5  # one factor per image
    factor = factors[:, 0].numpy()
    assert factor.min() >= 0.05 - 1e-6 and factor.max() <= 0.95 + 1e-6
    assert len(np.unique(factor.round(6))) == len(factor)
    # uniform on [0.05, 0.95]: each tenth of the range holds about 40 of the 400 draws
    counts = np.histogram(factor, bins=10, range=(0.05, 0.95))[0]
    assert counts.min() >= 20 and counts.max() <= 60


def test_posterize_draws_every_bit_count_of_its_range_equally():
    views = strong_views([{"op": "posterize", "range": [4, 8]}])
    bits = views.magnitudes(0, torch.arange(5000) / 5000.0)
    values, counts = torch.unique(bits, return_counts=True)
    assert values.tolist() == [4, 5, 6, 7, 8] and counts.tolist() == [1000] * 5


def test_builtin_strong_policies_use_fixmatch_ranges():
    for name in ("strong", "strong-small"):
        policy = A.load_policy(name)
        assert policy["num_ops"] == 2
        assert {op["op"]: op.get("range") for op in policy["ops"]} == FIXMATCH_TABLE_12


def test_weak_small_view_is_a_whole_pixel_shift_of_the_reflect_padded_image(images):
    """FixMatch's weak view on CIFAR: flip, reflect-pad 4 pixels, random 32 px crop. Every view must equal one
    such crop exactly (no resampling), and the shifts must vary over the batch."""
    views = A.PolicyViews(A.load_policy("weak-small"), (32, 32))
    x = images.float() / 255.0
    torch.manual_seed(4)
    out = views(x)
    shifts = []
    for source, view in zip(x.numpy(), out.numpy()):
        found = []
        for flipped in (source, source[:, :, ::-1]):
            padded = np.pad(flipped, ((0, 0), (4, 4), (4, 4)), mode="reflect")
            found += [(dy, dx) for dy in range(9) for dx in range(9)
                      if np.array_equal(padded[:, dy:dy + 32, dx:dx + 32], view)]
        assert found, "a weak view is not a whole-pixel shift of its (flipped) source"
        shifts.append(found[0])
    assert len(set(shifts)) > 5


@pytest.mark.parametrize(("weak", "strong"), [("weak-small", "strong-small"), ("weak", "strong")])
def test_same_seed_gives_bit_identical_views(images, weak, strong):
    pre = {"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    maker = A.ViewMaker(pre, A.load_policy(weak), A.load_policy(strong), seed=11, device=torch.device("cpu"))
    again = A.ViewMaker(pre, A.load_policy(weak), A.load_policy(strong), seed=11, device=torch.device("cpu"))
    x = images.float() / 255.0
    for kind in ("weak", "strong"):
        first = maker.view(x, kind, shard=2, index=0)
        torch.rand(1000)  # the global generator's state must not matter
        assert torch.equal(first, again.view(x, kind, shard=2, index=0))
        assert not torch.equal(first, maker.view(x, kind, shard=2, index=1))
        assert not torch.equal(first, maker.view(x, kind, shard=3, index=0))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"ops": [{"op": "brightness", "range": [0.95, 0.05]}]}, "op 'brightness' needs \"range\": \\[low, high\\]"),
        ({"ops": [{"op": "brightness"}]}, "op 'brightness' needs \"range\""),
        ({"ops": [{"op": "brightness", "range": [-0.5, 0.5]}]}, "0 <= low <= high <= inf, got \\[-0.5, 0.5\\]"),
        ({"ops": [{"op": "posterize", "range": [4.5, 8]}]}, "two integers with 1 <= low <= high <= 8"),
        ({"ops": [{"op": "solarize", "range": [0, 256]}]}, "0 <= low <= high <= 1, got \\[0, 256\\]"),
        ({"ops": [{"op": "rotate", "degrees": 30}]}, "op 'rotate' has unknown field\\(s\\) degrees"),
        ({"ops": [{"op": "equalize", "range": [0, 1]}]}, "this op takes no magnitude"),
        ({"ops": ["equalize"]}, "lists \"equalize\" as an op"),
        ({"translate": 0.125}, "unknown key\\(s\\) translate"),
        ({"shift": 0.5}, "shift must be a fraction of the size in \\[0, 0.5\\), got 0.5"),
    ],
)
def test_bad_policy_fields_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"name": "bad", "num_ops": 1 if "ops" in content else 0, **content}))
    with pytest.raises(InputError, match=message) as error:
        A.load_policy(str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "is not a JSON object"), ('{"num_ops": 1, "ops": {"op": "equalize"}}', "ops must be a list")],
)
def test_policy_of_the_wrong_shape_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "policy.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        A.load_policy(str(path))
    assert "\n" not in str(error.value)
