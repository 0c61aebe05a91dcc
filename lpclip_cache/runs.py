"""A run: a trained probe (or ensemble) with the teacher it was distilled from, read and written.

A run directory holds ``probe.safetensors`` (``weight`` C x D and ``bias`` C, or M x C x D and
M x C for an ensemble of M probes, and the teacher's ``head`` C x D) and ``run.json``
(configuration, teacher scale and temperature, class names, the store it was trained on, and
the training curve).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .numeric import softmax
from .zeroshot import TeacherScale

RUN_FORMAT_VERSION = 1


@dataclass
class Run:
    """A trained probe with the teacher it was distilled from."""

    path: Path
    weight: np.ndarray
    bias: np.ndarray
    head: np.ndarray
    info: dict[str, Any]

    @property
    def logit_scale(self) -> float:
        """The teacher's logit scale."""
        return float(self.info["teacher"]["logit_scale"])

    @property
    def temperature(self) -> float:
        """The teacher's temperature."""
        return float(self.info["teacher"]["temperature"])

    @property
    def teacher_scale(self) -> TeacherScale:
        """The teacher's scale and temperature, the one owner of its logits' factor."""
        return TeacherScale(self.logit_scale, self.temperature)

    @property
    def classnames(self) -> list[str]:
        """Class names in output order."""
        return list(self.info["classnames"])

    @property
    def members(self) -> int:
        """How many probes the run holds (an ensemble has more than one)."""
        return 1 if self.weight.ndim == 2 else self.weight.shape[0]

    def member_logits(self, emb: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
        """Logits ``A_m z + b_m`` of every member: M x N x C (only the columns of ``classes`` when given)."""
        weight = self.weight.reshape(self.members, *self.weight.shape[-2:])
        bias = self.bias.reshape(self.members, -1)
        if classes is not None:
            weight, bias = weight[:, classes], bias[:, classes]
        return np.matmul(emb.astype(np.float32), weight.transpose(0, 2, 1)) + bias[:, None, :]

    def probe_logits(self, emb: np.ndarray) -> np.ndarray:
        """Student logits ``A z + b`` (an ensemble: the log of its averaged probabilities)."""
        if self.members == 1:
            return self.member_logits(emb)[0]
        return np.log(np.maximum(self.probe_probs(emb), 1e-30))

    def probe_probs(self, emb: np.ndarray) -> np.ndarray:
        """Student probabilities (float64), averaged over the members of an ensemble."""
        return softmax(self.member_logits(emb), np.float64).mean(axis=0)

    def mutual_information(self, emb: np.ndarray) -> np.ndarray:
        """The ensemble's disagreement: H(mean_m p_m) - mean_m H(p_m), per sample (0 for one probe)."""
        from .metrics import mutual_information_score

        return -mutual_information_score(softmax(self.member_logits(emb), np.float64))

    def teacher_probs(self, emb: np.ndarray) -> np.ndarray:
        """Teacher (zero-shot) probabilities with the run's head, scale and temperature (float64)."""
        return self.teacher_scale.probabilities(emb, self.head, np.float64)


def is_run(path: Path) -> bool:
    """True when ``path`` is a run directory written by this project."""
    return (path / "run.json").is_file() and (path / "probe.safetensors").is_file()


def save_run(
    path: Path, weight: np.ndarray, bias: np.ndarray, head: np.ndarray, info: dict[str, Any], replace: bool = False
) -> None:
    """Write a run atomically: into a hidden sibling folder, then renamed into place.

    A run already at ``path`` is replaced only with ``replace`` (``--overwrite``), and only once
    the new one is whole; without it, a run another process put there meanwhile is a StoreError.
    A failed write (a full disk) leaves no folder behind and ``path`` as it was.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    from .outputs import atomic_dir, json_text, rust_io_error

    with atomic_dir(path, "run", replace) as staging:
        tensors = {
            "weight": np.ascontiguousarray(weight, np.float32),
            "bias": np.ascontiguousarray(bias, np.float32),
            "head": np.ascontiguousarray(head, np.float32),
        }
        try:
            save_file(tensors, str(staging / "probe.safetensors"), metadata={"format": "lpclip-cache-probe"})
        except SafetensorError as exc:  # how the Rust writer reports an I/O error, a full disk included
            raise rust_io_error(exc) from exc
        record = {"format_version": RUN_FORMAT_VERSION, **info}
        (staging / "run.json").write_text(json_text(record) + "\n")


def load_run(path: str | Path) -> Run:
    """Read and validate a run directory."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        if not path.exists():
            raise StoreError(f"run '{path}' does not exist: pass the --out folder of 'lpclip-cache train'")
        if not is_run(path):
            raise StoreError(f"'{path}' is not an lpclip-cache run (needs run.json and probe.safetensors)")
        info = json.loads((path / "run.json").read_text())
        tensors = load_file(str(path / "probe.safetensors"))
    except PermissionError as exc:
        raise StoreError(
            f"cannot read run '{path}' ({exc.strerror}): check that you may read it and the files in it"
        ) from exc
    except (ValueError, SafetensorError, OSError) as exc:
        raise StoreError(f"run '{path}' is damaged ({exc}): train it again") from exc
    if not isinstance(info, dict):
        raise StoreError(f"run '{path}' is damaged (run.json holds no object): train it again")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"run '{path}' is damaged (its run.json has no format version lpclip-cache wrote: "
                         f"{version!r}): train it again")
    if version > RUN_FORMAT_VERSION:
        raise StoreError(f"run '{path}' has format version {version}, newer than this lpclip-cache reads "
                         f"({RUN_FORMAT_VERSION}): upgrade lpclip-cache")
    weight, bias, head = tensors.get("weight"), tensors.get("bias"), tensors.get("head")
    if (
        weight is None or bias is None or head is None or weight.ndim not in (2, 3)
        or weight.shape[-2:] != head.shape or bias.shape != weight.shape[:-1]
    ):
        raise StoreError(f"run '{path}' has a probe file with missing or inconsistent tensors: train it again")
    if not all(np.isfinite(t).all() for t in (weight, bias, head)):
        raise StoreError(f"run '{path}' holds NaN or infinite probe weights: train it again from a sound store")
    return Run(path, weight, bias, head, info)
