"""The per-store reliability figure with margins fixed in inches against the same figure laid out
by matplotlib's ``tight_layout``, taking turns, fastest of ``--repeats``.

    python benchmarks/figure_layout.py [--repeats 5] [--methods 4]

``evaluate``'s report folder draws one reliability figure per store (the demo's recipe: 19 stores
a report, 3 reports a seed), so its layout is paid dozens of times a run. ``tight_layout`` measures
every label's extent on a renderer before the figure is drawn again to be saved; fixed margins
skip that measuring. Lines: ``layout=NAME ms=M`` and ``ratio fixed/tight=R``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def tight(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray, ece: dict[str, float]) -> None:
    """The figure as it was laid out before: ``tight_layout``."""
    from lpclip_cache.figures import pyplot, save
    from lpclip_cache.figures.calibration import reliability_panel

    fig, axes = pyplot().subplots(1, len(probs), figsize=(3.6 * len(probs), 3.6), squeeze=False)
    for col, (method, p) in enumerate(probs.items()):
        reliability_panel(axes[0][col], p, labels, method, f"{method} (ECE {ece[method]:.3f})")
    fig.suptitle("test.zarr")
    fig.tight_layout()
    save(fig, path, dpi=80)


def fixed(path: Path, probs: dict[str, np.ndarray], labels: np.ndarray, ece: dict[str, float]) -> None:
    """The shipped figure (margins fixed in inches)."""
    from lpclip_cache.figures.calibration import reliability_figure

    reliability_figure(path, probs, labels, ece, "test.zarr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", type=int, default=4, help="panels per figure (the demo's LP-CLIP report: 4)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    probs = {f"m{i}": rng.dirichlet(np.ones(10), size=200) for i in range(args.methods)}
    labels = rng.integers(0, 10, 200)
    ece = {method: 0.1 for method in probs}
    best = {"tight": float("inf"), "fixed": float("inf")}
    with tempfile.TemporaryDirectory() as folder:
        for draw in (tight, fixed):  # a first figure of each, untimed: imports and font cache
            draw(Path(folder) / "warm.png", probs, labels, ece)
        for _ in range(args.repeats):
            for name, draw in (("tight", tight), ("fixed", fixed)):
                start = time.perf_counter()
                draw(Path(folder) / f"{name}.png", probs, labels, ece)
                best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"layout={name} ms={1000 * seconds:.1f}")
    print(f"ratio fixed/tight={best['fixed'] / best['tight']:.3f}")


if __name__ == "__main__":
    main()
