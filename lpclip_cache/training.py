"""Stage two: fit the linear probe from cached pairs only (no image, no CLIP forward).

Each step takes, for each image in the batch, one cached weak view (the teacher side: its
pseudo-label and confidence) and one cached strong view (the student side: its embedding), and
minimises the confidence-weighted cross-entropy::

    L = sum_i w_i * CE(A z_strong_i + b, y_hat_i) / sum_i w_i,   w_i = c_i * [c_i >= tau]

Variants (for ablations): unit weights, soft targets (cross-entropy to the teacher's whole
distribution), a confidence threshold tau, weak views on the student side (no consistency), fewer
cached views, random instead of zero-shot initialisation, and ensembles of M probes trained in
one pass on different view samples. ``supervised`` is the same probe on true labels with unit
weights, fed the weak views (a linear-probe reference, not the method); it is the only path that
reads the store's ``labels`` array. A store without strong views trains the student on the
teacher-side views; without weak views the teacher side is the clean view. ``sides`` makes that
choice once; run.json's ``pairs`` and ``loss`` are both written from the views the pairs were
actually drawn from.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import TrainConfig, check_choices
from .errors import InputError, Interrupted, NothingKept, StoreError
from .progress import Progress

if TYPE_CHECKING:
    from .zeroshot import TeacherScale

# An epoch in which the confidence threshold keeps fewer than this fraction of the samples is
# recorded in run.json's warnings and said on stderr; one that keeps none stops training.
MIN_KEPT_FRACTION = 0.05


def weighted_cross_entropy(logits: Any, targets: Any, weights: Any) -> Any:
    """``sum_i w_i CE(logits_i, y_i) / sum_i w_i`` (torch tensors); zero when every weight is zero."""
    import torch

    per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    total = weights.sum()
    return (weights * per_sample).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def check_config(config: TrainConfig) -> None:
    """Reject impossible options before anything is read."""
    check_choices(config)
    if config.epochs < 1 or config.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InputError(f"--lr must be a positive finite number, got {config.lr}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a finite number of 0 or more, got {config.weight_decay}")
    if config.method == "supervised" and config.threshold:
        raise InputError(f"--threshold {config.threshold} applies to the teacher's pseudo-labels: --method "
                         "supervised trains on true labels and would ignore it; drop the option")
    if not 0.0 <= config.threshold < 1.0:
        raise InputError(f"--threshold must be in [0, 1), got {config.threshold}")
    if not 0.0 <= config.holdout < 1.0:
        raise InputError(f"--holdout must be in [0, 1), got {config.holdout}")
    if config.ensemble < 1 or (config.max_views is not None and config.max_views < 1):
        raise InputError("--ensemble and --max-views must be at least 1")


def soft_cross_entropy(logits: Any, target_probs: Any, weights: Any) -> Any:
    """``sum_i w_i H(p_i, softmax(logits_i)) / sum_i w_i``: cross-entropy to a whole distribution."""
    import torch

    per_sample = -(target_probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    total = weights.sum()
    return (weights * per_sample).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


# How a step lays out its work (measured on one core, docs/performance.md): up to a few hundred
# classes the logits are laid out classes x rows, in blocks of 512 rows (1 MiB of fp32 embeddings,
# gathered, converted and used by both products while still cached), which takes about a fifth
# less time in the two products than whole batches rows x classes; beyond that the softmax across
# the rows' stride costs more than that gains, and the products prefer blocks of 2048 rows.
CLASSES_MAJOR_UP_TO = 256
BLOCK_ROWS = {True: 512, False: 2048}  # by classes_major


def probe_step(
    weight: Any, bias: Any, source: Any, index: Any, targets: Any, weights: Any, soft: bool, block: int | None = None
) -> float:
    """Set ``weight.grad`` and ``bias.grad`` for one batch and return the loss (mean over members).

    Member m's batch is rows ``index[m]`` of ``source`` (embeddings, fp16 or fp32). The gradient is
    written in closed form, d loss / d logits = w_i (p_i - t_i) / sum_j w_j (t the one-hot or soft
    target), which is what autograd of ``weighted_cross_entropy`` or ``soft_cross_entropy`` gives,
    at a fraction of its cost on the CPU. The batch goes through in blocks of ``block`` rows, each
    gathered, converted to fp32, multiplied forward and back while it is still in cache, and its
    gradient accumulated; the result equals the whole-batch product up to summation order. The
    tensors may live on any device; off the CPU the default block is the whole batch (one product
    each way: a GPU gains nothing from cache-sized blocks).
    """
    import torch

    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        members, classes, dim = weight.shape
        classes_major = classes <= CLASSES_MAJOR_UP_TO
        axis = 0 if classes_major else 1  # the class axis of a block's logits
        rows = index.shape[1]
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias)
        device = source.device
        block = max(1, min(block or (BLOCK_ROWS[classes_major] if device.type == "cpu" else rows), rows))
        gathered = torch.empty(block, dim, dtype=source.dtype, device=device)
        convert = source.dtype != torch.float32
        converted = torch.empty(block, dim, device=device) if convert else gathered
        # per row: the log-probability of its target (hard) or its cross-entropy (soft), shaped
        # like one row of the block's logits along the class axis
        per_row = torch.empty(rows, device=device)
        row_shape = (1, -1) if classes_major else (-1, 1)
        total = 0.0
        for m in range(members):
            norm = weights[m].sum().clamp_min(tiny)
            scaled = weights[m] / (norm * members)  # d loss / d logits = scaled_i (p_i - t_i)
            if soft:
                target_blocks = (targets[m].t() if classes_major else targets[m]).split(block, dim=1 - axis)
            else:
                target_blocks = targets[m].view(row_shape).split(block, dim=1 - axis)
            blocks = zip(index[m].split(block), target_blocks, scaled.view(row_shape).split(block, dim=1 - axis),
                         per_row.view(row_shape).split(block, dim=1 - axis))
            for rows_of, target, w, out in blocks:
                count = rows_of.shape[0]
                x = converted[:count]
                torch.index_select(source, 0, rows_of, out=gathered[:count])
                if convert:
                    x.copy_(gathered[:count])
                if classes_major:  # logits as classes x rows
                    logits = torch.addmm(bias[m, :, None], weight[m], x.t())
                else:
                    logits = torch.addmm(bias[m], x, weight[m].t())
                if soft:
                    grad = torch.log_softmax(logits, dim=axis)
                    torch.sum(target * grad, dim=axis, keepdim=True, out=out)
                    grad.exp_().sub_(target).mul_(w)
                else:
                    grad = torch.softmax(logits, dim=axis)  # one pass fewer than log_softmax then exp
                    torch.gather(grad, axis, target, out=out)
                    grad.mul_(w).scatter_add_(axis, target, -w)
                grad_weight[m].addmm_(grad if classes_major else grad.t(), x)
                grad_bias[m] += grad.sum(dim=1 - axis)
            if not soft:
                per_row.clamp_min_(tiny).log_()
            total -= float(weights[m] @ per_row / norm)
    weight.grad, bias.grad = grad_weight, grad_bias
    return total / members


def sides(store: Any, config: TrainConfig) -> tuple[str, str]:
    """Which views feed the teacher and the student for a configuration."""
    teacher = "weak" if store.layout.weak_views else "clean"
    if config.method == "supervised" or config.student == "weak" or not store.layout.strong_views:
        return teacher, teacher
    return teacher, "strong"


@dataclass
class StudentRows:
    """The student side of a buffer, gathered when a step needs it: member m's sample i is row
    ``index[m, i]`` of ``source`` (the buffer's student embeddings, all views, as stored)."""

    source: Any
    index: Any


def member_batches(
    buffer: Any, config: TrainConfig, rng: np.random.Generator, head: np.ndarray, teacher: TeacherScale
) -> tuple[StudentRows, Any, Any]:
    """Per ensemble member: student rows, targets and weights for every row of a buffer (torch)."""
    import torch

    n = len(buffer)
    name = f"{buffer.student}/emb"
    index = torch.empty(config.ensemble, n, dtype=torch.int64)
    targets, weights = [], []
    for member in range(config.ensemble):
        teacher_pick = rng.integers(0, buffer.teacher_views, n)
        student_pick = rng.integers(0, buffer.student_views, n)
        index[member] = torch.from_numpy(buffer.positions(name, student_pick))
        if config.method == "supervised":
            targets.append(buffer.truth())
            weights.append(np.ones(n, np.float32))
            continue
        conf = buffer.take(f"{buffer.teacher}/conf", teacher_pick).astype(np.float32)
        weight = conf if config.weighting == "confidence" else np.ones(n, np.float32)
        weights.append(np.where(conf >= config.threshold, weight, 0.0).astype(np.float32))
        if config.targets == "soft":
            emb = buffer.take(f"{buffer.teacher}/emb", teacher_pick)
            targets.append(teacher.probabilities(emb, head))
        else:
            targets.append(buffer.take(f"{buffer.teacher}/label", teacher_pick).astype(np.int64))
    rows = StudentRows(torch.from_numpy(np.ascontiguousarray(buffer.flat(name))), index)
    return rows, torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(weights))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one probe (or an ensemble) from a store and save it as a run; return a summary."""
    import torch

    from .distributed import pick_device
    from .outputs import local_folder, prepare_output, refuse_output_inside
    from .runs import is_run, save_run
    from .sampling import MEMORY_BUDGET_BYTES, PairSource, holdout_shards
    from .storage import is_url
    from .store import FeatureStore

    check_config(config)
    device = pick_device(config.device)
    refuse_output_inside(config.out, [config.store])
    out = local_folder(config.out, "--out", "run")
    store = FeatureStore(config.store)
    prepare_output(out, config.overwrite, is_run, "run", remove=False)  # replaced once the new run is whole
    cached = max(1 if side == "clean" else store.layout.views(side) for side in sides(store, config))
    if config.max_views is not None and config.max_views > cached:
        raise InputError(f"--max-views {config.max_views}, but store '{store.path}' caches at most {cached} view(s) "
                         f"of the kinds this run reads: pass at most {cached}, or omit it to use them all")
    held_out = holdout_shards(store.layout.n_shards, config.holdout, config.seed)
    source = PairSource(
        store, *sides(store, config), config.max_views,
        need_teacher_emb=config.targets == "soft" and config.method == "lpclip",
        need_truth=config.method == "supervised",
        memory_budget=MEMORY_BUDGET_BYTES if config.memory_budget is None else config.memory_budget,
        excluded_shards=held_out,
    )
    head = store.head()
    n_classes, dim = head.shape
    teacher = store.teacher_scale
    n = source.valid_count()
    if config.method == "supervised":
        truth = store.labels()[store.read("valid")]
        if (truth < 0).any():
            raise StoreError(
                f"store '{store.path}' has samples without true labels: --method supervised needs every label"
            )

    members = config.ensemble
    torch.manual_seed(config.seed)
    weight = torch.empty(members, n_classes, dim)
    bias = torch.zeros(members, n_classes)
    for m in range(members):
        if config.init == "zeroshot":
            weight[m] = torch.from_numpy(teacher.probe_weight(head))  # the teacher's logits, temperature included
        else:
            layer = torch.nn.Linear(dim, n_classes)
            weight[m], bias[m] = layer.weight.detach(), layer.bias.detach()
    weight, bias = weight.to(device), bias.to(device)
    try:  # the fused kernel (CPU or CUDA) takes about a third of the time of the per-tensor loop
        optimizer = torch.optim.AdamW([weight, bias], lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW([weight, bias], lr=config.lr, weight_decay=config.weight_decay)
    # label-free progress signal: agreement with the teacher's clean-view pseudo-labels, on the
    # held-out shards when there are any (model selection), else on the first rows
    spans = [store.spans()[s] for s in sorted(held_out)] or [(0, min(store.layout.n, 4096))]
    kept = np.concatenate([store.read_rows("valid", a, b) for a, b in spans])
    monitor_emb = np.concatenate([store.read_rows("clean/emb", a, b) for a, b in spans])[kept]
    monitor = torch.from_numpy(monitor_emb.astype(np.float32)).to(device)
    monitor_label = torch.from_numpy(
        np.concatenate([store.read_rows("clean/label", a, b) for a, b in spans])[kept].astype(np.int64)
    ).to(device)
    resident: dict[int, Any] = {}  # a store held whole stays on the device across epochs

    soft = config.targets == "soft" and config.method == "lpclip"
    progress = Progress(config.epochs * n, f"train {out.name}", "samples", enabled=config.progress)
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    epoch = 0
    # Softmax over many classes under the zero-shot head's scale (about 100) leaves most
    # probabilities, and so most gradient entries, as denormal floats, which slow the CPU's GEMM
    # by half; they are flushed to zero while training (their contribution is below 1e-38), and
    # the caller's setting is given back after.
    flushed_before = denormals_flushed()
    flushing = torch.set_flush_denormal(True)  # whether the CPU can, not the setting it had
    try:
        for epoch in range(config.epochs):
            rng = np.random.default_rng([config.seed, epoch, 1])
            total_loss, seen, kept, offered = 0.0, 0, 0, 0
            for buffer in source.epoch(config.seed, epoch):
                student, targets, weights = member_batches(buffer, config, rng, head, teacher)
                kept += int((weights > 0).sum())
                offered += int(weights.numel())
                rows_source = on_device(student.source, device, resident, keep=not source.streaming)
                index, targets, weights = student.index.to(device), targets.to(device), weights.to(device)
                rows = index.shape[1]
                for start in range(0, rows, config.batch_size):
                    batch = slice(start, start + config.batch_size)
                    loss = probe_step(weight, bias, rows_source, index[:, batch], targets[:, batch],
                                      weights[:, batch], soft, config.block_rows)
                    optimizer.step()
                    size = min(config.batch_size, rows - start)
                    total_loss += loss * size
                    seen += size
                    progress.update(size)
            with torch.no_grad():
                # one probe predicts its largest logit; an ensemble, its largest mean probability
                if members == 1:
                    predicted = torch.addmm(bias[0], monitor, weight[0].t()).argmax(1)
                else:
                    logits = monitor @ weight.transpose(1, 2) + bias[:, None, :]
                    predicted = torch.softmax(logits, dim=-1).mean(0).argmax(1)
                agreement = float((predicted == monitor_label).float().mean()) if monitor.shape[0] else 0.0
            if kept == 0:
                raise NothingKept(f"--threshold {config.threshold} keeps no sample in epoch {epoch + 1} (the teacher's "
                                 f"confidence never reaches it on the views drawn): lower it; 'lpclip-cache analyze "
                                 f"views --store {store.path}' shows the confidences; run '{out}' was not written")
            if not (torch.isfinite(weight).all() and torch.isfinite(bias).all() and math.isfinite(total_loss)):
                raise InputError(f"training diverged in epoch {epoch + 1} (loss {total_loss / max(seen, 1):.4g}, the "
                                 f"probe's weights are no longer finite): lower --lr (now {config.lr}); run '{out}' "
                                 "was not written")
            curve.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "teacher_agreement": agreement,
                          "kept": round(kept / max(offered, 1), 6), "kept_samples": kept // members})
    except KeyboardInterrupt as exc:  # nothing is written before the end: say so, and how to finish
        raise Interrupted.of(exc, f"training stopped in epoch {epoch + 1} of {config.epochs}; run '{out}' was not "
                             "written (any run already there is untouched): run the same command again") from None
    finally:
        if flushing:
            torch.set_flush_denormal(flushed_before)
    elapsed = time.perf_counter() - started
    progress.close()

    warnings = [f"epoch {c['epoch']}: --threshold {config.threshold} kept {c['kept']:.1%} of the samples (fewer than "
                f"{MIN_KEPT_FRACTION:.0%}): the probe learned from few pseudo-labels" for c in curve
                if c["kept"] < MIN_KEPT_FRACTION]
    for line in warnings[:3]:
        sys.stderr.write(f"warning: {line}\n")
    record = asdict(config)
    record.pop("memory_budget")
    info = {
        "config": record,
        "store": {"path": config.store if is_url(config.store) else str(Path(config.store).resolve()),
                  "cache_key": store.cache_key},
        "model": store.manifest["model"],
        "classnames": store.classnames,
        "teacher": {"logit_scale": teacher.logit_scale, "temperature": teacher.temperature},
        "pairs": {  # the sides the pair source actually fed, which the loss text names too
            "samples": n,
            "teacher_side": source.teacher_side,
            "teacher_views": source.teacher_views,
            "student_side": source.student_side,
            "student_views": source.student_views,
            "streamed": source.streaming,
            "held_out_shards": sorted(held_out),
        },
        "ensemble": members,
        "device": str(device),
        "warnings": warnings,
        "loss": loss_description(config, source.teacher_side, source.student_side),
        "curve": curve,
        "seconds": elapsed,
        "samples_per_s": config.epochs * n / max(elapsed, 1e-9),
    }
    final_weight = weight.detach().cpu().numpy()
    final_bias = bias.detach().cpu().numpy()
    if members == 1:
        final_weight, final_bias = final_weight[0], final_bias[0]
    prepare_output(out, config.overwrite, is_run, "run", remove=False)  # still refused if it is not ours
    save_run(out, final_weight, final_bias, head, info, replace=config.overwrite)  # an old run goes only now
    return {
        "run": str(out),
        "method": config.method,
        "epochs": config.epochs,
        "samples": n,
        "ensemble": members,
        "streamed": source.streaming,
        "final_loss": curve[-1]["loss"],
        "teacher_agreement": curve[-1]["teacher_agreement"],
        "kept": curve[-1]["kept"],
        "warnings": warnings,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(info["samples_per_s"], 1),
    }


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (``torch.set_flush_denormal`` is per thread).

    torch has a setter only, which returns whether the CPU supports flushing, not the setting it
    replaced; so the setting is read from its effect: the denormal 1e-39 times one is zero
    exactly when it is on."""
    import torch

    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


