"""The 15 standard corruptions (and 3 extras) on the device, against independent references:
scipy for the Gaussian blur, the standard library's colorsys for HSV edits, PIL for JPEG and box
downsampling, and the noise models' own moments."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
from conftest import cifar_files
from PIL import Image

from lpclip_cache import corruptions as C

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform"}
# Mean change grows strictly with severity for these (the published parameters of glass blur,
# snow, frost, elastic and saturate are not ordered that way, and pixelate only nearly; motion
# blur's severities 3 and 4 share sigma 2.0 and differ only in the radius that truncates the
# streak, so over the 200 fixture images they change the images by the same amount, 12.8 and 12.7).
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "gaussian_blur",
            "zoom_blur", "fog", "brightness", "contrast", "jpeg_compression")


@pytest.fixture(scope="module")
def cifar_images() -> np.ndarray:
    """The repository's 200 real CIFAR-10 test images, uint8 N x 32 x 32 x 3."""
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in cifar_files()])


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_the_standard_fifteen_and_the_extras_are_all_registered():
    assert len(C.STANDARD) == 15 and len(set(C.STANDARD)) == 15
    assert set(C.CORRUPTIONS) == set(C.STANDARD) | set(C.EXTRA)
    assert all(len(C.PARAMS[name]) == 5 for name in C.CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(C.CORRUPTIONS))
def test_every_corruption_keeps_shape_and_dtype_and_is_reproducible(name, cifar_images):
    images = cifar_images[:8]
    out = C.corrupt(images, name, 3, seed=4)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - images).mean() > 0.3, "the corruption changed nothing"
    np.testing.assert_array_equal(out, C.corrupt(images, name, 3, seed=4))
    if name in RANDOM:
        assert not np.array_equal(out, C.corrupt(images, name, 3, seed=5))
        twins = np.repeat(images[:1], 2, axis=0)  # two identical images draw their own randomness
        first, second = C.corrupt(twins, name, 3)
        assert not np.array_equal(first, second)
    else:
        np.testing.assert_array_equal(out, C.corrupt(images, name, 3, seed=5))


@pytest.mark.parametrize("name", MONOTONE)
def test_change_grows_with_severity(name, cifar_images):
    change = [np.abs(C.corrupt(cifar_images, name, s).astype(int) - cifar_images).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:])), change


@pytest.mark.parametrize("name", sorted(set(C.CORRUPTIONS) - set(MONOTONE) - {"saturate", "elastic_transform"}))
def test_severity_five_changes_more_than_severity_one(name, cifar_images):
    change = [np.abs(C.corrupt(cifar_images, name, s).astype(int) - cifar_images).mean() for s in (1, 5)]
    assert change[0] < change[1], change


def test_spatial_corruptions_scale_with_the_image_side(cifar_images):
    small = as_float(cifar_images[:4])
    large = torch.nn.functional.interpolate(small, size=(128, 128), mode="nearest")
    # a blur whose sigma is in 32-px units blurs the 4x image by the same amount in its units
    blurred_small = C.gaussian_blur(small, 5, None)
    blurred_large = C.gaussian_blur(large, 5, None)
    back = torch.nn.functional.avg_pool2d(blurred_large, 4)
    assert (back - blurred_small).abs().mean() < 0.25 * (blurred_small - small).abs().mean()


def test_gaussian_noise_has_the_severity_sigma():
    gray = torch.full((4, 3, 64, 64), 0.5)
    for severity, sigma in enumerate(C.PARAMS["gaussian_noise"], 1):
        residual = C.gaussian_noise(gray, severity, torch.Generator().manual_seed(0)) - gray
        assert abs(float(residual.mean())) < 0.003
        assert float(residual.std()) == pytest.approx(sigma, rel=0.03)


def test_shot_noise_is_poisson():
    level = torch.full((4, 3, 64, 64), 0.4)
    photons = C.PARAMS["shot_noise"][4]
    out = C.shot_noise(level, 5, torch.Generator().manual_seed(0))
    counts = out * photons
    torch.testing.assert_close(counts, counts.round(), atol=1e-4, rtol=0)  # whole photon counts / photons
    assert float(out.mean()) == pytest.approx(0.4, rel=0.02)
    assert float(out.var()) == pytest.approx(0.4 / photons, rel=0.05)  # Poisson: variance = mean


