"""Every variant of the method from one store, trained and evaluated into one table.

Variants: the full method; no confidence weighting; soft targets; confidence thresholds;
weak views on the student side (no consistency); 1, 2, 4, ... cached views; random instead of
zero-shot initialisation; and the supervised reference. All share the optimisation settings, so
the table isolates each ingredient. Only the supervised row reads true labels.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .config import AblationConfig
from .errors import InputError, NothingKept

log = logging.getLogger(__name__)


def variants(config: AblationConfig, max_views: int) -> dict[str, dict[str, Any]]:
    """Variant name -> the TrainConfig options that differ from the full method."""
    table: dict[str, dict[str, Any]] = {
        "lpclip": {},
        "no-weighting": {"weighting": "none"},
        "soft-targets": {"targets": "soft"},
        **{f"threshold-{t:g}": {"threshold": t} for t in config.thresholds},
        "no-consistency": {"student": "weak"},
        "random-init": {"init": "random"},
    }
    views = 1
    while views < max_views:
        table[f"views-{views}"] = {"max_views": views}
        views *= 2
    table["supervised"] = {"method": "supervised"}
    return table


def is_ablation(path: Path) -> bool:
    """True when ``path`` is an ablation folder."""
    return (path / "ablation.json").is_file()


def run_ablation(config: AblationConfig) -> dict[str, Any]:
    """Train and evaluate every variant; write ablation.json and ablation.md into ``config.out``.

    The folder is filled under a hidden name and renamed into place at the end, so an
    interrupted ablation leaves nothing at ``config.out`` (and an old one there stays whole).
    """
    from .outputs import atomic_dir, local_folder, prepare_output, refuse_output_inside
    from .store import FeatureStore

    local_folder(config.out, "--out", "ablation folder")
    refuse_output_inside(config.out, [config.store, *config.eval_stores, *config.ood])
    if not config.eval_stores:
        raise InputError("ablate needs at least one --eval store to score the variants on")
    store = FeatureStore(config.store)
    prepare_output(Path(config.out), config.overwrite, is_ablation, "ablation folder", remove=False)
    with atomic_dir(config.out, "ablation folder", replace=config.overwrite) as staging:
        return _ablate_into(config, store, staging)


def _ablate_into(config: AblationConfig, store: Any, out: Path) -> dict[str, Any]:
    from .evaluation import evaluate
    from .outputs import json_text
    from .progress import eta
    from .training import TrainConfig, train

    (out / "runs").mkdir(parents=True)
    max_views = max(store.layout.weak_views, store.layout.strong_views, 1)
    rows: dict[str, Any] = {}
    teacher_row: dict[str, Any] = {}
    table = variants(config, max_views)
    started = time.perf_counter()
    for index, (name, options) in enumerate(table.items()):
        if config.progress:  # each variant as it starts, with the time left at the pace so far; then its training
            left = f", ETA {eta(index, len(table), time.perf_counter() - started)}" if index else ""
            log.info(f"[ablate] {name} ({index + 1}/{len(table)}{left})")
        run = out / "runs" / name
        try:
            summary = train(TrainConfig(store=config.store, out=str(run), epochs=config.epochs, lr=config.lr,
                                        batch_size=config.batch_size, seed=config.seed, device=config.device,
                                        progress=config.progress, **options))
        except NothingKept as exc:  # the variant has nothing to learn from: say so, score nothing
            log.info(f"[ablate] {name}: not trained: {exc}")
            rows[name] = {"options": options, "seconds": 0.0, "not_trained": str(exc),
                          "stores": {path: {} for path in config.eval_stores}, "ood": {path: {} for path in config.ood}}
            continue
        report = evaluate(str(run), config.eval_stores, config.ood)
        rows[name] = {
            "options": options,
            "seconds": summary["seconds"],
            "stores": {path: report["stores"][path]["probe"] for path in config.eval_stores},
            "ood": {path: report["ood"][path]["probe"] for path in config.ood},
        }
        if not teacher_row:
            teacher_row = {
                "options": {},
                "seconds": 0.0,
                "stores": {path: report["stores"][path]["teacher"] for path in config.eval_stores},
                "ood": {path: report["ood"][path]["teacher"] for path in config.ood},
            }
    results = {"tool": "lpclip-cache", "store": config.store, "epochs": config.epochs, "lr": config.lr,
               "rows": {"teacher": teacher_row, **rows}}
    (out / "ablation.md").write_text(format_table(results, markdown=True) + "\n")
    (out / "ablation.json").write_text(json_text(results) + "\n")
    return results


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """One row per variant: accuracy/ECE/NLL per evaluation store, AUROC per OOD store."""
    from .figures import text_table

    first = next(iter(results["rows"].values()))
    stores, oods = list(first["stores"]), list(first["ood"])
    head = ["variant", *[f"{Path(s).name} acc/ece/nll" for s in stores], *[f"{Path(o).name} auroc" for o in oods]]
    body = []
    for name, row in results["rows"].items():
        cells = [f"{row['stores'][s]['accuracy']:.3f}/{row['stores'][s]['ece']:.3f}/{row['stores'][s]['nll']:.2f}"
                 if "accuracy" in row["stores"][s] else "-" for s in stores]
        cells += [f"{row['ood'][o]['auroc']:.3f}" if "auroc" in row["ood"][o] else "-" for o in oods]
        body.append([name, *cells])
    return text_table(head, body, markdown)
