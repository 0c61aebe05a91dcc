"""Views made on the compute device from a uint8 batch: clean, weak and strong.

Policies are data (``resources/policies/*.json`` or a user's JSON file). Kornia's own
RandAugment draws one operation set per call for the whole batch, so the strong policy here
draws ``num_ops`` operation indices per sample on the device and applies each operation to the
samples that chose it: every sample gets its own operations and its own magnitudes.

Every random draw comes from torch's generator, seeded per (seed, shard, view kind, view index)
inside ``torch.random.fork_rng``: a shard's views do not depend on what ran before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import torch

from .errors import InputError

OpBuilder = Callable[[dict[str, Any]], torch.nn.Module | None]


def _pair(value: float | list[float]) -> tuple[float, float]:
    return (float(value[0]), float(value[1])) if isinstance(value, (list, tuple)) else (-value, value)


OPS: dict[str, OpBuilder] = {
    "identity": lambda cfg: None,
    "auto_contrast": lambda cfg: K.RandomAutoContrast(p=1.0),
    "equalize": lambda cfg: K.RandomEqualize(p=1.0),
    "rotate": lambda cfg: K.RandomRotation(degrees=float(cfg["degrees"]), p=1.0),
    "solarize": lambda cfg: K.RandomSolarize(thresholds=float(cfg["thresholds"]), additions=0.0, p=1.0),
    "color": lambda cfg: K.RandomSaturation(saturation=tuple(cfg["saturation"]), p=1.0),
    "posterize": lambda cfg: K.RandomPosterize(bits=tuple(float(b) for b in cfg["bits"]), p=1.0),
    "contrast": lambda cfg: K.RandomContrast(contrast=tuple(cfg["contrast"]), p=1.0),
    "brightness": lambda cfg: K.RandomBrightness(brightness=tuple(cfg["brightness"]), p=1.0),
    "sharpness": lambda cfg: K.RandomSharpness(sharpness=float(cfg["sharpness"]), p=1.0),
    "shear_x": lambda cfg: K.RandomAffine(degrees=0.0, shear=(*_pair(cfg["shear"]), 0.0, 0.0), p=1.0),
    "shear_y": lambda cfg: K.RandomAffine(degrees=0.0, shear=(0.0, 0.0, *_pair(cfg["shear"])), p=1.0),
    "translate_x": lambda cfg: K.RandomAffine(degrees=0.0, translate=(float(cfg["fraction"]), 0.0), p=1.0),
    "translate_y": lambda cfg: K.RandomAffine(degrees=0.0, translate=(0.0, float(cfg["fraction"])), p=1.0),
}


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
    for op in policy.get("ops", []):
        if op.get("op") not in OPS:
            raise InputError(
                f"augmentation policy '{path}' names unknown op '{op.get('op')}': use one of {', '.join(OPS)}"
            )
    if policy.get("num_ops", 0) and not policy.get("ops"):
        raise InputError(f"augmentation policy '{path}' asks for num_ops > 0 but lists no ops: add ops")
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
        shift = float(policy.get("translate", 0.0))
        self.translate = (
            K.RandomAffine(degrees=0.0, translate=(shift, shift), padding_mode="reflection", p=1.0) if shift else None
        )
        self.num_ops = int(policy.get("num_ops", 0))
        self.ops = torch.nn.ModuleList(
            [m if (m := OPS[op["op"]](op)) is not None else torch.nn.Identity() for op in policy.get("ops", [])]
        )
        erase_scale = tuple(policy.get("erase_scale", (0.02, 0.25)))
        self.erase = K.RandomErasing(p=float(policy["erase"]), scale=erase_scale) if policy.get("erase") else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a float batch (B x 3 x H x W in [0, 1]); each sample draws its own parameters."""
        x = images
        if self.crop is not None:
            x = self.crop(x)
        if self.flip is not None:
            x = self.flip(x)
        if self.translate is not None:
            x = self.translate(x)
        for _ in range(self.num_ops):
            x = self.apply_ops(x, torch.randint(len(self.ops), (x.shape[0],), device=x.device))
        if self.erase is not None:
            x = self.erase(x)
        return x


    def apply_ops(self, images: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Apply op ``choice[i]`` to sample i: each op runs once on the samples that chose it."""
        out = images.clone()
        for index, op in enumerate(self.ops):
            if isinstance(op, torch.nn.Identity):
                continue
            members = (choice == index).nonzero(as_tuple=True)[0]
            if members.numel():
                out[members] = op(images[members]).clamp_(0.0, 1.0)
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
