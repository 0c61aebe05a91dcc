"""An evaluation report folder: the JSON, a Markdown page and PNG plots.

Plots: reliability diagrams and confidence histograms of the teacher and the probe on the first
in-distribution store (``calibration.png``), a reliability diagram per in-distribution store
(``reliability/<store>.png``), risk-coverage curves, ROC curves for each OOD store (maximum
softmax probability, OOD positive), when corrupted stores were evaluated, error and ECE
against severity with a line per method (ensemble members included), and, when other labelled
stores of the first store's classes were evaluated (shifts), the effective-robustness plot
(``effective_robustness.png``: accuracy on the first store against accuracy on each shift). Every plot shows the
probabilities ``evaluate`` scores: a store on its class subset, OOD stores on the first store's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .evaluation import METHOD_NAMES, Evaluation, StoreOutputs
from .figures import colour, effective_robustness_figure, pyplot, reliability_panel, save


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage i/N and the error rate among the i most confident samples, for i = 1..N."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    errors = (probs.argmax(axis=1) != labels)[order]
    counts = np.arange(1, len(errors) + 1)
    return counts / len(errors), np.cumsum(errors) / counts


def roc_curve(id_conf: np.ndarray, ood_conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates (OOD positive, score = -confidence) at every threshold."""
    scores = np.concatenate([-id_conf, -ood_conf])
    positive = np.concatenate([np.zeros(len(id_conf)), np.ones(len(ood_conf))])
    order = np.argsort(-scores, kind="stable")
    tpr = np.concatenate([[0.0], np.cumsum(positive[order]) / len(ood_conf)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - positive[order]) / len(id_conf)])
    return fpr, tpr


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
        first = next(iter(evaluation.stores.values()))
        methods = list(report.get("methods", METHOD_NAMES))
        plots = [calibration_figure(first, evaluation.ood, staging / "calibration.png")]
        for index, (path, store) in enumerate(evaluation.stores.items()):
            if (store.labels >= 0).any():
                name = f"{index:03d}-{Path(path).stem}.png"
                plots.append(reliability_figure(store, report["stores"][path], methods,
                                                staging / "reliability" / name))
        if (first.labels >= 0).any():
            plots.append(risk_coverage_figure(first, methods, staging / "risk_coverage.png"))
        if evaluation.ood:
            plots.append(roc_figure(first, evaluation.ood, staging / "roc.png"))
        if report.get("corruptions"):
            plots.append(severity_figure(report["corruptions"], staging / "severity.png"))
        points = robustness_points(evaluation)
        if points is not None:
            plots.append(effective_robustness_figure(staging / "effective_robustness.png", *points,
                                                     line=("teacher", "probe"), title=f"effective robustness of "
                                                     f"{report['method']} ({Path(report['run']).name})"))
        (staging / "report.json").write_text(json_text(report) + "\n")
        (staging / "report.md").write_text(markdown(report, plots, staging))
    return [folder / plot.relative_to(staging) for plot in plots]


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


def calibration_figure(first: StoreOutputs, ood: dict[str, StoreOutputs], path: Path) -> Path:
    """The teacher's and the probe's reliability on the first store (top) and confidence
    histograms there and on every OOD store (bottom)."""
    plt = pyplot()
    known = first.labels >= 0
    fig, axes = plt.subplots(2, len(METHOD_NAMES), figsize=(5 * len(METHOD_NAMES), 8), squeeze=False)
    for col, method in enumerate(METHOD_NAMES):
        p = first.probs(method)
        if known.any():
            reliability_panel(axes[0][col], p[known], first.labels[known], method,
                              f"{method}: reliability ({Path(first.path).name})")
        axes[1][col].hist(p.max(axis=1), bins=30, range=(0, 1), color=colour(method), alpha=0.8, label="in-dist.")
        for ood_path, outputs in ood.items():
            axes[1][col].hist(outputs.probs(method).max(axis=1), bins=30, range=(0, 1), histtype="step",
                              linewidth=1.5, label=Path(ood_path).name)
        axes[1][col].set(xlabel="confidence", ylabel="samples", title=f"{method}: confidence histogram")
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def reliability_figure(store: StoreOutputs, entry: dict[str, Any], methods: list[str], path: Path) -> Path:
    """A reliability diagram per method, side by side, on one store with labels."""
    plt = pyplot()
    seen = store.labels >= 0
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.6), squeeze=False)
    for col, method in enumerate(methods):
        reliability_panel(axes[0][col], store.probs(method)[seen], store.labels[seen], method,
                          f"{method} (ECE {entry[method]['ece']:.3f})")
    fig.suptitle(Path(store.path).name)
    fig.tight_layout()
    return save(fig, path, dpi=80)


def risk_coverage_figure(first: StoreOutputs, methods: list[str], path: Path) -> Path:
    """Risk against coverage of every method on the first store."""
    fig, axis = pyplot().subplots(figsize=(5, 4))
    known = first.labels >= 0
    for method in methods:
        coverage, risk = risk_coverage(first.probs(method)[known], first.labels[known])
        axis.plot(coverage, risk, color=colour(method), label=method,
                  linewidth=1.0 if method.startswith("member-") else 2.0)
    axis.set(xlabel="coverage", ylabel="risk (error rate)", title="risk-coverage", xlim=(0, 1), ylim=(0, 1))
    axis.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def roc_figure(first: StoreOutputs, ood: dict[str, StoreOutputs], path: Path) -> Path:
    """ROC curves of the maximum softmax probability, the first store against each OOD store."""
    fig, axis = pyplot().subplots(figsize=(5, 4))
    for ood_path, outputs in ood.items():
        for method in METHOD_NAMES:
            fpr, tpr = roc_curve(first.scores[method]["msp"], outputs.scores[method]["msp"])
            axis.plot(fpr, tpr, color=colour(method), label=f"{method} vs {Path(ood_path).name}")
    axis.plot([0, 1], [0, 1], ":", color="black")
    axis.set(xlabel="false-positive rate (ID flagged)", ylabel="true-positive rate (OOD flagged)", title="ROC")
    axis.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def severity_figure(corruptions: dict[str, Any], path: Path) -> Path:
    """Error (top) and ECE (bottom) against severity, a panel per corruption, a line per method."""
    names = sorted(next(iter(corruptions.values()))["error"])
    fig, axes = pyplot().subplots(2, len(names), figsize=(3.2 * len(names), 6), squeeze=False)
    for col, name in enumerate(names):
        for row, key in enumerate(("error", "ece")):
            for method, entry in corruptions.items():
                severities = sorted(entry[key][name], key=int)
                axes[row][col].plot([int(s) for s in severities], [entry[key][name][s] for s in severities],
                                    marker="o", markersize=3, color=colour(method), label=method,
                                    linewidth=1.0 if method.startswith("member-") else 2.0)
            axes[row][col].set(title=name.replace("_", " "), xlabel="severity", ylabel=key,
                               ylim=(0, 1 if key == "error" else None))
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


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
