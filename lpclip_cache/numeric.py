"""Small numerical helpers on plain arrays, shared by the teacher, the probe, runs and TransCLIP."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Row-wise softmax, stable for large logits (float64 keeps tiny probabilities for NLL)."""
    shifted = logits.astype(dtype) - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted
