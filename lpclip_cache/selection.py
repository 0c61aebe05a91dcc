"""Label-free model selection: choose learning rate, weight decay and epochs without true labels.

A seeded fraction of the store's shards is held out; every (lr, weight decay) of the grid trains
LP-CLIP on the rest, and after each epoch the probe is scored by its agreement with the teacher's
pseudo-labels on the held-out clean views. The best (lr, weight decay, epochs) is then trained
on every shard and saved as the run, with the whole grid in ``selection.json``. True labels are
never read. Agreement with the teacher favours probes that stay close to it: it picks the
optimisation that fits the teacher's signal best, not the one that corrects the teacher most.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import SelectConfig
from .errors import InputError

log = logging.getLogger(__name__)


def select(config: SelectConfig) -> dict[str, Any]:
    """Run the search, train the chosen setting on all data into ``config.out``; return the grid."""
    from .outputs import local_folder, refuse_output_inside, write_json_atomic
    from .runs import load_run
    from .store import FeatureStore
    from .training import TrainConfig, train

    local_folder(config.out, "--out", "run")
    refuse_output_inside(config.out, [config.store])
    if not config.lrs or not config.weight_decays or config.epochs < 1:
        raise InputError("select needs at least one --lr, one --weight-decay and --epochs >= 1")
    if not 0.0 < config.holdout < 1.0:
        raise InputError(f"--holdout must be in (0, 1) for selection, got {config.holdout}")
    if FeatureStore(config.store).layout.n_shards < 2:
        raise InputError(f"store '{config.store}' has one shard: selection needs at least two to hold one out")
    template = TrainConfig(store=config.store, out=config.out, device=config.device)
    grid = []
    with tempfile.TemporaryDirectory() as scratch:
        for lr in config.lrs:
            for decay in config.weight_decays:
                trial = replace(template, store=config.store, out=str(Path(scratch) / f"{lr}-{decay}"), lr=lr,
                                weight_decay=decay, epochs=config.epochs, holdout=config.holdout,
                                seed=config.seed, method="lpclip", progress=False, overwrite=False)
                train(trial)
                curve = load_run(trial.out).info["curve"]
                best = max(curve, key=lambda point: point["teacher_agreement"])
                grid.append({"lr": lr, "weight_decay": decay, "best_epoch": best["epoch"],
                             "holdout_agreement": best["teacher_agreement"],
                             "curve": [point["teacher_agreement"] for point in curve]})
                if config.progress:
                    log.info(f"[select] lr={lr:g} weight_decay={decay:g}: best held-out agreement "
                             f"{best['teacher_agreement']:.4f} at epoch {best['epoch']}")
    chosen = max(grid, key=lambda row: (row["holdout_agreement"], -row["best_epoch"]))
    final = replace(template, store=config.store, out=config.out, lr=chosen["lr"],
                    weight_decay=chosen["weight_decay"], epochs=chosen["best_epoch"], holdout=0.0,
                    seed=config.seed, method="lpclip", overwrite=config.overwrite, progress=config.progress)
    summary = train(final)
    result = {"chosen": {k: chosen[k] for k in ("lr", "weight_decay", "best_epoch", "holdout_agreement")},
              "holdout": config.holdout, "grid": grid, "run": summary}
    write_json_atomic(Path(config.out) / "selection.json", result, "selection")
    return result
