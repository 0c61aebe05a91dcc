"""Curves over every threshold, and their figures: risk against coverage (selective prediction)
and ROC (OOD detection by the maximum softmax probability, OOD positive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import colour, pyplot, save


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


def risk_coverage_figure(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    """Risk against coverage of every method (``probs``: method -> probabilities) on the rows whose
    label is known (``labels`` -1 where not); ensemble members drawn thin."""
    fig, axis = pyplot().subplots(figsize=(5, 4))
    known = labels >= 0
    for method, p in probs.items():
        coverage, risk = risk_coverage(p[known], labels[known])
        axis.plot(coverage, risk, color=colour(method), label=method,
                  linewidth=1.0 if method.startswith("member-") else 2.0)
    axis.set(xlabel="coverage", ylabel="risk (error rate)", title="risk-coverage", xlim=(0, 1), ylim=(0, 1))
    axis.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path


def roc_figure(path: Path, id_conf: dict[str, np.ndarray], ood_conf: dict[str, dict[str, np.ndarray]]) -> Path:
    """ROC curves of each method's confidence (``id_conf``: method -> the in-distribution store's)
    against each OOD store's (``ood_conf``: its path -> method -> confidence, shown by its name)."""
    fig, axis = pyplot().subplots(figsize=(5, 4))
    for ood_path, confidence in ood_conf.items():
        for method, reference in id_conf.items():
            fpr, tpr = roc_curve(reference, confidence[method])
            axis.plot(fpr, tpr, color=colour(method), label=f"{method} vs {Path(ood_path).name}")
    axis.plot([0, 1], [0, 1], ":", color="black")
    axis.set(xlabel="false-positive rate (ID flagged)", ylabel="true-positive rate (OOD flagged)", title="ROC")
    axis.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return path
