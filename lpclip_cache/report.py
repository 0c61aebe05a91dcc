"""An evaluation report folder: the JSON, a Markdown page and PNG plots.

Plots: reliability diagrams and confidence histograms of the teacher and the probe on the first
in-distribution store (``calibration.png``), a reliability diagram per in-distribution store
(``reliability/<store>.png``), risk-coverage curves, ROC curves for each OOD store (maximum
softmax probability, OOD positive), when corrupted stores were evaluated, error and ECE
against severity with a line per method (ensemble members included), and, when other labelled
stores of the first store's classes were evaluated (shifts), the effective-robustness plot
(``effective_robustness.png``: accuracy on the first store against accuracy on each shift). Every plot shows the
probabilities ``evaluate`` scores: a store on its class subset, OOD stores on the first store's.

This module chooses the figures and hands each its data; ``figures`` draws them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .evaluation import METHOD_NAMES, Evaluation, StoreOutputs

OPTION_NAMES = {"out": "--out", "report": "--report", "predictions": "--predictions"}  # as refusals name them


def evaluate_into(run: str, stores: list[str], ood: list[str], out: str | None = None, report: str | None = None,
                  overwrite: bool = False, transclip: bool = False, predictions: str | None = None,
                  names: dict[str, str] | None = None) -> dict[str, Any]:
    """``evaluate``: score the run once, then write ``out`` (the report JSON), the ``report``
    folder (JSON, Markdown, figures) and ``predictions`` (every method's probabilities per image,
    HDF5) when given; return the report. Every output is checked before anything is read (no two
    in one place, none inside an input), and an old one is replaced only once its inputs have
    proven sound. ``out`` and ``predictions`` may be URLs; ``names`` says how the caller named
    each output (default ``OPTION_NAMES``; a recipe names its key), for the refusals."""
    from . import outputs
    from .evaluation import score
    from .storage import place

    names = {**OPTION_NAMES, **(names or {})}
    run, stores, ood = str(run), [str(s) for s in stores], [str(s) for s in ood]
    where = [place(s) for s in stores + ood]
    same = [given for given, at in zip(stores + ood, where) if where.count(at) > 1]
    if same:  # an OOD set equal to the in-distribution one scores AUROC 0.5 by construction
        raise InputError(f"store '{same[0]}' is given twice (as --store and --ood, or twice as one of them): "
                         "in- and out-of-distribution sets must be different stores")
    outputs.refuse_shared_outputs({names["out"]: out, names["report"]: report, names["predictions"]: predictions})
    inputs = [run, *stores, *ood]
    if out:
        outputs.check_output(str(out), inputs, overwrite, outputs.is_report, "report", names["out"])
    folder = outputs.local_folder(report, names["report"], "report folder") if report else None
    if folder:
        outputs.check_output(str(report), inputs, overwrite, outputs.is_report_folder, "report folder",
                             names["report"])
    if predictions:
        if Path(str(predictions)).suffix not in (".h5", ".hdf5"):
            raise InputError(f"{names['predictions']} '{predictions}' should end in .h5 or .hdf5")
        outputs.check_output(str(predictions), inputs, overwrite, is_predictions, "predictions file",
                             names["predictions"])
    evaluation = score(run, stores, ood, transclip)
    if out:
        outputs.write_report(evaluation.report, str(out), overwrite, names["out"])
    if folder:
        write_report_folder(evaluation, folder, replace=overwrite)  # an old folder goes once the new is whole
    if predictions:
        write_predictions(evaluation, str(predictions))
    return evaluation.report


PREDICTIONS_ATTR = "lpclip_cache_predictions"  # marks an HDF5 file of predictions written by evaluate


def is_predictions(path: str | Path) -> bool:
    """True when ``path`` (a local path or a URL) is a predictions file written by ``evaluate --predictions``."""
    from .outputs import has_hdf5_attribute

    return has_hdf5_attribute(path, PREDICTIONS_ATTR)


def write_predictions(evaluation: Evaluation, path: str | Path) -> None:
    """Every method's probabilities on every store's valid rows, as ``evaluate`` scored them, in one
    HDF5 file (a local path or a URL) written whole or not at all: a group per store (``stores/0``, ..., ``ood/0``, ...)
    with its ``path`` as attribute, the rows' ``keys`` (UTF-8), ``labels`` (positions in
    ``classes``, -1 unknown), ``classes`` (the run's class indices scored) and ``probs/<method>``
    (rows x classes, float32: the teacher, the probe, each member, TransCLIP's assignments)."""
    import h5py

    from .outputs import atomic_file
    from .store import FeatureStore

    report = evaluation.report
    with atomic_file(path, "predictions file") as staging:
        with h5py.File(staging, "w") as handle:
            handle.attrs[PREDICTIONS_ATTR] = json.dumps({"run": report["run"], "methods": report["methods"]})
            for kind, scored in (("stores", evaluation.stores), ("ood", evaluation.ood)):
                for index, (where, outputs) in enumerate(scored.items()):
                    store = FeatureStore(where)
                    group = handle.create_group(f"{kind}/{index}")
                    group.attrs["path"] = where
                    keys = [str(k) for k in store.read("keys")[store.read("valid")]]
                    group.create_dataset("keys", data=keys, dtype=h5py.string_dtype("utf-8"))
                    group.create_dataset("labels", data=outputs.labels.astype(np.int64))
                    classes = outputs.classes if outputs.classes is not None else range(outputs.probs("probe").shape[1])
                    group.create_dataset("classes", data=np.asarray(list(classes), np.int64))
                    for method in report["methods"]:
                        group.create_dataset(f"probs/{method}", data=outputs.probs(method).astype(np.float32))


def write_report_folder(evaluation: Evaluation, folder: Path, replace: bool = False) -> list[Path]:
    """Write report.json, report.md and the figures of an evaluation into ``folder``; return the
    figure paths. Nothing is read or scored again.

    The folder is filled under a hidden name and renamed into place whole; a report folder
    already at ``folder`` is replaced only with ``replace``, and only then.
    """
    from . import __version__
    from .outputs import atomic_dir, json_text

    folder = Path(folder)
    report = {"tool": "lpclip-cache", "version": __version__, **evaluation.report}
    with atomic_dir(folder, "report folder", replace) as staging:
        plots = draw_figures(evaluation, report, staging)
        (staging / "report.json").write_text(json_text(report) + "\n")
        (staging / "report.md").write_text(markdown(report, plots, staging))
    return [folder / plot.relative_to(staging) for plot in plots]


def draw_figures(evaluation: Evaluation, report: dict[str, Any], folder: Path) -> list[Path]:
    """Draw into ``folder`` the report's figures that the evaluation has data for, each from the
    outputs ``evaluate`` scored; return their paths."""
    from .figures import calibration, curves, shift

    first, ood = next(iter(evaluation.stores.values())), evaluation.ood
    methods = list(report.get("methods", METHOD_NAMES))
    plots = [calibration.calibration_figure(folder / "calibration.png", probs_of(first, METHOD_NAMES), first.labels,
                                            first.path, {path: probs_of(o, METHOD_NAMES) for path, o in ood.items()})]
    for index, (path, store) in enumerate(evaluation.stores.items()):
        if (store.labels >= 0).any():
            ece = {m: report["stores"][path][m]["ece"] for m in methods}
            name = f"{index:03d}-{Path(path).stem}.png"
            plots.append(calibration.reliability_figure(folder / "reliability" / name, probs_of(store, methods),
                                                        store.labels, ece, store.path))
    if (first.labels >= 0).any():
        plots.append(curves.risk_coverage_figure(folder / "risk_coverage.png", probs_of(first, methods), first.labels))
    if ood:
        msp = {path: {m: o.scores[m]["msp"] for m in METHOD_NAMES} for path, o in ood.items()}
        plots.append(curves.roc_figure(folder / "roc.png", {m: first.scores[m]["msp"] for m in METHOD_NAMES}, msp))
    if report.get("corruptions"):
        plots.append(shift.severity_figure(folder / "severity.png", report["corruptions"]))
    points = robustness_points(evaluation)
    if points is not None:
        title = f"effective robustness of {report['method']} ({Path(report['run']).name})"
        plots.append(shift.effective_robustness_figure(folder / "effective_robustness.png", *points,
                                                       line=("teacher", "probe"), title=title))
    return plots


def probs_of(store: StoreOutputs, methods: Sequence[str]) -> dict[str, np.ndarray]:
    """Each method's probabilities on the store's valid rows."""
    return {method: store.probs(method) for method in methods}


def robustness_points(evaluation: Evaluation) -> tuple[dict[str, float], dict[str, dict[str, float]]] | None:
    """The effective-robustness plot's inputs (ensemble members left out): each method's accuracy on
    the first ``--store`` (in distribution), and on every other labelled ``--store`` scored over the
    same classes (a shift, named by its store's name; corrupted stores pooled as one shift,
    ``corruptions``, their mean accuracy). None without a labelled first store and a shift."""
    report = evaluation.report
    methods = [m for m in report["methods"] if not m.startswith("member-")]
    (first_path, first), *others = evaluation.stores.items()
    if not (first.labels >= 0).any():
        return None
    clean = {m: report["stores"][first_path][m]["accuracy"] for m in methods}
    shifts: dict[str, dict[str, float]] = {}
    corrupted: dict[str, list[float]] = {}
    for path, store in others:
        entry = report["stores"][path]
        if store.classes != first.classes or not (store.labels >= 0).any():
            continue
        if entry.get("shift"):
            for m in methods:
                corrupted.setdefault(m, []).append(entry[m]["accuracy"])
        else:
            name = Path(path.rstrip("/")).name.removesuffix(".zarr")
            shifts[name if name not in shifts else f"{name} ({len(shifts)})"] = {m: entry[m]["accuracy"]
                                                                                  for m in methods}
    if corrupted:
        shifts["corruptions"] = {m: float(np.mean(values)) for m, values in corrupted.items()}
    return (clean, shifts) if shifts else None


def markdown(report: dict[str, Any], plots: list[Path], folder: Path) -> str:
    """The report as a Markdown page."""
    from .evaluation import format_table, missing_severities

    lines = [f"# Evaluation of `{report['run']}`", "", "```", format_table(report), "```", ""]
    corruptions = report.get("corruptions", {})
    missing = missing_severities(corruptions)
    if missing:
        lines.append(f"- no mean corruption error: it needs severities 1-5 of every corruption; missing: {missing}")
    for method, entry in corruptions.items():
        means = ", ".join(f"{k} {v:.3f}" for k, v in entry["mean_error"].items())
        if entry["mce"] is not None:
            lines.append(f"- {method}: mean corruption error {entry['mce']:.3f} ({means})")
        elif means:
            lines.append(f"- {method}: mean error of the complete corruptions ({means})")
    summary = [p for p in plots if p.parent == folder]
    lines += ["", *[f"![{p.stem}]({p.name})" for p in summary], ""]
    per_store = [p for p in plots if p.parent != folder]
    if per_store:
        lines += ["## Reliability per store", "", *[f"- [{p.stem}]({p.relative_to(folder).as_posix()})"
                                                     for p in per_store], ""]
    return "\n".join(lines)
