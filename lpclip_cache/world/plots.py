"""PNG plots of the demo: reliability diagrams and accuracy against corruption severity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..figures import colour, pyplot, reliability_panel, save

LABELS = {"teacher": "zero-shot teacher", "lpclip": "LP-CLIP (no labels)", "supervised": "supervised probe"}


def reliability_diagrams(path: Path, lpclip_run: str, supervised_run: str, store_path: str, n_bins: int = 15) -> Path:
    """One reliability diagram per method on a store (bars: accuracy per confidence bin)."""
    from ..evaluation import labels_in, outputs_in
    from ..metrics import ece
    from ..runs import load_run
    from ..store import FeatureStore

    store = FeatureStore(store_path)
    labels = labels_in(store, None)
    lpclip = outputs_in(load_run(lpclip_run), store, None)
    probs = {"teacher": lpclip["teacher"].probs, "lpclip": lpclip["probe"].probs,
             "supervised": outputs_in(load_run(supervised_run), store, None)["probe"].probs}
    fig = pyplot().figure(figsize=(12, 4), dpi=100)
    for index, (method, p) in enumerate(probs.items()):
        reliability_panel(fig.add_subplot(1, 3, index + 1), p, labels, method,
                          f"{LABELS[method]}\nECE {ece(p, labels, n_bins):.3f}", legend=True, n_bins=n_bins)
    fig.tight_layout()
    return save(fig, path, whole=True)


def accuracy_by_severity(path: Path, results: dict[str, Any], corruptions: tuple[str, ...]) -> Path:
    """Accuracy against corruption severity (0 = clean test set), one panel per corruption."""
    fig = pyplot().figure(figsize=(4 * len(corruptions), 3.6), dpi=100)
    severities = [0, *results["demo"]["severities"]]
    for index, corruption in enumerate(corruptions):
        axis = fig.add_subplot(1, len(corruptions), index + 1)
        for method in results["methods"]:
            per_set = results["per_set"][method]
            values = [per_set["test"]["accuracy"]] + [
                per_set[f"{corruption}-{s}"]["accuracy"] for s in severities[1:]
            ]
            axis.plot(severities, values, marker="o", color=colour(method), label=LABELS[method])
        axis.set(title=corruption.replace("_", " "), xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1),
                 xticks=severities)
        axis.grid(alpha=0.3)
        if index == 0:
            axis.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, whole=True)
