"""Views made on the compute device from a uint8 batch: clean, weak and strong.

Policies are data (``resources/policies/*.json`` or a user's JSON file). The strong policy is
FixMatch's RandAugment: ``num_ops`` operations per sample, each drawn uniformly from the policy's
list with a magnitude drawn uniformly in that operation's range. Each operation is a batched
function of float images in [0, 1] and a per-sample magnitude that reproduces PIL's and
torchvision's definition of the operation. Most are Kornia's functional operations
(``kornia.enhance``: ``adjust_brightness_accumulative``, ``adjust_contrast_with_mean_subtraction``,
``adjust_saturation_with_gray_subtraction``, ``sharpness``, ``posterize``, ``equalize``;
``kornia.geometry.transform``: ``rotate``, ``translate``); the few the project keeps say why
(solarize, autocontrast, the shears, the weak view's whole-pixel shift). Kornia's own RandAugment
draws one operation set per call for the whole batch, so the policy's draws are made here. The
weak policy for small images shifts by whole pixels with reflected borders (FixMatch's
pad-and-crop): no resampling blur.

Every random draw comes from torch's generator, seeded per (seed, shard, view kind, view index)
inside ``torch.random.fork_rng``: a shard's views do not depend on what ran before it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import kornia.enhance as KE
import kornia.geometry.transform as KG
import torch
import torch.nn.functional as F

from .errors import InputError


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """The nearest 8-bit levels (int64, 0 to 255) of float images in [0, 1]."""
    return images.mul(255.0).round_().clamp_(0, 255).long()


def quantised(images: torch.Tensor) -> torch.Tensor:
    """Float images at their nearest 8-bit level: what a PIL operation reads after an earlier one."""
    return to_levels(images).to(images.dtype) / 255.0


# Kornia's functional operations, taking a per-sample magnitude each (docs/method.md lists how far
# they lie from PIL's and torchvision's: tests/test_view_ops.py holds them to 2 levels).


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Brightness: multiply by ``factor`` (0 black, 1 unchanged), clipped."""
    return KE.adjust_brightness_accumulative(images, factor.to(images.dtype))


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Contrast: blend with the image's mean grey level (0 flat grey, 1 unchanged)."""
    return KE.adjust_contrast_with_mean_subtraction(images, factor.to(images.dtype))


