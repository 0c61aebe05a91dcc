"""Train the project's small CLIP (``lpclip-shapes``) on a shapes world and measure its regime.

    python pipelines/train_shapes_clip.py [--world objects] [--steps 1500] [--seed 1] [--out FILE.safetensors] [--ship]

Without ``--out`` the checkpoint goes to the cache the demo reads (``$LPCLIP_CACHE_DIR`` or
``~/.cache/lpclip-cache/teachers``). ``--ship`` also writes its fp16 copy into the package
(``lpclip_cache/resources/teachers/``), where the demo takes it without training: do that only for
the default configuration, and commit it with the regime figures this prints. The result loads
like any open_clip checkpoint: ``lpclip-cache extract --model lpclip-shapes --pretrained FILE ...``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from lpclip_cache.world.regime import measure
    from lpclip_cache.world.shapes import WORLDS
    from lpclip_cache.world.teacher import TeacherConfig, checkpoint_path, ship_teacher, train_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=list(WORLDS), default=TeacherConfig.world)
    parser.add_argument("--steps", type=int, default=TeacherConfig.steps)
    parser.add_argument("--pool", type=int, default=TeacherConfig.pool)
    parser.add_argument("--seed", type=int, default=TeacherConfig.seed)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ship", action="store_true", help="Also write the fp16 copy the package ships.")
    args = parser.parse_args()
    config = TeacherConfig(seed=args.seed, world=args.world, steps=args.steps, pool=args.pool)
    record = train_teacher(config, out=args.out)
    checkpoint = Path(args.out or checkpoint_path(config))
    record["regime"] = measure(checkpoint, world=args.world)  # docs/demo.md, point 1
    if args.ship:
        shipped = ship_teacher(checkpoint, config)
        record["shipped"] = {"path": str(shipped), "regime": measure(shipped, world=args.world)}
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
