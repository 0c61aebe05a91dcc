"""The common image corruptions at five severities, computed on the device with torch.

The 15 standard types of the -C benchmarks, in four families:

- noise: ``gaussian_noise``, ``shot_noise``, ``impulse_noise``;
- blur: ``defocus_blur``, ``glass_blur``, ``motion_blur``, ``zoom_blur``;
- weather: ``snow``, ``frost``, ``fog``, ``brightness``;
- digital: ``contrast``, ``elastic_transform``, ``pixelate``, ``jpeg_compression``;

plus three extras of the same benchmarks (``gaussian_blur``, ``speckle_noise``, ``saturate``).

Severity parameters are the published CIFAR-10-C values, which are defined for 32-px images.
Spatial parameters (blur radii, shuffle distances, fog and snow scales, elastic displacements)
are scaled by ``min(H, W) / 32``, so a 224-px image gets proportionally larger blurs; noise,
colour and JPEG parameters do not depend on size. Every function takes float images
``N x 3 x H x W`` in [0, 1] and draws all its randomness from an explicit ``torch.Generator`` on
the images' device, so each sample gets its own noise, angles and fields and a batch is
reproducible from one seed. How these differ from the published files is in docs/method.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

Corruption = Callable[[Any, int, Any], Any]  # (images, severity, generator) -> images

STANDARD = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA = ("gaussian_blur", "speckle_noise", "saturate")

# Parameters per severity 1-5 (CIFAR-10-C values; spatial ones in pixels of a 32-px image).
PARAMS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # sigma of the multiplicative noise
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, delta, iterations
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, alias sigma
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),  # radius, sigma
    "zoom_blur": (0.05, 0.10, 0.15, 0.20, 0.25),  # largest zoom minus one, in steps of 0.01
    "snow": (  # mean, std, zoom, threshold, blur radius, blur sigma, blend
        (0.10, 0.2, 1.00, 0.60, 8, 3, 0.95),
        (0.10, 0.2, 1.00, 0.50, 10, 4, 0.90),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.90),
        (0.25, 0.3, 2.25, 0.60, 12, 6, 0.85),
        (0.30, 0.3, 1.25, 0.65, 14, 12, 0.80),
    ),
    "frost": ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),  # strength, fractal decay
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),  # added to HSV value
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),  # HSV saturation * a + b
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the per-channel mean
    "elastic_transform": (  # displacement, field smoothness, affine jitter: fractions of the side
        (0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.10, 0.04, 0.05), (0.10, 0.03, 0.03),
    ),
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),  # fraction of the side kept
    "jpeg_compression": (80, 65, 58, 50, 40),  # quality
}

# The JPEG standard's example quantisation tables (ITU T.81, Annex K), row-major.
JPEG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
JPEG_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
               24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


# ---------------------------------------------------------------- helpers


def _scale(images: Any) -> float:
    """Spatial scale of a batch relative to the 32-px images the parameters are defined for."""
    return min(images.shape[-2:]) / 32.0


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: Any, device: Any) -> Any:
    import torch

    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _gaussian_kernel(sigma: float, device: Any, truncate: float = 3.0) -> Any:
    import torch

    radius = max(1, int(math.ceil(truncate * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _depthwise(images: Any, kernel: Any) -> Any:
    """Convolve every channel of every image with one 2-D kernel (odd size), reflected borders."""
    import torch.nn.functional as F

    n, c, h, w = images.shape
    ky, kx = kernel.shape
    pad = (min(kx // 2, w - 1), min(kx // 2, w - 1), min(ky // 2, h - 1), min(ky // 2, h - 1))
    padded = F.pad(images.reshape(n * c, 1, h, w), pad, mode="reflect")
    if pad[0] < kx // 2 or pad[2] < ky // 2:  # an image smaller than the kernel: pad the rest with edges
        extra = (kx // 2 - pad[0], kx // 2 - pad[1], ky // 2 - pad[2], ky // 2 - pad[3])
        padded = F.pad(padded, extra, mode="replicate")
    return F.conv2d(padded, kernel[None, None].to(images.dtype)).reshape(n, c, h, w)


def gaussian_blur_px(images: Any, sigma: float) -> Any:
    """Separable Gaussian blur with sigma in pixels (reflected borders); sigma <= 0 is a no-op."""
    if sigma <= 0:
        return images
    kernel = _gaussian_kernel(sigma, images.device)
    return _depthwise(_depthwise(images, kernel[None, :]), kernel[:, None])


def _base_grid(n: int, h: int, w: int, device: Any) -> Any:
    """Pixel-centre coordinates (x, y) in grid_sample's normalised units (align_corners=False)."""
    import torch

    ys = (2 * torch.arange(h, device=device, dtype=torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=torch.float32) + 1) / w - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return grid.unsqueeze(0).expand(n, h, w, 2)


