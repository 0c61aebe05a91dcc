"""An evaluation report folder: the JSON, a Markdown page and PNG plots.

Plots: reliability diagrams and confidence histograms of each method on the first
in-distribution store, risk-coverage curves, ROC curves for each OOD store (maximum softmax
probability, OOD positive) and, when corrupted stores were evaluated, error against severity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import METHOD_NAMES

COLOURS = {"teacher": "#7f7f7f", "probe": "#1f77b4"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _outputs(run: Any, store_path: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each method's probabilities and the labels of one store's valid rows."""
    from .evaluate import score_store
    from .store import FeatureStore

    store = FeatureStore(store_path)
    return score_store(run, store), store.labels()[store.read("valid")]


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


def write_report_folder(report: dict[str, Any], run_path: str, folder: Path) -> list[Path]:
    """Write report.json, report.md and the plots into ``folder``; return the plot paths."""
    from .metrics import reliability_bins
    from .probe import load_run

    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    run = load_run(run_path)
    first = next(iter(report["stores"]))
    probs, labels = _outputs(run, first)
    ood_probs = {path: _outputs(run, path)[0] for path in report["ood"]}  # read once, used by two plots
    known = labels >= 0
    plots: list[Path] = []

    fig, axes = plt.subplots(2, len(METHOD_NAMES), figsize=(5 * len(METHOD_NAMES), 8), squeeze=False)
    for col, method in enumerate(METHOD_NAMES):
        p = probs[method]
        if known.any():
            bins = reliability_bins(p[known], labels[known], 15)
            edges = np.asarray(bins["edges"])
            axes[0][col].bar(edges[:-1], np.nan_to_num(np.asarray(bins["accuracy"])), width=np.diff(edges),
                             align="edge", color=COLOURS[method], edgecolor="black", linewidth=0.5)
        axes[0][col].plot([0, 1], [0, 1], "--", color="black", linewidth=1)
        axes[0][col].set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                         title=f"{method}: reliability ({Path(first).name})")
        axes[1][col].hist(p.max(axis=1), bins=30, range=(0, 1), color=COLOURS[method], alpha=0.8, label="in-dist.")
        for ood_path, outputs in ood_probs.items():
            axes[1][col].hist(outputs[method].max(axis=1), bins=30, range=(0, 1), histtype="step", linewidth=1.5,
                              label=Path(ood_path).name)
        axes[1][col].set(xlabel="confidence", ylabel="samples", title=f"{method}: confidence histogram")
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    plots.append(folder / "calibration.png")
    fig.savefig(plots[-1], dpi=100)
    plt.close(fig)

    if known.any():
        fig, axis = plt.subplots(figsize=(5, 4))
        for method in METHOD_NAMES:
            coverage, risk = risk_coverage(probs[method][known], labels[known])
            axis.plot(coverage, risk, color=COLOURS[method], label=method)
        axis.set(xlabel="coverage", ylabel="risk (error rate)", title="risk-coverage", xlim=(0, 1), ylim=(0, 1))
        axis.legend()
        fig.tight_layout()
        plots.append(folder / "risk_coverage.png")
        fig.savefig(plots[-1], dpi=100)
        plt.close(fig)

    if report["ood"]:
        fig, axis = plt.subplots(figsize=(5, 4))
        for ood_path, outputs in ood_probs.items():
            for method in METHOD_NAMES:
                fpr, tpr = roc_curve(probs[method].max(axis=1), outputs[method].max(axis=1))
                axis.plot(fpr, tpr, color=COLOURS[method], label=f"{method} vs {Path(ood_path).name}")
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
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
        for col, name in enumerate(names):
            for method, entry in corruptions.items():
                severities = sorted(entry["error"][name], key=int)
                axes[0][col].plot([int(s) for s in severities], [entry["error"][name][s] for s in severities],
                                  marker="o", color=COLOURS[method], label=method)
            axes[0][col].set(title=name, xlabel="severity", ylabel="error", ylim=(0, 1))
            axes[0][col].legend(fontsize=8)
        fig.tight_layout()
        plots.append(folder / "severity.png")
        fig.savefig(plots[-1], dpi=100)
        plt.close(fig)

    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report, plots))
    return plots


def markdown(report: dict[str, Any], plots: list[Path]) -> str:
    """The report as a Markdown page."""
    from .evaluate import format_table

    lines = [f"# Evaluation of `{report['run']}`", "", "```", format_table(report), "```", ""]
    for method, entry in report.get("corruptions", {}).items():
        means = ", ".join(f"{k} {v:.3f}" for k, v in entry["mean_error"].items())
        lines.append(f"- {method}: mean corruption error {entry['mce']:.3f} ({means})")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    return "\n".join(lines)
