"""The zero-shot teacher's maths on plain arrays: logits, softmax, pseudo-labels and confidences.

Extraction writes the teacher's outputs with these; training and evaluation recompute its
probabilities with them.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Row-wise softmax, stable for large logits (float64 keeps tiny probabilities for NLL)."""
    shifted = logits.astype(dtype) - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def teacher_logits(emb: np.ndarray, head: np.ndarray, scale: float, temperature: float = 1.0) -> np.ndarray:
    """Zero-shot logits ``s * z W_t^T / T`` for unit embeddings z (any leading shape)."""
    return (emb.astype(np.float32) @ head.T.astype(np.float32)) * np.float32(scale / temperature)


def teacher_outputs(
    emb: np.ndarray, head: np.ndarray, scale: float, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-label and confidence: argmax and max of the teacher's softmax."""
    probs = softmax(teacher_logits(emb, head, scale, temperature))
    return probs.argmax(axis=-1).astype(np.int16), probs.max(axis=-1).astype(np.float32)
