"""Stage two: fit the linear probe from cached pairs only (no image, no CLIP forward), and save it as a run.

``train`` checks the options, builds the pair source (``sampling.PairSource``) and the estimator
(``probe.LinearProbe``, which holds the loss and its variants), fits it, and writes the run
(``runs.save_run``). It is the only place that decides which views feed each side: a store
without strong views trains the student on the teacher-side views; without weak views the
teacher side is the clean view. ``sides`` makes that choice once; run.json's ``pairs`` and
``loss`` are both written from the views the pairs were actually drawn from. Only a supervised
probe has the pair source read the store's ``labels`` array (``LinearProbe.pair_needs``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import TrainConfig, check_choices
from .errors import Diverged, InputError, Interrupted, NothingKept
from .probe import LinearProbe, check_params
from .progress import Progress

log = logging.getLogger(__name__)

# An epoch in which the confidence threshold keeps fewer than this fraction of the samples is
# recorded in run.json's warnings and logged as a warning; one that keeps none stops training.
MIN_KEPT_FRACTION = 0.05


def check_config(config: TrainConfig) -> None:
    """Reject impossible options before anything is read."""
    check_choices(config)
    check_params(config)
    if not 0.0 <= config.holdout < 1.0:
        raise InputError(f"--holdout must be in [0, 1), got {config.holdout}")
    if config.max_views is not None and config.max_views < 1:
        raise InputError("--ensemble and --max-views must be at least 1")


def sides(store: Any, config: TrainConfig) -> tuple[str, str]:
    """Which views feed the teacher and the student for a configuration."""
    teacher = "weak" if store.layout.weak_views else "clean"
    if config.method == "supervised" or config.student == "weak" or not store.layout.strong_views:
        return teacher, teacher
    return teacher, "strong"


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one probe (or an ensemble) from a store and save it as a run; return a summary."""
    from .distributed import pick_device
    from .outputs import local_folder, prepare_output, refuse_output_inside
    from .runs import is_run, save_run
    from .store import FeatureStore

    check_config(config)
    device = pick_device(config.device)
    refuse_output_inside(config.out, [config.store])
    out = local_folder(config.out, "--out", "run")
    store = FeatureStore(config.store)
    prepare_output(out, config.overwrite, is_run, "run", remove=False)  # replaced once the new run is whole
    probe = probe_for(config, device)
    source = pair_source(store, config, probe)
    n = source.valid_count()
    progress = Progress(config.epochs * n, f"train {out.name}", "samples", enabled=config.progress)
    started = time.perf_counter()
    try:  # nothing is written before the end: say so, and (interrupted) how to finish
        probe.fit(source, progress)
    except (NothingKept, Diverged) as exc:
        raise type(exc)(f"{exc.message}; run '{out}' was not written") from None
    except KeyboardInterrupt as exc:
        epoch = getattr(probe, "n_iter_", 0) + 1  # the epochs done are counted as they finish
        raise Interrupted.of(exc, f"training stopped in epoch {epoch} of {config.epochs}; run '{out}' was not written "
                             "(any run already there is untouched): run the same command again") from None
    elapsed = time.perf_counter() - started
    progress.close()
    warnings = kept_warnings(probe.history_, config.threshold)
    for line in warnings[:3]:
        log.warning(line)
    info = run_info(config, store, source, n, probe, str(device), warnings, elapsed)
    prepare_output(out, config.overwrite, is_run, "run", remove=False)  # still refused if it is not ours
    save_run(out, probe.coef_, probe.intercept_, store.head(), info, replace=config.overwrite)  # an old run goes now
    curve = probe.history_
    return {"run": str(out), "method": config.method, "epochs": config.epochs, "samples": n,
            "ensemble": config.ensemble, "streamed": source.streaming, "final_loss": curve[-1]["loss"],
            "teacher_agreement": curve[-1]["teacher_agreement"], "kept": curve[-1]["kept"], "warnings": warnings,
            "seconds": round(elapsed, 3), "samples_per_s": round(info["samples_per_s"], 1)}


