"""Every figure the project draws, one module per family, each figure a function of plain data
(arrays and dicts) and the path it writes:

- ``calibration``: reliability diagrams and confidence histograms (the report's and the demo's);
- ``curves``: risk-coverage and ROC curves, and the curves themselves;
- ``shift``: error, ECE and accuracy under shift (against severity; the effective-robustness plot);
- ``latent``: the 2-D projection of ``analyze latent projection``.

This module holds what they share (a colour per method, the demo's method names, matplotlib with
the file-only backend, saving a figure) and the text tables printed beside them. Matplotlib is
imported in this package alone, and only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the teacher grey; the method the report calls probe and the demo lpclip blue; members cycle
COLOURS = {"teacher": "#7f7f7f", "probe": "#1f77b4", "lpclip": "#1f77b4", "ensemble": "#9467bd",
           "supervised": "#2ca02c"}
MEMBER_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
# how the demo's figures name its methods
DEMO_LABELS = {"teacher": "zero-shot teacher", "lpclip": "LP-CLIP (no labels)", "ensemble": "LP-CLIP ensemble",
               "supervised": "supervised probe", "transclip": "TransCLIP (zero-shot)",
               "transclip-lpclip": "TransCLIP atop LP-CLIP"}


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


def save(fig: Any, path: str | Path, dpi: int = 100, whole: bool = False,
         metadata: dict[str, str] | None = None) -> None:
    """Save (with PNG ``metadata`` beside matplotlib's own) and close a figure; ``whole`` writes it
    beside ``path`` (a local path or a URL) and renames or uploads it into place in one step (a
    report folder is already written whole, so its figures need not be)."""
    from ..outputs import atomic_file

    if whole:
        with atomic_file(path, "plot") as temp:
            fig.savefig(temp, dpi=dpi, metadata=metadata)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, metadata=metadata)
    pyplot().close(fig)


def text_table(head: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """Rows of cells under a header: a Markdown table, or columns padded to their widest cell."""
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                         + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [head, *rows])
