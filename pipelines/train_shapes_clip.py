"""Train the project's small CLIP (``lpclip-shapes``) on the shapes world and measure its regime.

    python pipelines/train_shapes_clip.py [--steps 1000] [--seed 1] [--out FILE.safetensors]

Without ``--out`` the checkpoint goes to the cache the demo reads (``$LPCLIP_CACHE_DIR`` or
``~/.cache/lpclip-cache/teachers``). The result loads like any open_clip checkpoint:
``lpclip-cache extract --model lpclip-shapes --pretrained FILE.safetensors ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from lpclip_cache.world.regime import measure
    from lpclip_cache.world.teacher import TeacherConfig, checkpoint_path, train_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TeacherConfig.steps)
    parser.add_argument("--pool", type=int, default=TeacherConfig.pool)
    parser.add_argument("--seed", type=int, default=TeacherConfig.seed)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = TeacherConfig(seed=args.seed, steps=args.steps, pool=args.pool)
    record = train_teacher(config, out=args.out)
    record["regime"] = measure(Path(args.out or checkpoint_path(config)))  # docs/demo.md, point 1
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