def probe_for(config: TrainConfig, device: Any) -> LinearProbe:
    """The estimator ``train`` fits: its options of the same names, on the device chosen, judging no
    convergence (run.json and the command line report what they always did)."""
    shared = {name: getattr(config, name) for name in LinearProbe.param_names() if hasattr(config, name)}
    return LinearProbe(**{**shared, "device": str(device), "tol": None})


def pair_source(store: Any, config: TrainConfig, probe: LinearProbe) -> Any:
    """The pairs a configuration trains on: ``sides``'s views, at most ``--max-views`` of each, without
    the shards held out for selection (``--holdout``), streamed when they exceed the memory budget."""
    from .sampling import MEMORY_BUDGET_BYTES, PairSource, holdout_shards

    cached = max(1 if side == "clean" else store.layout.views(side) for side in sides(store, config))
    if config.max_views is not None and config.max_views > cached:
        raise InputError(f"--max-views {config.max_views}, but store '{store.path}' caches at most {cached} view(s) "
                         f"of the kinds this run reads: pass at most {cached}, or omit it to use them all")
    return PairSource(
        store, *sides(store, config), config.max_views, **probe.pair_needs(),
        memory_budget=MEMORY_BUDGET_BYTES if config.memory_budget is None else config.memory_budget,
        excluded_shards=holdout_shards(store.layout.n_shards, config.holdout, config.seed),
    )


def kept_warnings(curve: list[dict[str, float]], threshold: float) -> list[str]:
    """A line for each epoch whose threshold kept fewer than ``MIN_KEPT_FRACTION`` of the samples."""
    return [f"epoch {c['epoch']}: --threshold {threshold} kept {c['kept']:.1%} of the samples (fewer than "
            f"{MIN_KEPT_FRACTION:.0%}): the probe learned from few pseudo-labels" for c in curve
            if c["kept"] < MIN_KEPT_FRACTION]


def run_info(config: TrainConfig, store: Any, source: Any, samples: int, probe: LinearProbe, device: str,
             warnings: list[str], elapsed: float) -> dict[str, Any]:
    """run.json: the options, the store, the teacher, the pairs fed (``samples`` per epoch), the loss in words
    and the curve."""
    from .storage import is_url

    record = asdict(config)
    record.pop("memory_budget")
    teacher = store.teacher_scale
    return {
        "config": record,
        "store": {"path": config.store if is_url(config.store) else str(Path(config.store).resolve()),
                  "cache_key": store.cache_key},
        "model": store.manifest["model"],
        "classnames": store.classnames,
        "teacher": {"logit_scale": teacher.logit_scale, "temperature": teacher.temperature},
        "pairs": {  # the sides the pair source actually fed, which the loss text names too
            "samples": samples,
            "teacher_side": source.teacher_side,
            "teacher_views": source.teacher_views,
            "student_side": source.student_side,
            "student_views": source.student_views,
            "streamed": source.streaming,
            "held_out_shards": sorted(source.excluded),
        },
        "ensemble": config.ensemble,
        "device": device,
        "warnings": warnings,
        "loss": loss_description(config, source.teacher_side, source.student_side),
        "curve": probe.history_,
        "seconds": elapsed,
        "samples_per_s": config.epochs * samples / max(elapsed, 1e-9),
    }


def loss_description(config: TrainConfig, teacher_side: str, student_side: str) -> str:
    """The loss a configuration minimises, in words, naming the views each side was fed (``clean``,
    ``weak`` or ``strong``, as ``sides`` chose them for the store)."""
    student = f"g(z_{student_side}_i)"
    if config.method == "supervised":
        return f"mean_i CE({student}, true label_i)"
    weight = "c_i" if config.weighting == "confidence" else "1"
    if config.threshold:
        weight += f" * [c_i >= {config.threshold}]"
    teacher = f"p_teacher(z_{teacher_side}_i)"
    target = f"argmax {teacher}" if config.targets == "hard" else teacher
    confidence = f", c_i = max {teacher}" if "c_i" in weight else ""
    return f"sum_i w_i CE({student}, {target}) / sum_i w_i, w_i = {weight}{confidence}"
