"""The size of each numerical departure from open_clip's pipeline that the cache makes on purpose.

    python benchmarks/departures.py [--n 2000]

Measured with the project's small CLIP (``lpclip-shapes``, trained by ``make demo`` and cached)
on the shapes world's clean test images, through the real decode path:

- fp16 storage: embeddings are computed in fp32 and stored in fp16, and the teacher's outputs
  are computed from the stored fp16 embedding; against the fp32 embedding: pseudo-label
  agreement, largest confidence change, smallest dot product with the fp32 unit vector;
- bf16 autocast: the default precision on CUDA; the CPU's bf16 autocast stands in for it here
  (same bf16 inputs to the matrix products, fp32 accumulation);
- 16-bit images: open_clip's ``convert("RGB")`` clips 16-bit values to 255, the decoder here
  scales 0-65535 to 0-255; the grey level each gives for a mid-grey 16-bit image.

Each line is ``name value``; nothing is timed.
"""

from __future__ import annotations

import argparse

import numpy as np


def teacher(emb: np.ndarray, head: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-labels and confidences from embeddings (float64 softmax)."""
    logits = scale * emb.astype(np.float64) @ head.T.astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs.argmax(-1), probs.max(-1)


def compare(name: str, reference: np.ndarray, other: np.ndarray, head: np.ndarray, scale: float) -> None:
    """Print agreement figures of ``other`` against the fp32 ``reference`` embeddings."""
    label_ref, conf_ref = teacher(reference, head, scale)
    label, conf = teacher(other, head, scale)
    dot = (reference.astype(np.float64) * other.astype(np.float64)).sum(-1)  # as the teacher uses it: not renormalised
    print(f"{name}_label_agreement {float((label == label_ref).mean()):.5f}")
    print(f"{name}_max_conf_change {float(np.abs(conf - conf_ref).max()):.2e}")
    print(f"{name}_mean_conf_change {float(np.abs(conf - conf_ref).mean()):.2e}")
    print(f"{name}_min_dot_with_fp32 {float(dot.min()):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from lpclip_cache.augment import ViewMaker, load_policy
    from lpclip_cache.data import open_source
    from lpclip_cache.decode import DecodedDataset, to_rgb
    from lpclip_cache.models import load_model, zero_shot_head
    from lpclip_cache.prompts import load_templates
    from lpclip_cache.world.teacher import ensure_teacher

    torch.manual_seed(0)
    loaded = load_model("lpclip-shapes", str(ensure_teacher(progress=False)), device="cpu")
    source = open_source(f"shapes:test:n={args.n}")
    cfg = loaded.preprocess
    decoded = DecodedDataset(source, tuple(cfg["size"]), cfg["resize_mode"], cfg["interpolation"])
    pixels = torch.stack([decoded[i][1] for i in range(len(source))])
    none = load_policy("none")
    views = ViewMaker(cfg, none, none, 0, torch.device("cpu"))
    images = views.clean(views.to_float(pixels))
    head = zero_shot_head(loaded, list(source.classnames), load_templates("shapes")).numpy()

    with torch.no_grad():
        fp32 = torch.nn.functional.normalize(loaded.model.encode_image(images).float(), dim=-1).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = loaded.model.encode_image(images)
        bf16 = torch.nn.functional.normalize(bf16.float(), dim=-1).numpy()
    print(f"images {len(source)}")
    compare("fp16_storage", fp32, fp32.astype(np.float16), head, loaded.logit_scale)
    compare("bf16_autocast", fp32, bf16.astype(np.float16), head, loaded.logit_scale)

    grey16 = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    print(f"grey16_open_clip_level {int(np.asarray(grey16.convert('RGB'))[0, 0, 0])}")
    print(f"grey16_lpclip_level {int(np.asarray(to_rgb(grey16))[0, 0, 0])}")


if __name__ == "__main__":
    main()
