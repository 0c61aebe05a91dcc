"""Train the project's small CLIP (``lpclip-shapes``) on the shapes world and report its zero-shot accuracy.

    python pipelines/train_shapes_clip.py [--steps 1000] [--seed 0] [--out FILE.safetensors]

Without ``--out`` the checkpoint goes to the cache the demo reads (``$LPCLIP_CACHE_DIR`` or
``~/.cache/lpclip-cache/teachers``). The result loads like any open_clip checkpoint:
``lpclip-cache extract --model lpclip-shapes --pretrained FILE.safetensors ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def zero_shot_accuracy(checkpoint: Path, seed: int, n: int = 1000) -> dict[str, float]:
    """The trained model's zero-shot accuracy on each style of the test split (chance is 1/6)."""
    import numpy as np
    import torch

    from lpclip_cache.models import load_model, zero_shot_head
    from lpclip_cache.prompts import load_templates
    from lpclip_cache.world.shapes import SHAPES, STYLES, render, sample_attributes, split_rng

    loaded = load_model("lpclip-shapes", str(checkpoint), device="cpu")
    head = zero_shot_head(loaded, list(SHAPES), load_templates("shapes"))
    mean = torch.tensor(loaded.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess["std"]).view(1, 3, 1, 1)
    attrs = sample_attributes(n, split_rng(seed, "test"))
    scores = {}
    for style in STYLES:
        images = torch.from_numpy(render(attrs, 32, style)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            features = loaded.model.encode_image((images - mean) / std, normalize=True)
        predictions = (features @ head.T).argmax(1).numpy()
        scores[style] = float(np.mean(predictions == attrs.shape))
    return scores


def main() -> None:
    from lpclip_cache.world.teacher import TeacherConfig, checkpoint_path, train_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TeacherConfig.steps)
    parser.add_argument("--pool", type=int, default=TeacherConfig.pool)
    parser.add_argument("--seed", type=int, default=TeacherConfig.seed)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = TeacherConfig(seed=args.seed, steps=args.steps, pool=args.pool)
    record = train_teacher(config, out=args.out)
    record["zero_shot_accuracy"] = zero_shot_accuracy(Path(args.out or checkpoint_path(config)), args.seed)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
