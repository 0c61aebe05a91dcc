"""Stage two: fit the linear probe from cached pairs only (no image, no CLIP forward).

Each step takes, for each image in the batch, one cached weak view (the teacher side: its
pseudo-label and confidence) and one cached strong view (the student side: its embedding), and
minimises the confidence-weighted cross-entropy::

    L = sum_i c_i * CE(A z_strong_i + b, y_hat_i) / sum_i c_i

``supervised`` is the same probe on true labels with unit weights, fed the weak views (a
linear-probe reference trained the usual way, not the method). A store without strong views
trains the student on weak views; without weak views the teacher side is the clean view.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, StoreError
from .progress import Progress

METHODS = ("lpclip", "supervised")


@dataclass
class TrainConfig:
    """Options of ``train``; all of them are recorded in run.json."""

    store: str
    out: str
    method: str = "lpclip"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    init: str = "zeroshot"
    overwrite: bool = False
    progress: bool = True


def weighted_cross_entropy(logits: Any, targets: Any, weights: Any) -> Any:
    """``sum_i w_i CE(logits_i, y_i) / sum_i w_i`` (torch tensors); zero when every weight is zero."""
    import torch

    per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    total = weights.sum()
    return (weights * per_sample).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def check_config(config: TrainConfig) -> None:
    """Reject impossible options before anything is read."""
    if config.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got '{config.method}'")
    if config.init not in ("zeroshot", "random"):
        raise InputError(f"--init must be zeroshot or random, got '{config.init}'")
    if config.epochs < 1 or config.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if not config.lr > 0 or config.weight_decay < 0:
        raise InputError("--lr must be positive and --weight-decay non-negative")


@dataclass
class TrainingPairs:
    """The cached arrays one training run samples from, held in memory."""

    teacher_label: np.ndarray  # N x Kt int
    teacher_conf: np.ndarray  # N x Kt float32
    student_emb: np.ndarray  # N x Ks x D float16
    clean_emb: np.ndarray  # N x D float16
    clean_label: np.ndarray  # N teacher pseudo-label of the clean view
    teacher_side: str
    student_side: str


def load_pairs(store: Any, method: str) -> TrainingPairs:
    """Read the teacher side and the student side of a store (the ``labels`` array is not read).

    LP-CLIP's student reads strong views; the supervised reference reads the teacher's views.
    """
    teacher_side = "weak" if store.layout.weak_views else "clean"
    student_side = "strong" if store.layout.strong_views and method == "lpclip" else teacher_side
    valid = store.read("valid")

    def per_view(name: str, side: str) -> np.ndarray:
        data = store.read(f"{side}/{name}")
        return data[:, None] if side == "clean" else data

    pairs = TrainingPairs(
        teacher_label=per_view("label", teacher_side)[valid].astype(np.int64),
        teacher_conf=per_view("conf", teacher_side)[valid].astype(np.float32),
        student_emb=per_view("emb", student_side)[valid],
        clean_emb=store.read("clean/emb")[valid],
        clean_label=store.read("clean/label")[valid].astype(np.int64),
        teacher_side=teacher_side,
        student_side=student_side,
    )
    if not np.isfinite(pairs.student_emb).all() or not np.isfinite(pairs.teacher_conf).all():
        raise StoreError(f"store '{store.path}' holds NaN or infinite values: extract it again")
    return pairs


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one probe from a store and save it as a run; return a summary."""
    import torch

    from .probe import is_run, save_run
    from .store import FeatureStore, is_url, prepare_output

    check_config(config)
    out = Path(config.out)
    store = FeatureStore(config.store)
    prepare_output(out, config.overwrite, is_run, "run")
    pairs = load_pairs(store, config.method)
    n, student_views, dim = pairs.student_emb.shape
    teacher_views = pairs.teacher_label.shape[1]
    head = store.head()
    n_classes = head.shape[0]
    if config.method == "supervised":
        truth = store.labels()[store.read("valid")]
        if (truth < 0).any():
            raise StoreError(
                f"store '{store.path}' has samples without true labels: --method supervised needs every label"
            )
        targets_all = torch.from_numpy(truth.astype(np.int64))

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    probe = torch.nn.Linear(dim, n_classes)
    if config.init == "zeroshot":
        with torch.no_grad():
            probe.weight.copy_(torch.from_numpy(head) * store.logit_scale)
            probe.bias.zero_()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    t_label = torch.from_numpy(pairs.teacher_label)
    t_conf = torch.from_numpy(pairs.teacher_conf)
    s_emb = torch.from_numpy(pairs.student_emb)
    clean = torch.from_numpy(pairs.clean_emb.astype(np.float32))
    clean_label = torch.from_numpy(pairs.clean_label)

    steps_per_epoch = -(-n // config.batch_size)
    progress = Progress(config.epochs * n, f"train {out.name}", "samples", enabled=config.progress)
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        teacher_pick = torch.randint(teacher_views, (n,), generator=generator)
        student_pick = torch.randint(student_views, (n,), generator=generator)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            rows = order[step * config.batch_size : (step + 1) * config.batch_size]
            inputs = s_emb[rows, student_pick[rows]].float()
            if config.method == "supervised":
                targets, weights = targets_all[rows], torch.ones(rows.numel())
            else:
                targets = t_label[rows, teacher_pick[rows]]
                weights = t_conf[rows, teacher_pick[rows]]
            loss = weighted_cross_entropy(probe(inputs), targets, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * rows.numel()
            progress.update(rows.numel())
        with torch.no_grad():
            agreement = float((probe(clean).argmax(1) == clean_label).float().mean())
        curve.append({"epoch": epoch + 1, "loss": total_loss / n, "teacher_agreement": agreement})
    elapsed = time.perf_counter() - started
    progress.close()

    info = {
        "config": asdict(config),
        "store": {"path": config.store if is_url(config.store) else str(Path(config.store).resolve()),
                  "cache_key": store.cache_key},
        "model": store.manifest["model"],
        "classnames": store.classnames,
        "teacher": {"logit_scale": store.logit_scale, "temperature": store.temperature},
        "pairs": {
            "samples": n,
            "teacher_side": pairs.teacher_side,
            "teacher_views": teacher_views,
            "student_side": pairs.student_side,
            "student_views": student_views,
        },
        "loss": "sum_i c_i CE(g(z_i), y_i) / sum_i c_i" if config.method == "lpclip" else "mean CE on true labels",
        "curve": curve,
        "seconds": elapsed,
        "samples_per_s": config.epochs * n / max(elapsed, 1e-9),
    }
    save_run(out, probe.weight.detach().numpy(), probe.bias.detach().numpy(), head, info)
    return {
        "run": str(out),
        "method": config.method,
        "epochs": config.epochs,
        "samples": n,
        "final_loss": curve[-1]["loss"],
        "teacher_agreement": curve[-1]["teacher_agreement"],
        "seconds": round(elapsed, 3),
        "samples_per_s": round(info["samples_per_s"], 1),
    }
