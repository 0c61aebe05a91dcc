"""Image corruptions at five severities, on uint8 N x H x W x 3 arrays (numpy, CPU).

Each corruption is a function ``(images_float01, severity, rng) -> images_float01`` in a table;
``corrupt`` converts and clips. Severity parameters grow monotonically from 1 to 5. They are
scaled for small images (32 px): blur radii are in pixels of the image given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders over axes 1 and 2."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = images
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        length = out.shape[axis]
        out = sum(
            weight * np.take(padded, np.arange(k, k + length), axis=axis) for k, weight in enumerate(kernel)
        )
    return out


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise."""
    sigma = (0.04, 0.07, 0.1, 0.14, 0.2)[severity - 1]
    return images + rng.normal(0.0, sigma, images.shape)


def gaussian_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma in pixels)."""
    return _blur(images, (0.5, 0.7, 0.9, 1.2, 1.6)[severity - 1])


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduction towards each image's mean."""
    factor = (0.6, 0.45, 0.32, 0.22, 0.14)[severity - 1]
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    return (images - mean) * factor + mean


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1-5) to uint8 images; returns uint8."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1 to 5, got {severity}")
    rng = np.random.default_rng([seed, severity, sorted(CORRUPTIONS).index(name)])
    out = CORRUPTIONS[name](images.astype(np.float64) / 255.0, severity, rng)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