def color(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Color (saturation): blend with the grayscale image (0 grey, 1 unchanged)."""
    return KE.adjust_saturation_with_gray_subtraction(images, factor.to(images.dtype))


def sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Sharpness: blend with the 3x3 SMOOTH filter (0 smoothed, 1 unchanged); border pixels are kept."""
    return KE.sharpness(images, factor.to(images.dtype))


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` bits (1 to 8) of each 8-bit channel value."""
    return KE.posterize(quantised(images), bits.long())


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel of each image, with PIL's (and torchvision's) lookup table."""
    return KE.equalize(quantised(images))


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise by ``degrees`` about the image centre (PIL's rotate, torchvision's rotate)."""
    return KG.rotate(images, degrees.to(images.dtype), align_corners=False)


def translate_x(images: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """FixMatch's TranslateX: x_in = x + round(fraction * width) (content moves left for fraction > 0), 0 outside."""
    pixels = torch.round(fraction.to(images.dtype) * images.shape[3])
    return KG.translate(images, torch.stack([-pixels, torch.zeros_like(pixels)], dim=1), align_corners=False)


def translate_y(images: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """FixMatch's TranslateY: y_in = y + round(fraction * height) (content moves up for fraction > 0), 0 outside."""
    pixels = torch.round(fraction.to(images.dtype) * images.shape[2])
    return KG.translate(images, torch.stack([torch.zeros_like(pixels), -pixels], dim=1), align_corners=False)


# The project's own operations, where Kornia has no equal (each says why).


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the channel values whose 8-bit level is at least ``256 * threshold`` (0: all, 1: none).
    Own: it decides on the 8-bit level, as PIL's table does; Kornia's compares the raw float, so an
    earlier operation's in-between value could land on the other side."""
    inverted = to_levels(images) >= threshold.to(images.dtype).view(-1, 1, 1, 1) * 256.0
    return torch.where(inverted, 1.0 - images, images)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image linearly so that its minimum is 0 and its maximum 1.
    Own: a flat channel stays as it is (PIL); Kornia's ``normalize_min_max`` turns it black."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low).clamp_min(1e-12))
    return ((images - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp_(0.0, 1.0)


def warp(images: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Resample image i at ``inverse[i] @ p + offset[i]`` for each output pixel centre p, bilinear, 0 outside.

    Coordinates are in pixels from the image centre, x right and y down (torchvision's convention).
    """
    b, _, h, w = images.shape
    half = torch.tensor([w / 2.0, h / 2.0], dtype=images.dtype, device=images.device)
    linear = inverse.to(images.dtype) * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta = torch.cat([linear, (offset.to(images.dtype) / half).unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrices(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([a, b], dim=1), torch.stack([c, d], dim=1)], dim=1)


def shear_x(images: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """FixMatch's ShearX: PIL's affine transform (1, v, 0, 0, 1, 0), i.e. x_in = x + v * y from the top-left corner.
    Own: Kornia's ``shear`` shears about the image centre, which moves the image by v * height / 2."""
    v = coefficient.to(images.dtype)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return warp(images, _matrices(one, v, zero, one), torch.stack([v * images.shape[2] / 2.0, zero], dim=1))


def shear_y(images: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """FixMatch's ShearY: PIL's affine transform (1, 0, 0, v, 1, 0), i.e. y_in = y + v * x from the top-left corner.
    Own: as for ``shear_x``."""
    v = coefficient.to(images.dtype)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return warp(images, _matrices(one, zero, v, one), torch.stack([zero, v * images.shape[3] / 2.0], dim=1))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move image i by whole pixels (dy[i] down, dx[i] right), filling the border by reflection (no edge repeat).
    Own: Kornia's translate resamples, and its reflection repeats the edge pixel.

    The result equals a crop of the reflect-padded image (FixMatch's weak augmentation: pad, random crop).
    """
    b, c, h, w = images.shape
    rows = _reflect(torch.arange(h, device=images.device).view(1, h) - dy.view(b, 1), h)
    cols = _reflect(torch.arange(w, device=images.device).view(1, w) - dx.view(b, 1), w)
    out = images.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


@dataclass(frozen=True)
class Op:
    """A strong-view operation: ``apply(images, magnitudes)``, and the allowed magnitude range (None: no magnitude)."""

    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    limits: tuple[float, float] | None = None
    integer: bool = False


OPS: dict[str, Op] = {
    "identity": Op(lambda x, m: x),
    "auto_contrast": Op(lambda x, m: autocontrast(x)),
    "equalize": Op(lambda x, m: equalize(x)),
    "rotate": Op(rotate, (-180.0, 180.0)),
    "solarize": Op(solarize, (0.0, 1.0)),
    "color": Op(color, (0.0, math.inf)),
    "posterize": Op(posterize, (1, 8), integer=True),
    "contrast": Op(contrast, (0.0, math.inf)),
    "brightness": Op(brightness, (0.0, math.inf)),
    "sharpness": Op(sharpness, (0.0, math.inf)),
    "shear_x": Op(shear_x, (-1.0, 1.0)),
    "shear_y": Op(shear_y, (-1.0, 1.0)),
    "translate_x": Op(translate_x, (-1.0, 1.0)),
    "translate_y": Op(translate_y, (-1.0, 1.0)),
}
POLICY_KEYS = ("name", "description", "crop", "flip", "shift", "num_ops", "ops", "erase", "erase_scale")


def _check_op(path: Path, entry: Any) -> None:
    """One line of InputError unless ``entry`` is a known op with a valid magnitude range."""
    if not isinstance(entry, dict):
        raise InputError(f"augmentation policy '{path}' lists {json.dumps(entry)} as an op: write {{\"op\": NAME}}")
    name = entry.get("op")
    if name not in OPS:
        raise InputError(f"augmentation policy '{path}' names unknown op '{name}': use one of {', '.join(OPS)}")
    op = OPS[name]
    extra = sorted(set(entry) - ({"op", "range"} if op.limits else {"op"}))
    if extra:
        hint = "give 'op' and 'range'" if op.limits else "this op takes no magnitude, give only 'op'"
        raise InputError(f"augmentation policy '{path}': op '{name}' has unknown field(s) {', '.join(extra)}: {hint}")
    if op.limits is None:
        return
    low, high = op.limits
    value = entry.get("range")
    kind = int if op.integer else (int, float)
    pair = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )
    if not (pair and low <= value[0] <= value[1] <= high):
        numbers = "integers" if op.integer else "numbers"
        raise InputError(f"augmentation policy '{path}': op '{name}' needs \"range\": [low, high], two {numbers} with "
                         f"{low:g} <= low <= high <= {high:g}, got {json.dumps(value)}")


def load_policy(name_or_path: str) -> dict[str, Any]:
    """A view policy: a built-in name (weak, strong, none) or a JSON file of the same form."""
    builtin = resources.files("lpclip_cache.resources") / "policies" / f"{name_or_path}.json"
    path = Path(str(builtin)) if builtin.is_file() else Path(name_or_path)
    if not path.is_file():
        raise InputError(f"augmentation policy '{name_or_path}' not found: use weak, strong, none or a JSON file")
    try:
        policy = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"augmentation policy '{path}' is not valid JSON ({exc}): fix the file") from exc
    if not isinstance(policy, dict):
        raise InputError(f"augmentation policy '{path}' is not a JSON object: fix the file")
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise InputError(
            f"augmentation policy '{path}' has unknown key(s) {', '.join(unknown)}: use {', '.join(POLICY_KEYS)}"
        )
    if not isinstance(policy.get("ops", []), list):
        raise InputError(f"augmentation policy '{path}': ops must be a list of {{\"op\": NAME, ...}} objects")
    for entry in policy.get("ops", []):
        _check_op(path, entry)
    if policy.get("num_ops", 0) and not policy.get("ops"):
        raise InputError(f"augmentation policy '{path}' asks for num_ops > 0 but lists no ops: add ops")
    fraction = policy.get("shift", 0.0)
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 0.5:
        raise InputError(
            f"augmentation policy '{path}': shift must be a fraction of the size in [0, 0.5), got {fraction}"
        )
    return policy


def view_seed(seed: int, shard: int, kind: str, view: int) -> int:
    """A 63-bit seed for one (shard, view) pair, independent of batch sizes and of other shards."""
    digest = hashlib.sha256(f"{seed}/{shard}/{kind}/{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PolicyViews(torch.nn.Module):
    """One augmentation policy as a batched, per-sample random transform of float images in [0, 1]."""

    def __init__(self, policy: dict[str, Any], size: tuple[int, int]) -> None:
        super().__init__()
        self.policy = policy
        crop = policy.get("crop")
        self.crop = (
            K.RandomResizedCrop(size, scale=tuple(crop["scale"]), ratio=tuple(crop["ratio"]), p=1.0)
            if crop
            else None
        )
        self.flip = K.RandomHorizontalFlip(p=float(policy["flip"])) if policy.get("flip") else None
        self.shift = float(policy.get("shift", 0.0))
        self.num_ops = int(policy.get("num_ops", 0))
        self.ops = [(entry["op"], *entry.get("range", (0.0, 0.0))) for entry in policy.get("ops", [])]
        erase_scale = tuple(policy.get("erase_scale", (0.02, 0.25)))
        self.erase = K.RandomErasing(p=float(policy["erase"]), scale=erase_scale) if policy.get("erase") else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a float batch (B x 3 x H x W in [0, 1]); each sample draws its own parameters."""
        x = images
        if self.crop is not None:
            x = self.crop(x)
        if self.flip is not None:
            x = self.flip(x)
        if self.shift:
            x = self.random_shift(x)
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.ops), (x.shape[0],), device=x.device)
            x = self.apply_ops(x, choice, torch.rand(x.shape[0], device=x.device))
        if self.erase is not None:
            x = self.erase(x)
        return x

    def random_shift(self, images: torch.Tensor) -> torch.Tensor:
        """Shift each image by its own whole number of pixels, up to ``shift`` of the size, reflecting the border."""
        b, _, h, w = images.shape
        most_y, most_x = round(self.shift * h), round(self.shift * w)
        dy = torch.randint(-most_y, most_y + 1, (b,), device=images.device)
        dx = torch.randint(-most_x, most_x + 1, (b,), device=images.device)
        return shift(images, dy, dx)

    def magnitudes(self, index: int, level: torch.Tensor) -> torch.Tensor:
        """Op ``index``'s magnitudes for per-sample levels in [0, 1): uniform in its range (integers: each equally)."""
        name, low, high = self.ops[index]
        if OPS[name].integer:
            return torch.floor(low + (high - low + 1) * level).clamp_(max=high)
        return low + (high - low) * level

    def apply_ops(self, images: torch.Tensor, choice: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Apply op ``choice[i]`` to sample i at magnitude level ``level[i]``: each op runs once, on its samples."""
        out = images.clone()
        for index, (name, _, _) in enumerate(self.ops):
            if name == "identity":
                continue
            members = (choice == index).nonzero(as_tuple=True)[0]
            if members.numel():
                out[members] = OPS[name].apply(images[members], self.magnitudes(index, level[members]))
        return out


class ViewMaker:
    """Clean, weak and strong views of a uint8 batch, normalised for the encoder."""

    def __init__(
        self,
        preprocess: dict[str, Any],
        weak_policy: dict[str, Any],
        strong_policy: dict[str, Any],
        seed: int,
        device: torch.device,
    ) -> None:
        size = tuple(preprocess["size"])
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1)
        self.augment = {
            "weak": PolicyViews(weak_policy, size).to(device),
            "strong": PolicyViews(strong_policy, size).to(device),
        }
        self.seed = seed
        self.device = device
        for module in self.augment.values():
            for op in module.modules():
                if hasattr(op, "set_rng_device_and_dtype"):  # draw random parameters on the device
                    op.set_rng_device_and_dtype(device, torch.float32)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise float images in [0, 1] with the model's mean and std."""
        return (images - self.mean) / self.std

    def to_float(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 B x 3 x H x W on any device -> float in [0, 1] on the compute device."""
        return batch.to(self.device, non_blocking=True).float().div_(255.0)

    def clean(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation view: the decoded image as the model's preprocessing made it."""
        return self.normalize(images)

    def view(self, images: torch.Tensor, kind: str, shard: int, index: int) -> torch.Tensor:
        """View ``index`` of ``kind`` (weak or strong) for a shard, reproducible from its seed."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(view_seed(self.seed, shard, kind, index))
            return self.normalize(self.augment[kind](images))
