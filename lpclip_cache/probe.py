"""Linear probes on frozen CLIP embeddings: LP-CLIP's, fitted on cached pairs, and the supervised one.

``LinearProbe`` is LP-CLIP's probe as an estimator in scikit-learn's manner: its parameters in
the constructor (``get_params`` / ``set_params``), ``fit`` on a store's cached pairs
(``sampling.PairSource``), ``predict_proba``, and fitted attributes ending in ``_``. Each step
takes, for each image in the batch, one cached weak view (the teacher side: its pseudo-label and
confidence) and one cached strong view (the student side: its embedding), and minimises the
confidence-weighted cross-entropy::

    L = sum_i w_i * CE(A z_strong_i + b, y_hat_i) / sum_i w_i,   w_i = c_i * [c_i >= tau]

Variants (for ablations): unit weights, soft targets (cross-entropy to the teacher's whole
distribution), a confidence threshold tau, random instead of zero-shot initialisation, and
ensembles of M probes fitted in one pass on different view samples. ``supervised`` is the same
probe on true labels with unit weights (a linear-probe reference, not the method). Which views
feed each side is the pair source's choice (``training.sides``).

``linear_probe`` is the supervised probe of the CLIP paper (L-BFGS logistic regression) that
``analyze views`` and the world's regime fit. Either probe stopping before it converged is a
``ProbeConvergenceWarning``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import Diverged, InputError, NothingKept, StoreError
from .numeric import softmax

if TYPE_CHECKING:
    from .sampling import PairSource
    from .zeroshot import TeacherScale

PROBE_L2 = 1e-4  # linear_probe's L2 penalty on the weights (analyze views and the regime's probe)
PROBE_MAX_ITER = 500  # linear_probe's L-BFGS iterations at most; a probe stopped there is unconverged
MONITOR_ROWS = 4096  # rows whose agreement with the teacher is followed when no shard is held out


class ProbeConvergenceWarning(UserWarning):
    """A probe stopped before it converged: ``linear_probe``'s L-BFGS at its iteration or evaluation
    limit, or a ``LinearProbe`` whose last epoch still lowered its loss by more than its ``tol``."""


def linear_probe(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int,
                 l2: float = PROBE_L2, max_iter: int | None = None) -> np.ndarray:
    """Predictions on ``test`` of a multinomial logistic regression fitted on ``train`` (L-BFGS,
    mean cross-entropy plus ``l2`` times the squared weights; the bias is not penalised).

    This is the supervised probe of the CLIP paper on frozen embeddings (L-BFGS logistic
    regression), with one difference: the paper sweeps the L2 strength over 96 values validated
    on a held-out split, while here it is fixed (``l2``, default ``PROBE_L2``; scikit-learn's
    C = 1 / (2 n l2)). ``analyze views`` fits 1 + 2 K probes per store (K view kinds), and its
    figures compare probes of the same strength with each other, so a sweep would multiply its
    time by the sweep's length for little change in those ratios. L-BFGS stops at ``max_iter``
    iterations (default ``PROBE_MAX_ITER``) or 1.25 times as many evaluations; stopping there
    rather than at its tolerances is a ``ProbeConvergenceWarning``.
    """
    import torch

    max_iter = PROBE_MAX_ITER if max_iter is None else max_iter
    x = torch.from_numpy(np.asarray(train, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[weight]
    limit = optimizer.param_groups[0]["max_eval"]
    if state["n_iter"] >= max_iter or state["func_evals"] >= limit:
        warnings.warn(f"the linear probe's L-BFGS stopped unconverged after {state['n_iter']} iterations "
                      f"({state['func_evals']} evaluations; limits {max_iter} and {limit})",
                      ProbeConvergenceWarning, stacklevel=2)
    with torch.no_grad():
        return (torch.from_numpy(np.asarray(test, np.float64)) @ weight + bias).argmax(1).numpy()


def weighted_cross_entropy(logits: Any, targets: Any, weights: Any) -> Any:
    """``sum_i w_i CE(logits_i, y_i) / sum_i w_i`` (torch tensors); zero when every weight is zero."""
    import torch

    per_sample = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    total = weights.sum()
    return (weights * per_sample).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


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

    with torch.no_grad():
        members = weight.shape[0]
        step = BlockedStep(weight, bias, source, soft, block, index.shape[1])
        total = 0.0
        for m in range(members):
            total -= step.add_member(m, index[m], targets[m], weights[m])
    weight.grad, bias.grad = step.grad_weight, step.grad_bias
    return total / members


class BlockedStep:
    """The work of one ``probe_step``: the probes' tensors, the gradients accumulated, and the
    buffers every block reuses (its rows gathered and converted to fp32, and per row the
    log-probability of its target (hard) or its cross-entropy (soft), shaped like one row of the
    block's logits along the class axis)."""

    def __init__(self, weight: Any, bias: Any, source: Any, soft: bool, block: int | None, rows: int) -> None:
        import torch

        members, classes, dim = weight.shape
        self.weight, self.bias, self.source, self.soft, self.members = weight, bias, source, soft, members
        self.classes_major = classes <= CLASSES_MAJOR_UP_TO  # logits laid out classes x rows
        self.axis = 0 if self.classes_major else 1  # the class axis of a block's logits
        self.row_shape = (1, -1) if self.classes_major else (-1, 1)
        self.grad_weight, self.grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        device = source.device
        default = BLOCK_ROWS[self.classes_major] if device.type == "cpu" else rows
        self.block = max(1, min(block or default, rows))
        self.gathered = torch.empty(self.block, dim, dtype=source.dtype, device=device)
        self.convert = source.dtype != torch.float32
        self.converted = torch.empty(self.block, dim, device=device) if self.convert else self.gathered
        self.per_row = torch.empty(rows, device=device)

    def add_member(self, m: int, index: Any, targets: Any, weights: Any) -> float:
        """Accumulate member ``m``'s gradient over its batch, block by block; return its loss."""
        import torch

        tiny = torch.finfo(torch.float32).tiny
        along = 1 - self.axis  # the rows' axis of a block's logits
        norm = weights.sum().clamp_min(tiny)
        scaled = weights / (norm * self.members)  # d loss / d logits = scaled_i (p_i - t_i)
        if self.soft:
            target_blocks = (targets.t() if self.classes_major else targets).split(self.block, dim=along)
        else:
            target_blocks = targets.view(self.row_shape).split(self.block, dim=along)
        blocks = zip(index.split(self.block), target_blocks, scaled.view(self.row_shape).split(self.block, dim=along),
                     self.per_row.view(self.row_shape).split(self.block, dim=along))
        for rows_of, target, w, out in blocks:
            self.add_block(m, rows_of, target, w, out)
        if not self.soft:
            self.per_row.clamp_min_(tiny).log_()
        return float(weights @ self.per_row / norm)

    def add_block(self, m: int, rows_of: Any, target: Any, w: Any, out: Any) -> None:
        """One block of member ``m``: gather and convert its rows, the logits, the gradient of the
        logits (its per-row loss terms into ``out``), and their products into the gradients."""
        import torch

        count, axis = rows_of.shape[0], self.axis
        x = self.converted[:count]
        torch.index_select(self.source, 0, rows_of, out=self.gathered[:count])
        if self.convert:
            x.copy_(self.gathered[:count])
        if self.classes_major:
            logits = torch.addmm(self.bias[m, :, None], self.weight[m], x.t())
        else:
            logits = torch.addmm(self.bias[m], x, self.weight[m].t())
        if self.soft:
            grad = torch.log_softmax(logits, dim=axis)
            torch.sum(target * grad, dim=axis, keepdim=True, out=out)
            grad.exp_().sub_(target).mul_(w)
        else:
            grad = torch.softmax(logits, dim=axis)  # one pass fewer than log_softmax then exp
            torch.gather(grad, axis, target, out=out)
            grad.mul_(w).scatter_add_(axis, target, -w)
        self.grad_weight[m].addmm_(grad if self.classes_major else grad.t(), x)
        self.grad_bias[m] += grad.sum(dim=1 - axis)


@dataclass
class StudentRows:
    """The student side of a buffer, gathered when a step needs it: member m's sample i is row
    ``index[m, i]`` of ``source`` (the buffer's student embeddings, all views, as stored)."""

    source: Any
    index: Any


def member_batches(
    buffer: Any, params: Any, rng: np.random.Generator, head: np.ndarray, teacher: TeacherScale
) -> tuple[StudentRows, Any, Any]:
    """Per ensemble member: student rows, targets and weights for every row of a buffer (torch).

    ``params`` holds the probe's parameters by name (a ``LinearProbe``, or ``train``'s options):
    ``ensemble``, ``method``, ``weighting``, ``threshold`` and ``targets``."""
    import torch

    n = len(buffer)
    name = f"{buffer.student}/emb"
    index = torch.empty(params.ensemble, n, dtype=torch.int64)
    targets, weights = [], []
    for member in range(params.ensemble):
        teacher_pick = rng.integers(0, buffer.teacher_views, n)
        student_pick = rng.integers(0, buffer.student_views, n)
        index[member] = torch.from_numpy(buffer.positions(name, student_pick))
        if params.method == "supervised":
            targets.append(buffer.truth())
            weights.append(np.ones(n, np.float32))
            continue
        conf = buffer.take(f"{buffer.teacher}/conf", teacher_pick).astype(np.float32)
        weight = conf if params.weighting == "confidence" else np.ones(n, np.float32)
        weights.append(np.where(conf >= params.threshold, weight, 0.0).astype(np.float32))
        if params.targets == "soft":
            emb = buffer.take(f"{buffer.teacher}/emb", teacher_pick)
            targets.append(teacher.probabilities(emb, head))
        else:
            targets.append(buffer.take(f"{buffer.teacher}/label", teacher_pick).astype(np.int64))
    rows = StudentRows(torch.from_numpy(np.ascontiguousarray(buffer.flat(name))), index)
    return rows, torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(weights))


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (``torch.set_flush_denormal`` is per thread).

    torch has a setter only, which returns whether the CPU supports flushing, not the setting it
    replaced; so the setting is read from its effect: the denormal 1e-39 times one is zero
    exactly when it is on."""
    import torch

    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, and give the thread its setting back after.

    Softmax over many classes under the zero-shot head's scale (about 100) leaves most
    probabilities, and so most gradient entries, as denormal floats, which slow the CPU's GEMM by
    half; flushed, their contribution (below 1e-38) is zero."""
    import torch

    before = denormals_flushed()
    flushing = torch.set_flush_denormal(True)  # whether the CPU can, not the setting it had
    try:
        yield
    finally:
        if flushing:
            torch.set_flush_denormal(before)


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


