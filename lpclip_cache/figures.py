"""Drawing shared by the evaluation report and the demo: colours, the reliability panel, saving a
figure whole, and text tables (aligned columns or Markdown). Matplotlib is imported when a
figure is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# the teacher grey; the method the report calls probe and the demo lpclip blue; members cycle
COLOURS = {"teacher": "#7f7f7f", "probe": "#1f77b4", "lpclip": "#1f77b4", "ensemble": "#9467bd",
           "supervised": "#2ca02c"}
MEMBER_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def colour(method: str) -> str:
    """A fixed colour per method; ensemble members (``member-i``) cycle through a palette."""
    if method in COLOURS:
        return COLOURS[method]
    index = int(method.rpartition("-")[2]) if method.startswith("member-") else 0
    return MEMBER_COLOURS[index % len(MEMBER_COLOURS)]


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_panel(axis: Any, probs: np.ndarray, labels: np.ndarray, method: str, title: str,
                      legend: bool = False, n_bins: int = 15) -> None:
    """Accuracy per confidence bin (``n_bins`` equal-width bins, as ECE is computed) against the diagonal."""
    from .metrics import reliability_bins

    bins = reliability_bins(probs, labels, n_bins)
    edges = np.asarray(bins["edges"])
    axis.bar(edges[:-1], np.nan_to_num(np.asarray(bins["accuracy"])), width=np.diff(edges), align="edge",
             color=colour(method), edgecolor="black", linewidth=0.5, label="accuracy")
    axis.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    if legend:
        axis.legend(loc="upper left", fontsize=8)


def save(fig: Any, path: Path, dpi: int = 100, whole: bool = False) -> Path:
    """Save and close a figure; ``whole`` writes it beside ``path`` and renames it into place (a
    report folder is already written whole, so its figures need not be)."""
    from .outputs import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if whole:
        with atomic_file(path, "plot") as temp:
            fig.savefig(temp, dpi=dpi)
    else:
        fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def text_table(head: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """Rows of cells under a header: a Markdown table, or columns padded to their widest cell."""
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [head, *rows])


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
SHIFT_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def effective_robustness_figure(path: Path, clean: dict[str, float], shifts: dict[str, dict[str, float]],
                                line: tuple[str, str] = ("teacher", "supervised"), names: dict[str, str] | None = None,
                                title: str = "effective robustness", whole: bool = False) -> Path:
    """Accuracy in distribution (x, ``clean[method]``) against accuracy under each shift (y,
    ``shifts[shift][method]``): a marker per method, a colour per shift, the y = x line and, per
    shift, the dashed line through the two ``line`` methods' points (the zero-shot teacher's and the
    supervised probe's). A method above that line keeps more of its accuracy under the shift than
    trading the teacher for the supervised probe does: effective robustness (Taori et al. 2020)."""
    from .metrics import baseline_line

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
    return save(fig, path, whole=whole)