def test_impulse_noise_sets_the_severity_fraction_to_black_or_white():
    gray = torch.full((4, 3, 64, 64), 0.5)
    out = C.impulse_noise(gray, 5, torch.Generator().manual_seed(0))
    hit = out != 0.5
    assert set(torch.unique(out[hit]).tolist()) == {0.0, 1.0}
    assert float(hit.float().mean()) == pytest.approx(C.PARAMS["impulse_noise"][4], rel=0.06)
    assert float((out[hit] == 1.0).float().mean()) == pytest.approx(0.5, abs=0.04)


def test_speckle_noise_scales_with_intensity():
    level = torch.full((4, 3, 64, 64), 0.5)
    out = C.speckle_noise(level, 5, torch.Generator().manual_seed(0))
    assert float((out - level).std()) == pytest.approx(0.5 * C.PARAMS["speckle_noise"][4], rel=0.03)
    black = torch.zeros((1, 3, 16, 16))
    assert torch.equal(C.speckle_noise(black, 5, torch.Generator().manual_seed(0)), black)


def test_gaussian_blur_equals_scipy(cifar_images):
    from scipy import ndimage

    images = as_float(cifar_images[:4])
    ours = C.gaussian_blur_px(images, 1.3).numpy()
    # torch's reflect padding leaves the edge pixel out: scipy calls that mode 'mirror'
    reference = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, 1.3, 1.3), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("name", ["defocus_blur", "gaussian_blur", "zoom_blur", "motion_blur", "glass_blur",
                                  "elastic_transform", "pixelate"])
def test_blurs_and_warps_keep_a_constant_image(name):
    flat = torch.full((2, 3, 32, 32), 0.3)
    out = C.CORRUPTIONS[name](flat, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, flat, atol=1e-5, rtol=0)


def test_defocus_kernel_sharpness_falls_with_severity(cifar_images):
    images = as_float(cifar_images[:8])

    def high_frequency(x: torch.Tensor) -> float:
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    energy = [high_frequency(C.defocus_blur(images, s, None)) for s in range(1, 6)]
    assert all(a > b for a, b in zip(energy, energy[1:])) and energy[0] < high_frequency(images)


def test_motion_blur_streaks_along_the_angle():
    dot = torch.zeros((2, 1, 33, 33))
    dot[:, :, 16, 16] = 1.0
    out = C._motion(dot, 6.0, 3.0, torch.tensor([0.0, 90.0]))
    horizontal, vertical = out[0, 0], out[1, 0]
    assert float(horizontal.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(horizontal[16].sum()) == pytest.approx(1.0, abs=1e-5)  # all mass stays on the dot's row
    assert float(vertical[:, 16].sum()) == pytest.approx(1.0, abs=1e-5)  # and on its column at 90 degrees
    assert float(horizontal[16, 17:].sum()) > 0.3 and float(horizontal[16, :16].sum()) < 1e-6  # one-sided


def test_glass_blur_only_moves_values_locally(cifar_images):
    images = as_float(cifar_images[:4])
    out = C.glass_blur(images, 5, torch.Generator().manual_seed(0))
    assert float(out.max()) <= float(images.max()) + 1e-6 and float(out.min()) >= float(images.min()) - 1e-6
    assert torch.allclose(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.03)


def test_plasma_fractal_is_normalised_and_smoother_with_more_decay():
    rough = C.plasma_fractal(4, 64, 1.5, torch.Generator().manual_seed(0), "cpu")
    smooth = C.plasma_fractal(4, 64, 3.0, torch.Generator().manual_seed(0), "cpu")
    for field in (rough, smooth):
        assert torch.allclose(field.amin(dim=(1, 2)), torch.zeros(4)) and torch.allclose(field.amax(dim=(1, 2)),
                                                                                         torch.ones(4))
    def step(f: torch.Tensor) -> float:
        return float((f[:, 1:] - f[:, :-1]).abs().mean())

    assert step(smooth) < step(rough)
    with pytest.raises(ValueError, match="power of two"):
        C.plasma_fractal(1, 48, 2.0, None, "cpu")


def test_fog_keeps_each_image_maximum_and_lowers_contrast(cifar_images):
    images = as_float(cifar_images[:8])
    out = C.fog(images, 5, torch.Generator().manual_seed(0))
    assert torch.all(out.amax(dim=(1, 2, 3)) <= images.amax(dim=(1, 2, 3)) + 1e-6)
    assert float(out.std(dim=(2, 3)).mean()) < float(images.std(dim=(2, 3)).mean())


def test_brightness_and_saturate_equal_an_hsv_round_trip(cifar_images):
    images = as_float(cifar_images[:2])
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()[::7]
    for severity in (2, 5):
        shift = C.PARAMS["brightness"][severity - 1]
        a, b = C.PARAMS["saturate"][severity - 1]
        bright = C.brightness(images, severity, None).permute(0, 2, 3, 1).reshape(-1, 3).numpy()[::7]
        sat = C.saturate(images, severity, None).permute(0, 2, 3, 1).reshape(-1, 3).numpy()[::7]
        for pixel, got_bright, got_sat in zip(pixels, bright, sat):
            h, s, v = colorsys.rgb_to_hsv(*pixel.tolist())
            np.testing.assert_allclose(got_bright, colorsys.hsv_to_rgb(h, s, min(1.0, v + shift)), atol=1e-5)
            np.testing.assert_allclose(got_sat, colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * a + b)), v), atol=1e-5)