def check_params(params: Any) -> None:
    """Reject impossible probe parameters before anything is read: a ``LinearProbe``'s, or ``train``'s
    options of the same names (the messages name them as the command line's flags)."""
    from dataclasses import fields

    from .config import TrainConfig, flag_of

    for spec in fields(TrainConfig):  # the choices of the options the probe shares, defined once there
        allowed, value = spec.metadata["choices"], getattr(params, spec.name, None)
        if allowed and hasattr(params, spec.name) and value not in allowed:
            raise InputError(f"{flag_of(spec)} must be one of {', '.join(allowed)}, got '{value}'")
    if params.epochs < 1 or params.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if not (math.isfinite(params.lr) and params.lr > 0):
        raise InputError(f"--lr must be a positive finite number, got {params.lr}")
    if not (math.isfinite(params.weight_decay) and params.weight_decay >= 0):
        raise InputError(f"--weight-decay must be a finite number of 0 or more, got {params.weight_decay}")
    if params.method == "supervised" and params.threshold:
        raise InputError(f"--threshold {params.threshold} applies to the teacher's pseudo-labels: --method "
                         "supervised trains on true labels and would ignore it; drop the option")
    if not 0.0 <= params.threshold < 1.0:
        raise InputError(f"--threshold must be in [0, 1), got {params.threshold}")
    if params.ensemble < 1:
        raise InputError("--ensemble and --max-views must be at least 1")


