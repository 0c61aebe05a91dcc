"""The zero-shot teacher's maths on plain arrays: logits, probabilities, pseudo-labels and confidences.

Extraction writes the teacher's outputs with these; training and evaluation recompute its
probabilities with them. ``TeacherScale`` owns the teacher's logit scale and temperature: the
zero-shot head's logits, TransCLIP's starting predictions and the probe's zero-shot
initialisation all take them from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .numeric import softmax


def teacher_logits(emb: np.ndarray, head: np.ndarray, scale: float, temperature: float = 1.0) -> np.ndarray:
    """Zero-shot logits ``s * z W_t^T / T`` for unit embeddings z (any leading shape)."""
    return (emb.astype(np.float32) @ head.T.astype(np.float32)) * np.float32(scale / temperature)


def teacher_outputs(
    emb: np.ndarray, head: np.ndarray, scale: float, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-label and confidence: argmax and max of the teacher's softmax."""
    probs = softmax(teacher_logits(emb, head, scale, temperature))
    return probs.argmax(axis=-1).astype(np.int16), probs.max(axis=-1).astype(np.float32)


def head_sha256(head: np.ndarray) -> str:
    """The sha256 of a zero-shot head's float32 values: its C x D little-endian bytes, row by row."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(head, "<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class TeacherScale:
    """The teacher's logit scale s (the model's, 100 for pretrained CLIP) and softmax temperature T:
    its logits are ``(s / T) z W_t^T``."""

    logit_scale: float
    temperature: float = 1.0

    @property
    def factor(self) -> float:
        """s / T: what multiplies the cosine between an embedding and a class's head row."""
        return self.logit_scale / self.temperature

    def logits(self, emb: np.ndarray, head: np.ndarray) -> np.ndarray:
        """The teacher's logits (float32)."""
        return teacher_logits(emb, head, self.logit_scale, self.temperature)

    def probabilities(self, emb: np.ndarray, head: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """The teacher's probabilities."""
        return softmax(self.logits(emb, head), dtype)

    def outputs(self, emb: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-label and confidence."""
        return teacher_outputs(emb, head, self.logit_scale, self.temperature)

    def probe_weight(self, head: np.ndarray) -> np.ndarray:
        """A linear probe's weight that gives exactly the teacher's logits (bias 0): ``(s / T) W_t``."""
        return np.asarray(head, np.float32) * np.float32(self.factor)
