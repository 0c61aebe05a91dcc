"""lpclip-cache: LP-CLIP (label-free linear probes on CLIP) made fast by a feature cache.

Stage one (``extract``) runs CLIP once over clean, weak and strong views and stores embeddings
and teacher pseudo-labels in Zarr; stage two (``train``) fits the probe from the cache alone;
``evaluate`` and ``analyze`` measure accuracy, calibration, OOD detection and latent structure;
``run`` carries out a whole recipe. These five are the Python API (``lpclip_cache.api``, see
docs/api.md). Heavy libraries are imported when a function runs, not here.
"""

__version__ = "0.1.0"

from .api import analyze, evaluate, extract, run, train  # noqa: E402  (after __version__, which api reads)

__all__ = ["__version__", "analyze", "evaluate", "extract", "run", "train"]