def test_contrast_keeps_channel_means_and_scales_deviations(cifar_images):
    images = as_float(cifar_images[:8])
    for severity, factor in enumerate(C.PARAMS["contrast"], 1):
        out = C.contrast(images, severity, None)
        torch.testing.assert_close(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std(dim=(2, 3)), factor * images.std(dim=(2, 3)), atol=1e-5, rtol=0)


def test_pixelate_is_a_box_downsample_blown_up(cifar_images):
    images = cifar_images[:6]
    side = int(32 * C.PARAMS["pixelate"][4])
    small = C.box_resize(as_float(images), side, side)
    for image, got in zip(images, small):
        box = np.asarray(Image.fromarray(image).resize((side, side), Image.BOX)).astype(int)
        assert np.abs((got.permute(1, 2, 0).numpy() * 255).round() - box).max() <= 1  # PIL rounds in 8 bits
    out = C.corrupt(images, "pixelate", 5)
    for got in out:
        assert np.unique(got, axis=0).shape[0] <= side and np.unique(got, axis=1).shape[1] <= side  # blocks


def test_jpeg_compression_is_close_to_pil_at_the_same_quality(cifar_images):
    for severity, quality in enumerate(C.PARAMS["jpeg_compression"], 1):
        ours = C.corrupt(cifar_images, "jpeg_compression", severity).astype(int)
        reference = []
        for image in cifar_images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            reference.append(np.asarray(Image.open(buffer).convert("RGB")))
        reference = np.stack(reference).astype(int)
        distortion = np.abs(reference - cifar_images).mean()
        assert np.abs(ours - reference).mean() < 0.5 * distortion, (quality, distortion)


def test_jpeg_tables_follow_the_quality_scaling():
    assert C.jpeg_table(C.JPEG_LUMA, 50, "cpu").flatten().tolist() == list(C.JPEG_LUMA)
    assert torch.all(C.jpeg_table(C.JPEG_LUMA, 100, "cpu") == 1)
    assert torch.all(C.jpeg_table(C.JPEG_LUMA, 10, "cpu") >= C.jpeg_table(C.JPEG_LUMA, 40, "cpu"))


def test_snow_and_frost_add_light(cifar_images):
    images = as_float(cifar_images[:8])
    snowy = C.snow(images, 5, torch.Generator().manual_seed(0)).clamp(0, 1)
    assert float(snowy.mean()) > float(images.mean()) + 0.05
    layer = C.frost_layer(images, torch.Generator().manual_seed(0))
    assert float(layer.min()) >= 0 and float(layer.max()) <= 1
    assert torch.all(layer[:, 2] >= layer[:, 0])  # blue-white
    weight_image, weight_frost = C.PARAMS["frost"][4]
    frosted = C.frost(images, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(frosted, weight_image * images + weight_frost * layer)


def test_elastic_transform_warps_per_sample(cifar_images):
    images = as_float(np.repeat(cifar_images[:1], 2, axis=0))
    out = C.elastic_transform(images, 4, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])
    assert float((out - images).abs().mean()) > 0.01
    assert float(out.min()) >= float(images.min()) - 1e-6 and float(out.max()) <= float(images.max()) + 1e-6


@pytest.mark.parametrize(
    ("spec", "count"),
    [("all", 75), ("all:3", 15), ("fog:all", 5), ("fog:1,3", 2), ("jpeg_compression:2", 1), ("saturate:1", 1)],
)
def test_specs_expand_to_every_pair(spec, count):
    pairs = C.expand(spec)
    assert len(pairs) == count and len(set(pairs)) == count
    assert all(name in C.CORRUPTIONS and 1 <= s <= 5 for name, s in pairs)


@pytest.mark.parametrize("spec", ["fog:0", "fog:6", "rain:2", "fog", "all:x", "", "fog:1,", "fog:1,6"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ValueError):
        C.expand(spec)