def monitored_rows(store: Any, held_out: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """The clean embeddings (float32) and teacher pseudo-labels a fit follows its progress on, label
    free: the valid rows of the held-out shards when there are any (model selection), else of the
    first ``MONITOR_ROWS`` rows."""
    spans = [store.spans()[s] for s in sorted(held_out)] or [(0, min(store.layout.n, MONITOR_ROWS))]
    kept = np.concatenate([store.read_rows("valid", a, b) for a, b in spans])
    emb = np.concatenate([store.read_rows("clean/emb", a, b) for a, b in spans])[kept]
    label = np.concatenate([store.read_rows("clean/label", a, b) for a, b in spans])[kept]
    return emb.astype(np.float32), label.astype(np.int64)


@dataclass
class Fitting:
    """What one fit works on: the probes' weights and biases (M x C x D and M x C, torch), their
    optimiser, the device, the teacher, the monitored rows, and the student rows kept on the device
    across epochs."""

    weight: Any
    bias: Any
    optimizer: Any
    device: Any
    head: np.ndarray
    teacher: TeacherScale
    monitor: Any
    monitor_label: Any
    resident: dict[int, Any] = field(default_factory=dict)

    def agreement(self) -> float:
        """How often the probe predicts the teacher's pseudo-label on the monitored rows: one probe
        predicts its largest logit, an ensemble its largest mean probability."""
        import torch

        with torch.no_grad():
            if self.weight.shape[0] == 1:
                predicted = torch.addmm(self.bias[0], self.monitor, self.weight[0].t()).argmax(1)
            else:
                logits = self.monitor @ self.weight.transpose(1, 2) + self.bias[:, None, :]
                predicted = torch.softmax(logits, dim=-1).mean(0).argmax(1)
            return float((predicted == self.monitor_label).float().mean()) if self.monitor.shape[0] else 0.0

    def finite(self) -> bool:
        """Whether every weight and bias is still a finite number."""
        import torch

        return bool(torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all())


class LinearProbe:
    """LP-CLIP's linear probe (or an ensemble of ``ensemble`` probes fitted in one pass) on cached
    CLIP embeddings, an estimator in scikit-learn's manner.

    The parameters are ``train``'s options of the same names, with their defaults (docs/cli.md),
    and ``tol``: ``fit`` warns ``ProbeConvergenceWarning`` when its last epoch still lowered the mean
    loss below every earlier epoch's by more than ``tol`` (relative to the best of those), or when
    one epoch leaves nothing to judge; None judges nothing (``train``, whose output says nothing of
    convergence).

    Fitted attributes: ``coef_`` (C x D, or M x C x D for an ensemble), ``intercept_`` (C, or
    M x C), ``n_iter_`` (epochs done, counted as they finish) and ``history_`` (per epoch: its
    mean ``loss``, the ``teacher_agreement`` on the monitored rows, the fraction of samples the
    threshold ``kept`` and their count per member, ``kept_samples``: run.json's curve).
    """

    def __init__(self, method: str = "lpclip", epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.0, seed: int = 0, init: str = "zeroshot", weighting: str = "confidence",
                 targets: str = "hard", threshold: float = 0.0, ensemble: int = 1, device: str = "auto",
                 block_rows: int | None = None, tol: float | None = 1e-3) -> None:
        self.method, self.epochs, self.batch_size, self.lr = method, epochs, batch_size, lr
        self.weight_decay, self.seed, self.init, self.weighting = weight_decay, seed, init, weighting
        self.targets, self.threshold, self.ensemble, self.device = targets, threshold, ensemble, device
        self.block_rows, self.tol = block_rows, tol

    @classmethod
    def param_names(cls) -> list[str]:
        """The parameters' names, in the constructor's order."""
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters by name (``deep`` as in scikit-learn: a probe holds no other estimator)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> LinearProbe:
        """Change parameters by name; return the probe."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ValueError(f"LinearProbe has no parameter {', '.join(unknown)}: its parameters are "
                             f"{', '.join(self.param_names())}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = LinearProbe().get_params()
        changed = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k])
        return f"LinearProbe({changed})"

    def pair_needs(self) -> dict[str, bool]:
        """What the pair source must read for this probe (``PairSource``'s keywords): the teacher's
        embeddings for soft targets, the true labels for the supervised reference."""
        return {"need_teacher_emb": self.targets == "soft" and self.method == "lpclip",
                "need_truth": self.method == "supervised"}

    def fit(self, pairs: PairSource, progress: Any = None) -> LinearProbe:
        """Fit on a store's cached pairs, epoch by epoch, from the teacher (zero-shot initialisation:
        ``TeacherScale.probe_weight``, bias 0) or at random; return the probe.

        The epoch's order is ``pairs``'s for (``seed``, epoch); after each epoch the agreement with
        the teacher is measured on ``monitored_rows`` (the shards ``pairs`` holds out, if any).
        ``progress`` (``progress.Progress`` or None) counts the samples. A threshold that keeps no
        sample in an epoch is ``NothingKept``, weights no longer finite ``Diverged``.
        """
        from .distributed import pick_device

        check_params(self)
        self._check_pairs(pairs)
        store = pairs.store
        head, teacher = store.head(), store.teacher_scale
        device = pick_device(self.device)
        weight, bias = self._initial(head, teacher, device)
        emb, label = monitored_rows(store, pairs.excluded)
        state = Fitting(weight, bias, adamw(weight, bias, self.lr, self.weight_decay), device, head, teacher,
                        *monitor_on(emb, label, device))
        self.n_iter_, self.history_ = 0, []
        with flushing_denormals():
            for epoch in range(self.epochs):
                self.history_.append(self._epoch(pairs, epoch, state, progress))
                self.n_iter_ = epoch + 1
        coef, intercept = weight.detach().cpu().numpy(), bias.detach().cpu().numpy()
        self.coef_, self.intercept_ = (coef[0], intercept[0]) if self.ensemble == 1 else (coef, intercept)
        self._judge_convergence()
        return self

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """Class probabilities of embeddings (N x D to N x C, float64), an ensemble's averaged over
        its members (as ``runs.Run.probe_probs`` of the run it is saved as)."""
        if not hasattr(self, "coef_"):
            raise ValueError("this LinearProbe is not fitted yet: call fit first")
        weight = self.coef_.reshape(-1, *self.coef_.shape[-2:])
        bias = self.intercept_.reshape(weight.shape[0], -1)
        logits = np.matmul(np.asarray(emb).astype(np.float32), weight.transpose(0, 2, 1)) + bias[:, None, :]
        return softmax(logits, np.float64).mean(axis=0)

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """The most probable class of each embedding."""
        return self.predict_proba(emb).argmax(axis=1)

    def _check_pairs(self, pairs: PairSource) -> None:
        """The pair source reads what this probe needs, and a supervised probe has every true label."""
        missing = [name for name, needed in self.pair_needs().items() if needed and not getattr(pairs, name)]
        if missing:
            raise ValueError(f"the pair source was built without {', '.join(missing)}: build it with "
                             "PairSource(..., **probe.pair_needs())")
        store = pairs.store
        if self.method == "supervised" and (store.labels()[store.read("valid")] < 0).any():
            raise StoreError(
                f"store '{store.path}' has samples without true labels: --method supervised needs every label"
            )

    def _initial(self, head: np.ndarray, teacher: TeacherScale, device: Any) -> tuple[Any, Any]:
        """The weights and biases to start from (M x C x D and M x C, on ``device``)."""
        import torch

        n_classes, dim = head.shape
        torch.manual_seed(self.seed)
        weight = torch.empty(self.ensemble, n_classes, dim)
        bias = torch.zeros(self.ensemble, n_classes)
        for m in range(self.ensemble):
            if self.init == "zeroshot":
                weight[m] = torch.from_numpy(teacher.probe_weight(head))  # the teacher's logits, temperature included
            else:
                layer = torch.nn.Linear(dim, n_classes)
                weight[m], bias[m] = layer.weight.detach(), layer.bias.detach()
        return weight.to(device), bias.to(device)

    def _epoch(self, pairs: PairSource, epoch: int, state: Fitting, progress: Any) -> dict[str, float]:
        """One pass over the pairs, then its point of the curve (``history_``)."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        soft = self.targets == "soft" and self.method == "lpclip"
        total_loss, seen, kept, offered = 0.0, 0, 0, 0
        for buffer in pairs.epoch(self.seed, epoch):
            student, targets, weights = member_batches(buffer, self, rng, state.head, state.teacher)
            kept += int((weights > 0).sum())
            offered += int(weights.numel())
            rows_source = on_device(student.source, state.device, state.resident, keep=not pairs.streaming)
            index, targets, weights = student.index.to(state.device), targets.to(state.device), weights.to(state.device)
            rows = index.shape[1]
            for start in range(0, rows, self.batch_size):
                batch = slice(start, start + self.batch_size)
                loss = probe_step(state.weight, state.bias, rows_source, index[:, batch], targets[:, batch],
                                  weights[:, batch], soft, self.block_rows)
                state.optimizer.step()
                size = min(self.batch_size, rows - start)
                total_loss += loss * size
                seen += size
                if progress is not None:
                    progress.update(size)
        agreement = state.agreement()
        if kept == 0:
            raise NothingKept(f"--threshold {self.threshold} keeps no sample in epoch {epoch + 1} (the teacher's "
                              f"confidence never reaches it on the views drawn): lower it; 'lpclip-cache analyze "
                              f"views --store {pairs.store.path}' shows the confidences")
        if not (state.finite() and math.isfinite(total_loss)):
            raise Diverged(f"training diverged in epoch {epoch + 1} (loss {total_loss / max(seen, 1):.4g}, the "
                           f"probe's weights are no longer finite): lower --lr (now {self.lr})")
        return {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "teacher_agreement": agreement,
                "kept": round(kept / max(offered, 1), 6), "kept_samples": kept // self.ensemble}

    def _judge_convergence(self) -> None:
        """Warn ``ProbeConvergenceWarning`` when the last epoch still lowered the loss below every earlier
        epoch's by more than ``tol`` (relative): the loss had not stopped falling."""
        if self.tol is None:
            return
        losses = [point["loss"] for point in self.history_]
        if len(losses) < 2:
            reason = "one epoch leaves no fall of its loss to judge"
        else:
            best = min(losses[:-1])
            fall = (best - losses[-1]) / max(abs(best), np.finfo(np.float64).tiny)
            if fall <= self.tol:
                return
            reason = f"its last epoch still lowered the loss by {fall:.3g} (relative), more than tol {self.tol:g}"
        warnings.warn(f"the probe may not have converged after {len(losses)} epoch(s): {reason}; fit more epochs",
                      ProbeConvergenceWarning, stacklevel=3)


def adamw(weight: Any, bias: Any, lr: float, weight_decay: float) -> Any:
    """AdamW on the weights and biases: the fused kernel (CPU or CUDA) where torch has it, which takes
    about a third of the time of the per-tensor loop."""
    import torch

    try:
        return torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)


def monitor_on(emb: np.ndarray, label: np.ndarray, device: Any) -> tuple[Any, Any]:
    """The monitored rows as torch tensors on ``device``."""
    import torch

    return torch.from_numpy(emb).to(device), torch.from_numpy(label).to(device)
