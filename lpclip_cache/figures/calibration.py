"""Calibration figures: reliability diagrams (accuracy per confidence bin against the diagonal) and
confidence histograms. ``probs`` maps each method to its probabilities (rows x classes) on one
store's rows, ``labels`` gives each row's class (-1 where unknown), and a store is given by its
path and shown by its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import DEMO_LABELS, colour, pyplot, save


def reliability_panel(axis: Any, probs: np.ndarray, labels: np.ndarray, method: str, title: str,
                      legend: bool = False, n_bins: int = 15) -> None:
    """Accuracy per confidence bin (``n_bins`` equal-width bins, as ECE is computed) against the diagonal."""
    from ..metrics import reliability_bins

    bins = reliability_bins(probs, labels, n_bins)
    edges = np.asarray(bins["edges"])
    axis.bar(edges[:-1], np.nan_to_num(np.asarray(bins["accuracy"])), width=np.diff(edges), align="edge",
             color=colour(method), edgecolor="black", linewidth=0.5, label="accuracy")
    axis.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    if legend:
        axis.legend(loc="upper left", fontsize=8)


def calibration_figure(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray, store: str,
                       ood: dict[str, dict[str, np.ndarray]]) -> Path:
    """A column per method: its reliability on ``store``'s labelled rows (top, left blank without
    any) and its confidence histograms there and on every OOD store (bottom; ``ood`` maps each
    OOD store's path to its ``probs``)."""
    known = labels >= 0
    fig, axes = pyplot().subplots(2, len(probs), figsize=(5 * len(probs), 8), squeeze=False)
    for col, (method, p) in enumerate(probs.items()):
        if known.any():
            reliability_panel(axes[0][col], p[known], labels[known], method,
                              f"{method}: reliability ({Path(store).name})")
        axes[1][col].hist(p.max(axis=1), bins=30, range=(0, 1), color=colour(method), alpha=0.8, label="in-dist.")
        for ood_path, ood_probs in ood.items():
            axes[1][col].hist(ood_probs[method].max(axis=1), bins=30, range=(0, 1), histtype="step",
                              linewidth=1.5, label=Path(ood_path).name)
        axes[1][col].set(xlabel="confidence", ylabel="samples", title=f"{method}: confidence histogram")
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path


def reliability_figure(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray, ece: dict[str, float],
                       store: str) -> Path:
    """A reliability diagram per method, side by side, on ``store``'s labelled rows, each titled
    with the method's ``ece``."""
    seen = labels >= 0
    fig, axes = pyplot().subplots(1, len(probs), figsize=(3.6 * len(probs), 3.6), squeeze=False)
    for col, (method, p) in enumerate(probs.items()):
        reliability_panel(axes[0][col], p[seen], labels[seen], method, f"{method} (ECE {ece[method]:.3f})")
    fig.suptitle(Path(store).name)
    # margins fixed in inches rather than tight_layout, which measures every label and takes a
    # third of the time of a figure drawn for every store of every report (docs/performance.md)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.65 / height,
                        wspace=0.3)
    save(fig, path, dpi=80)
    return path


def demo_reliability_figure(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray, n_bins: int = 15) -> Path:
    """The demo's reliability diagrams: one per method on a store whose every row is labelled,
    titled with the method's demo name and ECE (``n_bins`` bins), written whole."""
    from ..metrics import ece

    fig = pyplot().figure(figsize=(4 * len(probs), 4), dpi=100)
    for index, (method, p) in enumerate(probs.items()):
        reliability_panel(fig.add_subplot(1, len(probs), index + 1), p, labels, method,
                          f"{DEMO_LABELS[method]}\nECE {ece(p, labels, n_bins):.3f}", legend=True, n_bins=n_bins)
    fig.tight_layout()
    save(fig, path, whole=True)
    return path
