"""Kornia's functional operations against the project's former ones, per operation and per view.

    python benchmarks/view_ops.py [--repeats 5]

The strong views' operations became Kornia's (``kornia.enhance``, ``kornia.geometry.transform``)
where Kornia has an equal. This measures that choice, one thread, taking turns, fastest of
``--repeats``:

- per operation: the shipped function (Kornia) against the project's former function of the same
  operation (written out below, as it was in ``augment.py``), on 512 images of 32 px and 128 of
  224 px with per-sample magnitudes;
- per extracted view: one strong view (``ViewMaker.view``, with the shipped operations or with the
  former ones put back in ``augment.OPS``) plus the encoder's forward pass, for the demo's
  ``lpclip-shapes`` at 32 px (batch 512) and a random-init ViT-B-32 at 224 px (batch 64).

Lines: ``op=NAME size=S kornia_ms=K former_ms=F ratio=K/F`` and ``view model=M kornia_ms=K former_ms=F
ratio=K/F`` (ratio above 1: Kornia slower). The rule (issue: Kornia for the views): an operation
stays the project's own only where the per-view ratio exceeds 1.10 or Kornia has no equal.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)


def _blend(images, degenerate, factor):
    return (degenerate + factor.view(-1, 1, 1, 1) * (images - degenerate)).clamp_(0.0, 1.0)


def _gray(images):
    r, g, b = images.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _levels(images):
    return images.mul(255.0).round_().clamp_(0, 255).long()


def former_brightness(images, factor):
    return _blend(images, torch.zeros_like(images), factor)


def former_contrast(images, factor):
    return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def former_color(images, factor):
    return _blend(images, _gray(images), factor)


def former_sharpness(images, factor):
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = (F.avg_pool2d(images, 3, stride=1) * 9.0 + 4.0 * images[..., 1:-1, 1:-1]) / 13.0
    return _blend(images, smooth, factor)


def former_posterize(images, bits):
    mask = 256 - torch.pow(2, 8 - bits.long())
    return (_levels(images) & mask.view(-1, 1, 1, 1)).to(images.dtype) / 255.0


def former_equalize(images):
    b, c, h, w = images.shape
    levels = _levels(images).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    cumulative = hist.cumsum(1)
    top = hist.gather(1, cumulative.argmax(1, keepdim=True))
    step = (h * w - top) // 255
    lut = ((cumulative[:, :-1] + step // 2) // step.clamp_min(1)).clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1)
    equalized = (lut.gather(1, levels).to(images.dtype) / 255.0).view(b, c, h, w)
    return torch.where((step > 0).view(b, c, 1, 1), equalized, images)


def _warp(images, inverse, offset):
    b, _, h, w = images.shape
    half = torch.tensor([w / 2.0, h / 2.0], dtype=images.dtype)
    linear = inverse.to(images.dtype) * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta = torch.cat([linear, (offset.to(images.dtype) / half).unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrices(a, b, c, d):
    return torch.stack([torch.stack([a, b], dim=1), torch.stack([c, d], dim=1)], dim=1)


def former_rotate(images, degrees):
    angle = torch.deg2rad(degrees.to(images.dtype))
    cos, sin = torch.cos(angle), torch.sin(angle)
    return _warp(images, _matrices(cos, -sin, sin, cos), torch.zeros(len(images), 2))


def former_translate_x(images, fraction):
    pixels = torch.round(fraction.to(images.dtype) * images.shape[3])
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _warp(images, _matrices(one, zero, zero, one), torch.stack([pixels, zero], dim=1))


def former_translate_y(images, fraction):
    pixels = torch.round(fraction.to(images.dtype) * images.shape[2])
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _warp(images, _matrices(one, zero, zero, one), torch.stack([zero, pixels], dim=1))


FORMER = {"brightness": former_brightness, "contrast": former_contrast, "color": former_color,
          "sharpness": former_sharpness, "posterize": former_posterize, "equalize": lambda x, m: former_equalize(x),
          "rotate": former_rotate, "translate_x": former_translate_x, "translate_y": former_translate_y}


def magnitudes(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator)
    return {"posterize": (4 + (u * 5).floor()), "rotate": u * 60 - 30, "translate_x": u * 0.6 - 0.3,
            "translate_y": u * 0.6 - 0.3}.get(name, 0.05 + 0.9 * u)


def timed(fn, *args) -> float:
    """Seconds one call of ``fn(*args)`` takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def one_view(loaded, maker, images: torch.Tensor, shard: int) -> None:
    """A strong view of ``images`` and its embedding."""
    with torch.no_grad():
        loaded.model.encode_image(maker.view(images, "strong", shard, 0))


def main() -> None:
    from lpclip_cache import augment
    from lpclip_cache.augment import OPS, Op, ViewMaker, load_policy
    from lpclip_cache.models import load_model
    from lpclip_cache.world.teacher import ensure_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    shipped = {name: (lambda x, m, op=OPS[name]: op.apply(x, m)) for name in FORMER}
    for size, batch in ((32, 512), (224, 128)):
        images = F.avg_pool2d(torch.rand(batch, 3, size, size, generator=generator), 3, 1, 1)
        for name in FORMER:
            m = magnitudes(name, batch, generator)
            kornia_s, former_s = [], []
            for _ in range(args.repeats):  # taking turns
                kornia_s.append(timed(shipped[name], images, m))
                former_s.append(timed(FORMER[name], images, m))
            k, f = min(kornia_s), min(former_s)
            print(f"op={name} size={size} kornia_ms={1000 * k:.2f} former_ms={1000 * f:.2f} ratio={k / f:.2f}")

    original = dict(OPS)
    former_ops = {name: Op(FORMER[name], original[name].limits, original[name].integer) for name in FORMER}
    cases = (("lpclip-shapes", str(ensure_teacher(progress=False)), "strong-small", 512),
             ("ViT-B-32", "none", "strong", 64))
    for model, weights, policy, batch in cases:
        loaded = load_model(model, weights, device="cpu")
        size = loaded.preprocess["size"]
        maker = ViewMaker(loaded.preprocess, load_policy("weak"), load_policy(policy), 0, torch.device("cpu"))
        images = (torch.rand(batch, 3, *size, generator=generator) * 255).to(torch.uint8)
        x = maker.to_float(images)
        kornia_s, former_s = [], []
        for repeat in range(args.repeats):  # the same shards' draws for both
            augment.OPS.update(original)
            kornia_s.append(timed(one_view, loaded, maker, x, repeat))
            augment.OPS.update(former_ops)
            former_s.append(timed(one_view, loaded, maker, x, repeat))
        augment.OPS.update(original)
        k, f = min(kornia_s), min(former_s)
        print(f"view model={model} batch={batch} kornia_ms={1000 * k:.1f} former_ms={1000 * f:.1f} "
              f"ratio={k / f:.3f}")


if __name__ == "__main__":
    main()
