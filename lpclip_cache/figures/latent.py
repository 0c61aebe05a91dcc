"""Figures of the latent spaces: the 2-D projection of ``analyze latent projection``."""

from __future__ import annotations

import numpy as np

from . import pyplot, save


def projection_figure(path: str, points: dict[str, np.ndarray], panels: list[tuple[str, np.ndarray, str]],
                      metadata: dict[str, str]) -> None:
    """A row per space (``points``: its name -> N x 2 projected rows) and a column per panel
    (``panels``: a title, a value per row that colours it, and the colour map), written whole to
    ``path`` (a local path or a URL) with the PNG ``metadata``."""
    fig, axes = pyplot().subplots(len(points), len(panels), figsize=(4 * len(panels), 4 * len(points)),
                                  squeeze=False)
    for row, (name, xy) in enumerate(points.items()):
        for col, (title, values, cmap) in enumerate(panels):
            axis = axes[row][col]
            axis.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cmap, s=4, alpha=0.7)
            axis.set_title(f"{name} space: {title}")
            axis.set_xticks([])
            axis.set_yticks([])
    fig.tight_layout()
    save(fig, path, whole=True, metadata=metadata)
