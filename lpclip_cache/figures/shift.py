"""Figures of accuracy under shift: error and ECE against corruption severity (the report's),
accuracy against severity (the demo's), and the effective-robustness plot (both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import DEMO_LABELS, colour, pyplot, save

# the effective-robustness plot: a marker per method, a colour per shift
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
SHIFT_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def severity_figure(path: Path, corruptions: dict[str, Any]) -> Path:
    """Error (top) and ECE (bottom) against severity, a panel per corruption, a line per method
    (``corruptions``: the report's entry, method -> ``error``/``ece`` -> corruption -> severity ->
    value); ensemble members drawn thin."""
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
    save(fig, path)
    return path


def demo_severity_figure(path: Path, reports: dict[str, Any], test_store: str) -> Path:
    """The demo's accuracy against corruption severity (0 = the clean ``test_store``), averaged over
    the corruption types, one line per method (``reports``: method -> its report, whose ``probe``
    is the method; the teacher's line from LP-CLIP's report), written whole."""
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
                  label=DEMO_LABELS[method])
    axis.set(title="corruptions (mean over types)", xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path, whole=True)
    return path


def effective_robustness_figure(path: Path, clean: dict[str, float], shifts: dict[str, dict[str, float]],
                                line: tuple[str, str] = ("teacher", "supervised"), names: dict[str, str] | None = None,
                                title: str = "effective robustness", whole: bool = False) -> Path:
    """Accuracy in distribution (x, ``clean[method]``) against accuracy under each shift (y,
    ``shifts[shift][method]``): a marker per method, a colour per shift, the y = x line and, per
    shift, the dashed line through the two ``line`` methods' points (the zero-shot teacher's and the
    supervised probe's). A method above that line keeps more of its accuracy under the shift than
    trading the teacher for the supervised probe does: effective robustness (Taori et al. 2020)."""
    from ..metrics import baseline_line

    fig, axis = pyplot().subplots(figsize=(6.4, 5.2), dpi=100)
    axis.plot([0, 1], [0, 1], ":", color="black", linewidth=1, label="y = x")
    methods = list(clean)
    for index, (shift, accuracy) in enumerate(shifts.items()):
        hue = SHIFT_COLOURS[index % len(SHIFT_COLOURS)]
        a, b = line
        if a in accuracy and b in accuracy and a in clean and b in clean and clean[a] != clean[b]:  # else no line
            intercept, slope = baseline_line((clean[a], accuracy[a]), (clean[b], accuracy[b]))
            axis.plot([0, 1], [intercept, intercept + slope], "--", color=hue, linewidth=1, alpha=0.7)
        for m, method in enumerate(methods):
            if method in accuracy:
                axis.scatter(clean[method], accuracy[method], color=hue, marker=MARKERS[m % len(MARKERS)],
                             s=46, edgecolor="black", linewidth=0.5, zorder=3)
        axis.plot([], [], color=hue, linewidth=6, label=shift)
    for m, method in enumerate(methods):
        axis.scatter([], [], color="white", edgecolor="black", marker=MARKERS[m % len(MARKERS)],
                     label=(names or {}).get(method, method))
    lows = [v for accuracy in shifts.values() for v in accuracy.values()] + list(clean.values())
    low = max(0.0, min(lows) - 0.05)
    axis.set(xlim=(low, 1), ylim=(low, 1), xlabel="accuracy in distribution", ylabel="accuracy under shift",
             title=f"{title}\n(dashed: the line through {line[0]} and {line[1]}, per shift)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    save(fig, path, whole=whole)
    return path
