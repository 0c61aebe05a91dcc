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