def on_device(rows: Any, device: Any, resident: dict[int, Any], keep: bool) -> Any:
    """The student rows on the training device: on the CPU as they are; on a GPU copied there,
    and kept there across epochs when the store is held whole (``keep``: the same buffer comes
    back every epoch), else copied buffer by buffer as the store streams."""
    if rows.device == device:
        return rows
    if keep and rows.data_ptr() in resident:
        return resident[rows.data_ptr()]
    moved = rows.to(device, non_blocking=True)
    if keep:
        resident.clear()
        resident[rows.data_ptr()] = moved
    return moved


def loss_description(config: TrainConfig, teacher_side: str, student_side: str) -> str:
    """The loss a configuration minimises, in words, naming the views each side was fed (``clean``,
    ``weak`` or ``strong``, as ``sides`` chose them for the store)."""
    student = f"g(z_{student_side}_i)"
    if config.method == "supervised":
        return f"mean_i CE({student}, true label_i)"
    weight = "c_i" if config.weighting == "confidence" else "1"
    if config.threshold:
        weight += f" * [c_i >= {config.threshold}]"
    teacher = f"p_teacher(z_{teacher_side}_i)"
    target = f"argmax {teacher}" if config.targets == "hard" else teacher
    confidence = f", c_i = max {teacher}" if "c_i" in weight else ""
    return f"sum_i w_i CE({student}, {target}) / sum_i w_i, w_i = {weight}{confidence}"