def _sample(images: Any, grid: Any, padding: str = "reflection") -> Any:
    import torch.nn.functional as F

    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _zoom(images: Any, factor: float) -> Any:
    """Zoom into the centre by ``factor`` keeping the size (bilinear)."""
    n, _, h, w = images.shape
    return _sample(images, _base_grid(n, h, w, images.device) / factor)


def _motion(images: Any, radius: float, sigma: float, angles: Any, max_taps: int = 32) -> Any:
    """One-sided motion blur along each sample's angle (degrees): a Gaussian-weighted sum of
    copies shifted 0..radius pixels, so each sample is streaked in its own direction."""
    import torch

    n, _, h, w = images.shape
    taps = torch.linspace(0.0, float(radius), min(max_taps, int(math.ceil(radius)) + 1), device=images.device)
    weights = torch.exp(-0.5 * (taps / max(sigma, 1e-6)) ** 2)
    weights = weights / weights.sum()
    theta = torch.deg2rad(angles.float())
    step = torch.stack([torch.cos(theta) * 2 / w, torch.sin(theta) * 2 / h], dim=-1).view(n, 1, 1, 2)
    base = _base_grid(n, h, w, images.device)
    out = torch.zeros_like(images)
    for tap, weight in zip(taps, weights):
        out += weight * _sample(images, base - tap * step, padding="border")
    return out


def _gray(images: Any) -> Any:
    """Luma (ITU-R BT.601), N x 1 x H x W."""
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def plasma_fractal(n: int, size: int, decay: float, generator: Any, device: Any) -> Any:
    """``n`` diamond-square height maps of side ``size`` (a power of two), each scaled to [0, 1].

    Each level sets square centres, then edge midpoints, to the mean of their four neighbours
    (wrapping around) plus uniform noise whose amplitude falls by ``decay**2`` per level.
    """
    import torch

    if size & (size - 1):
        raise ValueError(f"plasma_fractal size must be a power of two, got {size}")
    grid = torch.zeros((n, size, size), device=device)
    step, amplitude = size, 1.0
    while step >= 2:
        half = step // 2
        corners = grid[:, ::step, ::step]
        around = corners + corners.roll(-1, 1)
        around = around + around.roll(-1, 2)
        centres = around / 4 + _uniform(corners.shape, -amplitude, amplitude, generator, device)
        grid[:, half::step, half::step] = centres
        across = corners + corners.roll(-1, 2) + centres + centres.roll(1, 1)
        grid[:, ::step, half::step] = across / 4 + _uniform(corners.shape, -amplitude, amplitude, generator, device)
        down = corners + corners.roll(-1, 1) + centres + centres.roll(1, 2)
        grid[:, half::step, ::step] = down / 4 + _uniform(corners.shape, -amplitude, amplitude, generator, device)
        step, amplitude = half, amplitude / decay**2
    low = grid.amin(dim=(1, 2), keepdim=True)
    high = grid.amax(dim=(1, 2), keepdim=True)
    return (grid - low) / (high - low).clamp_min(1e-12)


def _fractal_like(images: Any, decay: float, generator: Any) -> Any:
    """A plasma fractal per sample covering the image, N x 1 x H x W."""
    n, _, h, w = images.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    return plasma_fractal(n, size, decay, generator, images.device)[:, None, :h, :w]


