"""Train the project's small CLIP (``lpclip-shapes``) on a shapes world and measure its regime.

    python pipelines/train_shapes_clip.py [--world web|objects|geometry] [--steps N] [--seed S] [--threads 2]
                                          [--out FILE.safetensors] [--ship] [--compare-shipped]

Without ``--out`` the checkpoint goes to the cache the demo reads (``$LPCLIP_CACHE_DIR`` or
``~/.cache/lpclip-cache/teachers``). ``--ship`` also writes its fp16 copy into the package
(``lpclip_cache/resources/teachers/``), where the demo takes it without training: do that only for
the default configuration, and commit it with the regime figures this prints. The result loads
like any open_clip checkpoint: ``lpclip-cache extract --model lpclip-shapes --pretrained FILE ...``.
``--compare-shipped`` puts the shipped teacher's regime figures beside the retrained one's, with
their differences and whether they lie within ``RETRAIN_TOLERANCE`` (docs/demo.md records what
retraining gave on the machines it was tried on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lpclip_cache.world.teacher import TeacherConfig


def arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, TeacherConfig]:
    """The command line, and the teacher configuration it names: the world's own teacher
    (``world_teacher``) with the options given."""
    from lpclip_cache.world.shapes import DEFAULT_WORLD, WORLDS
    from lpclip_cache.world.teacher import world_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=list(WORLDS), default=DEFAULT_WORLD)
    parser.add_argument("--steps", type=int, default=None, help="Default: the world's teacher's own.")
    parser.add_argument("--pool", type=int, default=None, help="Default: the world's teacher's own.")
    parser.add_argument("--seed", type=int, default=None, help="Default: the world's teacher's own.")
    parser.add_argument("--threads", type=int, default=None, help="Default: the world's teacher's own.")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ship", action="store_true", help="Also write the fp16 copy the package ships.")
    parser.add_argument("--compare-shipped", action="store_true",
                        help="Also measure the shipped teacher of this configuration and report the differences.")
    args = parser.parse_args(argv)
    return args, world_teacher(args.world, seed=args.seed, steps=args.steps, pool=args.pool, threads=args.threads)


def main() -> None:
    from lpclip_cache.world.regime import measure
    from lpclip_cache.world.teacher import checkpoint_path, ship_teacher, train_teacher

    args, config = arguments()
    record = train_teacher(config, out=args.out)
    checkpoint = Path(args.out or checkpoint_path(config))
    record["regime"] = measure(checkpoint, world=args.world)  # docs/demo.md, point 1
    if args.ship:
        shipped = ship_teacher(checkpoint, config)
        record["shipped"] = {"path": str(shipped), "regime": measure(shipped, world=args.world)}
    if args.compare_shipped:
        record["compared"] = compare_with_shipped(config, record["regime"])
    print(json.dumps(record, indent=2))


def compare_with_shipped(config, retrained: dict) -> dict:
    """The shipped teacher's headline regime figures beside the retrained one's (``threads`` is
    left out of the match: it changes the rounding, not the configuration)."""
    from dataclasses import replace

    from lpclip_cache.world.regime import measure
    from lpclip_cache.world.teacher import RETRAIN_TOLERANCE, TeacherConfig, shipped_path

    shipped = shipped_path(replace(config, threads=TeacherConfig.threads))
    if not shipped.is_file():
        raise SystemExit(f"error: no shipped teacher for this configuration ({shipped.name}); "
                         "--compare-shipped needs the default configuration of a world that ships one")
    reference = measure(shipped, world=config.world)

    def headline(figures: dict) -> dict:
        views = figures["views"]["views"]
        return {"supervised_probe": figures["supervised_probe"], "zeroshot": figures["zeroshot"],
                "ood_msp_auroc": figures["ood_msp_auroc"],
                "weak_keeps": views["weak"]["label_preservation"]["ratio"],
                "strong_keeps": views["strong"]["label_preservation"]["ratio"],
                "weak_teacher": views["weak"]["teacher_accuracy"], "in_regime": figures["in_regime"]}

    a, b = headline(reference), headline(retrained)
    difference = {k: round(b[k] - a[k], 4) for k in a if k != "in_regime"}
    return {"shipped": a, "retrained": b, "difference": difference, "tolerance": RETRAIN_TOLERANCE,
            "within_tolerance": all(abs(difference[k]) <= RETRAIN_TOLERANCE[k] for k in difference)}


if __name__ == "__main__":
    main()
