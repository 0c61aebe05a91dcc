"""lpclip-cache: LP-CLIP (label-free linear probes on CLIP) made fast by a feature cache.

Stage one (``extract``) runs CLIP once over clean, weak and strong views and stores embeddings
and teacher pseudo-labels in Zarr; stage two (``train``) fits the probe from the cache alone;
``evaluate`` and ``analyze`` measure accuracy, calibration, OOD detection and latent structure.
Heavy libraries are imported by the modules that need them, not here.
"""

__version__ = "0.1.0"