# ---------------------------------------------------------------- noise


def gaussian_noise(images: Any, severity: int, generator: Any) -> Any:
    """Additive Gaussian noise per value."""
    import torch

    sigma = PARAMS["gaussian_noise"][severity - 1]
    return images + sigma * torch.randn(images.shape, generator=generator, device=images.device)


def shot_noise(images: Any, severity: int, generator: Any) -> Any:
    """Poisson (photon) noise: counts with mean ``x * photons``, divided back."""
    import torch

    photons = PARAMS["shot_noise"][severity - 1]
    return torch.poisson(images.clamp(0, 1) * photons, generator=generator) / photons


def impulse_noise(images: Any, severity: int, generator: Any) -> Any:
    """Salt-and-pepper noise: a fraction of values set to 0 or 1 with equal odds."""
    import torch

    amount = PARAMS["impulse_noise"][severity - 1]
    hit = torch.rand(images.shape, generator=generator, device=images.device) < amount
    salt = torch.rand(images.shape, generator=generator, device=images.device) < 0.5
    return torch.where(hit, salt.to(images.dtype), images)


def speckle_noise(images: Any, severity: int, generator: Any) -> Any:
    """Multiplicative Gaussian noise: ``x + x * N(0, sigma)``."""
    import torch

    sigma = PARAMS["speckle_noise"][severity - 1]
    return images + images * sigma * torch.randn(images.shape, generator=generator, device=images.device)


# ---------------------------------------------------------------- blur


def gaussian_blur(images: Any, severity: int, generator: Any) -> Any:
    """Gaussian blur."""
    return gaussian_blur_px(images, PARAMS["gaussian_blur"][severity - 1] * _scale(images))


def defocus_blur(images: Any, severity: int, generator: Any) -> Any:
    """Convolution with an anti-aliased disk (an out-of-focus lens)."""
    import torch

    radius, alias = (v * _scale(images) for v in PARAMS["defocus_blur"][severity - 1])
    reach = int(math.ceil(radius)) + 2
    offsets = torch.arange(-reach, reach + 1, device=images.device, dtype=torch.float32)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).float()
    smooth = _gaussian_kernel(alias, images.device, truncate=2.0)
    disk = torch.nn.functional.conv2d(disk[None, None], (smooth[:, None] * smooth[None, :])[None, None],
                                      padding=len(smooth) // 2)[0, 0]
    return _depthwise(images, disk / disk.sum())


def glass_blur(images: Any, severity: int, generator: Any) -> Any:
    """Blur, then each pixel takes the value of a random neighbour up to ``delta`` away (repeated),
    then blur again: frosted glass."""
    import torch

    sigma, delta, iterations = PARAMS["glass_blur"][severity - 1]
    scale = _scale(images)
    delta = max(1, round(delta * scale))
    out = gaussian_blur_px(images, sigma * scale)
    n, c, h, w = out.shape
    rows = torch.arange(h, device=out.device).view(1, h, 1)
    cols = torch.arange(w, device=out.device).view(1, 1, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta, (n, h, w), generator=generator, device=out.device)
        dx = torch.randint(-delta, delta, (n, h, w), generator=generator, device=out.device)
        source = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        out = out.flatten(2).gather(2, source.flatten(1)[:, None].expand(n, c, h * w)).view(n, c, h, w)
    return gaussian_blur_px(out, sigma * scale)


def motion_blur(images: Any, severity: int, generator: Any) -> Any:
    """A streak along a random direction (-45 to 45 degrees) per sample."""
    radius, sigma = PARAMS["motion_blur"][severity - 1]
    scale = _scale(images)
    angles = _uniform((images.shape[0],), -45.0, 45.0, generator, images.device)
    return _motion(images, radius * scale, sigma * scale, angles)


def zoom_blur(images: Any, severity: int, generator: Any) -> Any:
    """The mean of the image and its centre zooms by 1.00, 1.01, ... (a camera zooming while exposing)."""
    steps = round(PARAMS["zoom_blur"][severity - 1] / 0.01)
    out = images.clone()
    for k in range(steps + 1):
        out += _zoom(images, 1.0 + 0.01 * k)
    return out / (steps + 2)


# ---------------------------------------------------------------- weather


def snow(images: Any, severity: int, generator: Any) -> Any:
    """Bright flakes (thresholded, zoomed noise streaked by motion blur) over a whitened image."""
    import torch

    mean, std, zoom, threshold, radius, sigma, blend = PARAMS["snow"][severity - 1]
    scale = _scale(images)
    n, _, h, w = images.shape
    flakes = mean + std * torch.randn((n, 1, h, w), generator=generator, device=images.device)
    flakes = _zoom(flakes, zoom) if zoom != 1.0 else flakes
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0, 1)
    angles = _uniform((n,), -135.0, -45.0, generator, images.device)
    flakes = _motion(flakes, radius * scale, sigma * scale, angles)
    whitened = torch.maximum(images, _gray(images) * 1.5 + 0.5)
    out = blend * images + (1 - blend) * whitened
    return out + flakes + flakes.flip(-1, -2)


