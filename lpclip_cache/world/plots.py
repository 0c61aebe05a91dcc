"""PNG plots of the demo: reliability diagrams and accuracy against corruption severity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file

COLOURS = {"teacher": "#7f7f7f", "lpclip": "#1f77b4", "supervised": "#2ca02c"}
LABELS = {"teacher": "zero-shot teacher", "lpclip": "LP-CLIP (no labels)", "supervised": "supervised probe"}


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def reliability_diagrams(path: Path, lpclip_run: str, supervised_run: str, store_path: str, n_bins: int = 15) -> Path:
    """One reliability diagram per method on a store (bars: accuracy per confidence bin)."""
    from ..evaluation import score_store
    from ..metrics import ece, reliability_bins
    from ..probe import load_run
    from ..store import FeatureStore

    store = FeatureStore(store_path)
    labels = store.labels()[store.read("valid")]
    lpclip = score_store(load_run(lpclip_run), store)
    probs = {"teacher": lpclip["teacher"], "lpclip": lpclip["probe"],
             "supervised": score_store(load_run(supervised_run), store)["probe"]}
    plt, fig = _figure(12, 4)
    for index, (method, p) in enumerate(probs.items()):
        axis = fig.add_subplot(1, 3, index + 1)
        bins = reliability_bins(p, labels, n_bins)
        edges = np.asarray(bins["edges"])
        accuracy = np.nan_to_num(np.asarray(bins["accuracy"]))
        axis.bar(edges[:-1], accuracy, width=np.diff(edges), align="edge", color=COLOURS[method],
                 edgecolor="black", linewidth=0.5, label="accuracy")
        axis.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{LABELS[method]}\nECE {ece(p, labels, n_bins):.3f}")
        axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "plot") as temp:
        fig.savefig(temp)
    plt.close(fig)
    return path


def accuracy_by_severity(path: Path, results: dict[str, Any], corruptions: tuple[str, ...]) -> Path:
    """Accuracy against corruption severity (0 = clean test set), one panel per corruption."""
    plt, fig = _figure(4 * len(corruptions), 3.6)
    severities = [0, *results["demo"]["severities"]]
    for index, corruption in enumerate(corruptions):
        axis = fig.add_subplot(1, len(corruptions), index + 1)
        for method in results["methods"]:
            per_set = results["per_set"][method]
            values = [per_set["test"]["accuracy"]] + [
                per_set[f"{corruption}-{s}"]["accuracy"] for s in severities[1:]
            ]
            axis.plot(severities, values, marker="o", color=COLOURS[method], label=LABELS[method])
        axis.set_title(corruption.replace("_", " "))
        axis.set_xlabel("severity (0 = clean)")
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1)
        axis.set_xticks(severities)
        axis.grid(alpha=0.3)
        if index == 0:
            axis.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "plot") as temp:
        fig.savefig(temp)
    plt.close(fig)
    return path
