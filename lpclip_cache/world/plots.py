"""PNG plots of the demo: reliability diagrams and accuracy against corruption severity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..figures import colour, pyplot, reliability_panel, save

LABELS = {"teacher": "zero-shot teacher", "lpclip": "LP-CLIP (no labels)", "ensemble": "LP-CLIP ensemble",
          "supervised": "supervised probe", "transclip": "TransCLIP (zero-shot)",
          "transclip-lpclip": "TransCLIP atop LP-CLIP"}


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


def accuracy_by_severity(path: Path, reports: dict[str, Any], test_store: str) -> Path:
    """Accuracy against corruption severity (0 = the clean test set), averaged over the corruption
    types, one line per method (the teacher's from LP-CLIP's report)."""
    import numpy as np

    fig = pyplot().figure(figsize=(6, 4), dpi=100)
    axis = fig.add_subplot(1, 1, 1)
    rows = {"teacher": (reports["lpclip"], "teacher"), **{m: (reports[m], "probe") for m in reports}}
    for method, (report, key) in rows.items():
        by_severity: dict[int, list[float]] = {0: [report["stores"][test_store][key]["accuracy"]]}
        for entry in report["stores"].values():
            if entry.get("shift"):
                by_severity.setdefault(entry["shift"]["severity"], []).append(entry[key]["accuracy"])
        severities = sorted(by_severity)
        axis.plot(severities, [np.mean(by_severity[s]) for s in severities], marker="o", color=colour(method),
                  label=LABELS[method])
    axis.set(title="corruptions (mean over types)", xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, whole=True)