def frost_layer(images: Any, generator: Any) -> Any:
    """A synthetic frost texture in [0, 1], N x 3 x H x W: fractal haze plus ice needles
    (sparse seeds streaked in three random directions), tinted blue-white."""
    import torch

    n, _, h, w = images.shape
    scale = _scale(images)
    haze = _fractal_like(images, 1.6, generator)
    seeds = (torch.rand((n, 1, h, w), generator=generator, device=images.device) < 0.03).float()
    needles = torch.zeros_like(haze)
    for _ in range(3):
        angles = _uniform((n,), -180.0, 180.0, generator, images.device)
        needles += _motion(seeds, 4 * scale, 2 * scale, angles)
    needles = needles / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    gray = (0.55 * haze + 0.9 * needles).clamp(0, 1)
    tint = torch.tensor([0.85, 0.92, 1.0], device=images.device).view(1, 3, 1, 1)
    return gray * tint


def frost(images: Any, severity: int, generator: Any) -> Any:
    """Frost on the lens: ``a * image + b * frost`` (the frost layer is synthesised here)."""
    image_weight, frost_weight = PARAMS["frost"][severity - 1]
    return image_weight * images + frost_weight * frost_layer(images, generator)


def fog(images: Any, severity: int, generator: Any) -> Any:
    """A plasma-fractal haze added and the image rescaled to keep its maximum."""
    strength, decay = PARAMS["fog"][severity - 1]
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    out = images + strength * _fractal_like(images, decay, generator)
    return out * peak / (peak + strength)


def _value_and_saturation(images: Any) -> tuple[Any, Any, Any]:
    value = images.amax(dim=1, keepdim=True)
    low = images.amin(dim=1, keepdim=True)
    saturation = (value - low) / value.clamp_min(1e-12)
    return value, low, saturation


def brightness(images: Any, severity: int, generator: Any) -> Any:
    """HSV value + c (hue and saturation kept): every channel scales by V'/V."""
    import torch

    value, _, _ = _value_and_saturation(images)
    target = (value + PARAMS["brightness"][severity - 1]).clamp(0, 1)
    return torch.where(value > 0, images * target / value.clamp_min(1e-12), target.expand_as(images))


def saturate(images: Any, severity: int, generator: Any) -> Any:
    """HSV saturation * a + b (hue and value kept); a gray pixel takes hue 0 (red), as HSV does."""
    import torch

    a, b = PARAMS["saturate"][severity - 1]
    value, low, saturation = _value_and_saturation(images)
    target = (saturation * a + b).clamp(0, 1)
    coloured = value - (value - images) * target / saturation.clamp_min(1e-12)
    red = torch.cat([value, value * (1 - target), value * (1 - target)], dim=1)
    return torch.where(value - low > 0, coloured, red)


# ---------------------------------------------------------------- digital


