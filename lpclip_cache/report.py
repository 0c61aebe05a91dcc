"""An evaluation report folder: the JSON, a Markdown page and PNG plots.

Plots: reliability diagrams and confidence histograms of the teacher and the probe on the first
in-distribution store (``calibration.png``), a reliability diagram per in-distribution store
(``reliability/<store>.png``), risk-coverage curves, ROC curves for each OOD store (maximum
softmax probability, OOD positive) and, when corrupted stores were evaluated, error and ECE
against severity with a line per method (ensemble members included). Every plot shows the
probabilities ``evaluate`` scores: a store on its class subset, OOD stores on the first store's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import METHOD_NAMES

COLOURS = {"teacher": "#7f7f7f", "probe": "#1f77b4"}
MEMBER_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def colour(method: str) -> str:
    """A fixed colour per method; ensemble members cycle through a palette."""
    if method in COLOURS:
        return COLOURS[method]
    index = int(method.rpartition("-")[2]) if method.startswith("member-") else 0
    return MEMBER_COLOURS[index % len(MEMBER_COLOURS)]


def reliability_panel(axis: Any, probs: np.ndarray, labels: np.ndarray, method: str, title: str) -> None:
    """Accuracy per confidence bin (15 equal-width bins) against the diagonal."""
    from .metrics import reliability_bins

    bins = reliability_bins(probs, labels, 15)
    edges = np.asarray(bins["edges"])
    axis.bar(edges[:-1], np.nan_to_num(np.asarray(bins["accuracy"])), width=np.diff(edges), align="edge",
             color=colour(method), edgecolor="black", linewidth=0.5)
    axis.plot([0, 1], [0, 1], "--", color="black", linewidth=1)
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _outputs(run: Any, store_path: str) -> tuple[dict[str, np.ndarray], np.ndarray, list[int] | None]:
    """Each method's probabilities and the labels of one in-distribution store's valid rows, as
    ``evaluate`` scores them (on its class subset when it has one), and that subset."""
    from .evaluation import class_subset, in_distribution_outputs
    from .store import FeatureStore

    store = FeatureStore(store_path)
    outputs, labels = in_distribution_outputs(run, store)
    return {m: o.probs for m, o in outputs.items()}, labels, class_subset(store)


def _ood_outputs(run: Any, store_path: str, classes: list[int] | None) -> dict[str, np.ndarray]:
    """Each method's probabilities on an OOD store over ``classes``, the reference's class space."""
    from .evaluation import outputs_in
    from .store import FeatureStore

    return {m: o.probs for m, o in outputs_in(run, FeatureStore(store_path), classes).items()}


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


def write_report_folder(report: dict[str, Any], run_path: str, folder: Path, replace: bool = False) -> list[Path]:
    """Write report.json, report.md and the plots into ``folder``; return the plot paths.

    The folder is filled under a hidden name and renamed into place whole; a report folder
    already at ``folder`` is replaced only with ``replace``, and only then.
    """
    from .atomic import atomic_dir

    folder = Path(folder)
    with atomic_dir(folder, "report folder", replace) as staging:
        plots = _write_report_files(report, run_path, staging)
    return [folder / plot.relative_to(staging) for plot in plots]


def _write_report_files(report: dict[str, Any], run_path: str, folder: Path) -> list[Path]:
    from .probe import load_run

    plt = _pyplot()
    run = load_run(run_path)
    methods = list(report.get("methods", METHOD_NAMES))
    first = next(iter(report["stores"]))
    probs, labels, classes = _outputs(run, first)
    # read once, used by two plots; in the first store's class space, as evaluate scores them
    ood_probs = {path: _ood_outputs(run, path, classes) for path in report["ood"]}
    known = labels >= 0
    plots: list[Path] = []

    fig, axes = plt.subplots(2, len(METHOD_NAMES), figsize=(5 * len(METHOD_NAMES), 8), squeeze=False)
    for col, method in enumerate(METHOD_NAMES):
        p = probs[method]
        if known.any():
            reliability_panel(axes[0][col], p[known], labels[known], method,
                              f"{method}: reliability ({Path(first).name})")
        axes[1][col].hist(p.max(axis=1), bins=30, range=(0, 1), color=colour(method), alpha=0.8, label="in-dist.")
        for ood_path, outputs in ood_probs.items():
            axes[1][col].hist(outputs[method].max(axis=1), bins=30, range=(0, 1), histtype="step", linewidth=1.5,
                              label=Path(ood_path).name)
        axes[1][col].set(xlabel="confidence", ylabel="samples", title=f"{method}: confidence histogram")
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    plots.append(folder / "calibration.png")
    fig.savefig(plots[-1], dpi=100)
    plt.close(fig)

    # a reliability diagram per in-distribution store with labels, every method side by side
    for index, path in enumerate(report["stores"]):
        store_probs, store_labels, _ = (probs, labels, classes) if path == first else _outputs(run, path)
        seen = store_labels >= 0
        if not seen.any():
            continue
        fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.6), squeeze=False)
        for col, method in enumerate(methods):
            ece = report["stores"][path][method]["ece"]
            reliability_panel(axes[0][col], store_probs[method][seen], store_labels[seen], method,
                              f"{method} (ECE {ece:.3f})")
        fig.suptitle(Path(path).name)
        fig.tight_layout()
        plots.append(folder / "reliability" / f"{index:03d}-{Path(path).stem}.png")
        plots[-1].parent.mkdir(exist_ok=True)
        fig.savefig(plots[-1], dpi=80)
        plt.close(fig)

    if known.any():
        fig, axis = plt.subplots(figsize=(5, 4))
        for method in methods:
            coverage, risk = risk_coverage(probs[method][known], labels[known])
            axis.plot(coverage, risk, color=colour(method), label=method,
                      linewidth=1.0 if method.startswith("member-") else 2.0)
        axis.set(xlabel="coverage", ylabel="risk (error rate)", title="risk-coverage", xlim=(0, 1), ylim=(0, 1))
        axis.legend(fontsize=8)
        fig.tight_layout()
        plots.append(folder / "risk_coverage.png")
        fig.savefig(plots[-1], dpi=100)
        plt.close(fig)

    if report["ood"]:
        fig, axis = plt.subplots(figsize=(5, 4))
        for ood_path, outputs in ood_probs.items():
            for method in METHOD_NAMES:
                fpr, tpr = roc_curve(probs[method].max(axis=1), outputs[method].max(axis=1))
                axis.plot(fpr, tpr, color=colour(method), label=f"{method} vs {Path(ood_path).name}")
        axis.plot([0, 1], [0, 1], ":", color="black")
        axis.set(xlabel="false-positive rate (ID flagged)", ylabel="true-positive rate (OOD flagged)", title="ROC")
        axis.legend(fontsize=7)
        fig.tight_layout()
        plots.append(folder / "roc.png")
        fig.savefig(plots[-1], dpi=100)
        plt.close(fig)

    corruptions = report.get("corruptions", {})
    if corruptions:
        names = sorted(next(iter(corruptions.values()))["error"])
        fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6), squeeze=False)
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
        plots.append(folder / "severity.png")
        fig.savefig(plots[-1], dpi=100)
        plt.close(fig)

    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report, plots, folder))
    return plots


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