def contrast(images: Any, severity: int, generator: Any) -> Any:
    """Contrast reduced towards each image's per-channel mean."""
    factor = PARAMS["contrast"][severity - 1]
    mean = images.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * factor + mean


def elastic_transform(images: Any, severity: int, generator: Any) -> Any:
    """A random affine jitter of three control points composed with a smooth random
    displacement field, resampled bilinearly with reflected borders."""
    import torch

    alpha, smooth, jitter = PARAMS["elastic_transform"][severity - 1]
    n, _, h, w = images.shape
    side = float(min(h, w))
    alpha, smooth, jitter = alpha * side, smooth * side, jitter * side
    device = images.device
    centre = torch.tensor([w // 2, h // 2], device=device, dtype=torch.float32)
    arm = float(int(side) // 3)
    source = torch.stack([centre + arm, centre + torch.tensor([arm, -arm], device=device), centre - arm])
    target = source + _uniform((n, 3, 2), -jitter, jitter, generator, device)
    # the affine map target -> source, applied to output pixel coordinates
    ones = torch.ones((n, 3, 1), device=device)
    solve = torch.linalg.solve(torch.cat([target, ones], dim=-1), source.expand(n, 3, 2))  # n x 3 x 2
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    points = torch.stack([xs, ys], dim=-1).expand(n, h, w, 2)
    if alpha > 0 and smooth > 0:
        field = _uniform((n, 2, h, w), -1.0, 1.0, generator, device)
        field = gaussian_blur_px(field, smooth) * alpha
        points = points + field.permute(0, 2, 3, 1)
    warped = torch.cat([points, torch.ones((n, h, w, 1), device=device)], dim=-1) @ solve.unsqueeze(1)
    grid = torch.stack([(2 * warped[..., 0] + 1) / w - 1, (2 * warped[..., 1] + 1) / h - 1], dim=-1)
    return _sample(images, grid)


def _box_weights(size_in: int, size_out: int, device: Any) -> Any:
    """Row-stochastic weights of box resampling: output cell i averages the input pixels whose
    centres fall in [i, i + 1) * size_in / size_out (PIL's BOX filter rule)."""
    import torch

    ratio = size_in / size_out
    starts = torch.arange(size_out, device=device, dtype=torch.float64)[:, None] * ratio
    centres = torch.arange(size_in, device=device, dtype=torch.float64)[None, :] + 0.5
    inside = ((centres >= starts) & (centres < starts + ratio)).double()
    return (inside / inside.sum(dim=1, keepdim=True).clamp_min(1)).float()


def box_resize(images: Any, height: int, width: int) -> Any:
    """Downsample with a box filter, as PIL's BOX resampling does."""
    rows = _box_weights(images.shape[-2], height, images.device)
    cols = _box_weights(images.shape[-1], width, images.device)
    return rows @ images @ cols.T


def pixelate(images: Any, severity: int, generator: Any) -> Any:
    """Box-downsample to a fraction of the side, then blow back up with nearest neighbours."""
    import torch.nn.functional as F

    keep = PARAMS["pixelate"][severity - 1]
    h, w = images.shape[-2:]
    small = box_resize(images, max(1, int(h * keep)), max(1, int(w * keep)))
    return F.interpolate(small, size=(h, w), mode="nearest")


def _dct_matrix(device: Any) -> Any:
    """The orthonormal 8-point DCT-II matrix (the JPEG block transform)."""
    import torch

    k = torch.arange(8, device=device, dtype=torch.float32)
    matrix = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix


def jpeg_table(base: tuple[int, ...], quality: int, device: Any) -> Any:
    """A quantisation table scaled to ``quality`` the way the IJG library does it."""
    import torch

    factor = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, device=device, dtype=torch.float32).view(8, 8)
    return torch.floor((table * factor + 50) / 100).clamp(1, 255)


def _jpeg_plane(plane: Any, table: Any, dct: Any) -> Any:
    """Level-shift, 8x8 DCT, quantise, dequantise and invert one plane (N x H x W, multiples of 8)."""
    n, h, w = plane.shape
    blocks = (plane - 128).view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coefficients = dct @ blocks @ dct.T
    coefficients = (coefficients / table).round() * table
    restored = dct.T @ coefficients @ dct
    return restored.permute(0, 1, 3, 2, 4).reshape(n, h, w) + 128


def jpeg_compression(images: Any, severity: int, generator: Any) -> Any:
    """Baseline JPEG at a quality: YCbCr, 4:2:0 chroma, 8x8 DCT quantised with the standard
    tables, decoded back (chroma upsampled bilinearly), all as tensor arithmetic on the device."""
    import torch
    import torch.nn.functional as F

    quality = PARAMS["jpeg_compression"][severity - 1]
    n, _, h, w = images.shape
    pad_h, pad_w = -h % 16, -w % 16
    x = F.pad(images * 255.0, (0, pad_w, 0, pad_h), mode="replicate")
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    dct = _dct_matrix(images.device)
    luma, chroma = jpeg_table(JPEG_LUMA, quality, images.device), jpeg_table(JPEG_CHROMA, quality, images.device)
    y = _jpeg_plane(y.round(), luma, dct)
    planes = []
    for plane in (cb, cr):
        small = F.avg_pool2d(plane[:, None], 2)[:, 0]
        pad = (0, -small.shape[-1] % 8, 0, -small.shape[-2] % 8)
        small = F.pad(small[:, None], pad, mode="replicate")[:, 0]
        small = _jpeg_plane(small.round(), chroma, dct)[:, : (h + pad_h) // 2, : (w + pad_w) // 2]
        planes.append(F.interpolate(small[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0])
    cb, cr = planes[0] - 128, planes[1] - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return (rgb.round().clamp(0, 255) / 255.0)[:, :, :h, :w]


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "gaussian_blur": gaussian_blur,
    "speckle_noise": speckle_noise,
    "saturate": saturate,
}


def corruption_seed(seed: int, shard: int, name: str, severity: int) -> int:
    """A 63-bit seed for one shard's corruption draws, independent of batch sizes and other shards."""
    digest = hashlib.sha256(f"{seed}/{shard}/corrupt/{name}/{severity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check(name: str, severity: int) -> None:
    """Raise ValueError for an unknown corruption or a severity outside 1-5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: use one of {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1 to 5, got {severity}")


def corrupt_batch(images: Any, name: str, severity: int, generator: Any) -> Any:
    """Corrupt a uint8 batch N x 3 x H x W on its device; returns uint8 on the same device.

    The result is rounded to 8 bits, as a corrupted image file would be.
    """
    import torch

    check(name, severity)
    with torch.no_grad():
        x = images.float().div_(255.0)
        out = CORRUPTIONS[name](x, severity, generator)
        return out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt uint8 ``N x H x W x 3`` arrays on the CPU; returns uint8 of the same shape."""
    import torch

    check(name, severity)
    generator = torch.Generator().manual_seed(corruption_seed(seed, 0, name, severity))
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return corrupt_batch(batch, name, severity, generator).permute(0, 2, 3, 1).numpy()


def expand(spec: str) -> list[tuple[str, int]]:
    """``NAME:SEVERITY``, ``NAME:1,3``, ``NAME:all``, ``all:SEVERITY`` or ``all`` -> (name, severity) pairs;
    ``all`` means the 15 standard types and severities 1-5. ValueError for anything else."""
    name, _, severity = spec.partition(":")
    severity = severity or ("all" if name == "all" else "")
    names = list(STANDARD) if name == "all" else [name]
    if name != "all" and name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{name}'")
    if severity == "all":
        levels = [1, 2, 3, 4, 5]
    elif all(part.isdigit() and 1 <= int(part) <= 5 for part in severity.split(",")):
        levels = sorted({int(part) for part in severity.split(",")})
    else:
        raise ValueError(f"severity '{severity}' is not 1-5, a list such as 1,3, or all")
    return [(n, s) for n in names for s in levels]
