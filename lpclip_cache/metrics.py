"""Evaluation metrics on numpy arrays: accuracy, calibration, OOD detection, clustering.

Conventions
-----------
* Classification metrics take ``probs`` of shape (N, C) (class probabilities, rows
  sum to 1) and integer ``labels`` of shape (N,) with values in [0, C).
* OOD metrics treat OOD as the positive class and take *confidences* that are higher
  for in-distribution samples (e.g. the maximum softmax probability); the detection
  score is ``-confidence``.
* Clustering metrics take two integer labelings of the same N points; the label values
  are arbitrary integers (only equality matters).

Every function validates its inputs and raises
:class:`lpclip_cache.errors.InputError` with a one-line message on bad shapes, empty
inputs, non-integer labels, non-finite values or out-of-range labels.
"""

from __future__ import annotations

import math

import numpy as np

from lpclip_cache.errors import InputError

__all__ = [
    "accuracy",
    "adaptive_ece",
    "adjusted_rand_index",
    "aupr",
    "aurc",
    "auroc",
    "balanced_accuracy",
    "brier",
    "calibration_direction",
    "cluster_purity",
    "ece",
    "energy_score",
    "entropy_score",
    "fpr_at_95_tpr",
    "max_logit_score",
    "max_softmax_probability",
    "mce",
    "mutual_information_score",
    "nll",
    "normalized_mutual_info",
    "top_k_accuracy",
]


# ------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------


def _is_numeric(arr: np.ndarray) -> bool:
    """Whether ``arr`` has a real numeric (float, integer or bool) dtype."""
    return bool(
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    )


def _as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a finite, non-empty 2-D float array or raise InputError."""
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D (N, C) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} must be non-empty, got shape {arr.shape}")
    if not _is_numeric(arr):
        raise InputError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _as_probs(probs: np.ndarray) -> np.ndarray:
    """Return ``probs`` as a finite, non-empty 2-D float array or raise InputError."""
    return _as_matrix(probs, "probs")


def _as_positive_int(value: int, name: str) -> int:
    """Return ``value`` as a Python int >= 1 (bools rejected) or raise InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_int_vector(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a non-empty 1-D integer array or raise InputError."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} must be non-empty")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def _as_probs_labels(
    probs: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (probs, labels) pair and return them as arrays."""
    p = _as_probs(probs)
    y = _as_int_vector(labels, "labels")
    if y.shape[0] != p.shape[0]:
        raise InputError(f"probs and labels disagree on N: probs has {p.shape[0]} rows, "
                         f"labels has {y.shape[0]} entries")
    n_classes = p.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise InputError(f"labels must lie in [0, {n_classes}) for {n_classes} classes, "
                         f"got values in [{lo}, {hi}]")
    return p, y


def _as_conf(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a finite, non-empty 1-D float array or raise InputError."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{name} must be non-empty")
    if not _is_numeric(arr):
        raise InputError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _label_pair(
    a: np.ndarray, b: np.ndarray, name_a: str, name_b: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two labelings of the same points; return them as integer arrays."""
    x = _as_int_vector(a, name_a)
    y = _as_int_vector(b, name_b)
    if x.shape != y.shape:
        raise InputError(f"{name_a} and {name_b} must have the same length, "
                         f"got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _contingency(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two labelings.

    Returns ``(cells, rows, cols, row_sums, col_sums)``: the counts of the non-zero
    cells with their row (index into the sorted unique values of ``a``) and column
    (same for ``b``), and the marginal counts. Memory is O(N) whatever the number
    of clusters.
    """
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ia = ia.reshape(-1).astype(np.int64, copy=False)
    ib = ib.reshape(-1).astype(np.int64, copy=False)
    n_cols = int(ib.max()) + 1
    codes, cells = np.unique(ia * n_cols + ib, return_counts=True)
    return (
        cells.astype(np.int64, copy=False),
        codes // n_cols,
        codes % n_cols,
        np.bincount(ia).astype(np.int64, copy=False),
        np.bincount(ib).astype(np.int64, copy=False),
    )


# ------------------------------------------------------------------------------------
# classification and calibration
# ------------------------------------------------------------------------------------


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax class (first on ties) equals the label."""
    p, y = _as_probs_labels(probs, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood: mean of -log(max(p_label, eps))."""
    p, y = _as_probs_labels(probs, labels)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise InputError(f"eps must be a positive finite number, got {eps!r}")
    p_true = p[np.arange(p.shape[0]), y]
    return float(np.mean(-np.log(np.maximum(p_true, eps))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Brier score: squared error to the one-hot label, summed over classes, mean."""
    p, y = _as_probs_labels(probs, labels)
    p_true = p[np.arange(p.shape[0]), y]
    # sum_c (p_c - onehot_c)^2 = sum_c p_c^2 - 2 p_label + 1 (no one-hot materialised).
    per_sample = np.einsum("ij,ij->i", p, p) - 2.0 * p_true + 1.0
    return float(np.mean(np.maximum(per_sample, 0.0)))


def _bin_sums(
    probs: np.ndarray, labels: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-bin (edges, count, summed confidence, summed correctness) and N."""
    p, y = _as_probs_labels(probs, labels)
    n_bins = _as_positive_int(n_bins, "n_bins")
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    # Edges are k / n_bins by correctly rounded division, so a confidence written as
    # k / n_bins lies exactly on an edge. side="left" gives i with
    # edges[i-1] < c <= edges[i], i.e. bin i-1 = (edges[i-1], edges[i]]. c == 0 gives
    # -1 and is clipped into the first bin [0, 1/n_bins]; values a rounding error above
    # 1 are clipped into the last bin.
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    sum_conf = np.bincount(bins, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(bins, weights=correct, minlength=n_bins)
    return edges, count, sum_conf, sum_acc, p.shape[0]


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins (lo, hi] of conf."""
    _, _, sum_conf, sum_acc, n = _bin_sums(probs, labels, n_bins)
    # (n_b / N) * |acc_b - conf_b| == |sum_acc_b - sum_conf_b| / N; empty bins give 0.
    return float(np.sum(np.abs(sum_acc - sum_conf)) / n)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """The reliability diagram behind ``ece``: per bin its edges, count, accuracy and confidence.

    Empty bins have NaN accuracy and confidence.
    """
    edges, count, sum_conf, sum_acc, _ = _bin_sums(probs, labels, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy_per_bin = np.where(count > 0, sum_acc / count, np.nan)
        confidence_per_bin = np.where(count > 0, sum_conf / count, np.nan)
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "accuracy": accuracy_per_bin.tolist(),
        "confidence": confidence_per_bin.tolist(),
    }


def _confidence_correct(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample max probability and whether the argmax (first on ties) is right."""
    return p.max(axis=1), (np.argmax(p, axis=1) == y).astype(np.float64)


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction whose label prob is >= the k-th largest prob of its row (ties count in; k >= C gives 1)."""
    p, y = _as_probs_labels(probs, labels)
    k = min(_as_positive_int(k, "k"), p.shape[1])
    kth_largest = np.partition(p, p.shape[1] - k, axis=1)[:, p.shape[1] - k]
    return float(np.mean(p[np.arange(p.shape[0]), y] >= kth_largest))


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the recall of argmax predictions."""
    p, y = _as_probs_labels(probs, labels)
    hits = np.bincount(y, weights=np.argmax(p, axis=1) == y, minlength=p.shape[1])
    support = np.bincount(y, minlength=p.shape[1])
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def calibration_direction(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean confidence minus accuracy: positive is over-confident, negative under-confident."""
    conf, correct = _confidence_correct(*_as_probs_labels(probs, labels))
    return float(np.mean(conf) - np.mean(correct))


def mce(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty ``ece`` bins of |acc_b - conf_b|."""
    _, count, sum_conf, sum_acc, _ = _bin_sums(probs, labels, n_bins)
    filled = count > 0
    return float(np.max(np.abs(sum_acc[filled] - sum_conf[filled]) / count[filled]))


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE over equal-mass bins: stable ascending sort of conf, split as np.array_split."""
    conf, correct = _confidence_correct(*_as_probs_labels(probs, labels))
    n_bins = _as_positive_int(n_bins, "n_bins")
    n = conf.shape[0]
    order = np.argsort(conf, kind="stable")  # tied confidences keep input order
    # np.array_split(x, n_bins): the first n % n_bins groups have n // n_bins + 1 items,
    # the rest n // n_bins; groups that would be empty (n_bins > n) are dropped.
    sizes = np.full(n_bins, n // n_bins, dtype=np.int64)
    sizes[: n % n_bins] += 1
    sizes = sizes[sizes > 0]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sum_conf = np.add.reduceat(conf[order], starts)
    sum_acc = np.add.reduceat(correct[order], starts)
    # (n_b / N) * |acc_b - conf_b| == |sum_acc_b - sum_conf_b| / N
    return float(np.sum(np.abs(sum_acc - sum_conf)) / n)


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk-coverage curve (conf = max prob, stable descending sort: ties keep input order)."""
    conf, correct = _confidence_correct(*_as_probs_labels(probs, labels))
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(1.0 - correct[order])
    # risk at coverage i / N = errors among the i most confident / i; mean over i = 1..N
    return float(np.mean(errors / np.arange(1, conf.shape[0] + 1)))


def max_softmax_probability(probs: np.ndarray) -> np.ndarray:
    """Per-sample maximum class probability, shape (N,)."""
    return _as_probs(probs).max(axis=1)


# ------------------------------------------------------------------------------------
# OOD detection (OOD = positive class, score = -confidence)
# ------------------------------------------------------------------------------------


def auroc(id_conf: np.ndarray, ood_conf: np.ndarray) -> float:
    """AUROC for OOD detection with score -conf: P(id > ood) + 0.5 * P(id == ood)."""
    id_c = _as_conf(id_conf, "id_conf")
    ood_c = _as_conf(ood_conf, "ood_conf")
    id_sorted = np.sort(id_c)
    left = np.searchsorted(id_sorted, ood_c, side="left")
    right = np.searchsorted(id_sorted, ood_c, side="right")
    n_id = id_sorted.shape[0]
    # Per OOD sample: ID samples strictly more confident (pairs ranked correctly), and
    # ID samples exactly as confident (ties, worth one half). Integer sums are exact.
    greater = int(np.sum(n_id - right, dtype=np.int64))
    ties = int(np.sum(right - left, dtype=np.int64))
    return (2 * greater + ties) / (2 * n_id * ood_c.shape[0])


def fpr_at_95_tpr(id_conf: np.ndarray, ood_conf: np.ndarray) -> float:
    """Fraction of ID flagged at the highest threshold that flags >= 95% of OOD."""
    id_c = _as_conf(id_conf, "id_conf")
    ood_c = _as_conf(ood_conf, "ood_conf")
    n_ood = ood_c.shape[0]
    # Flagged means -conf >= t, i.e. conf <= c with c = -t. The highest t with
    # TPR >= 95% is the smallest c with #(ood_conf <= c) >= ceil(0.95 * n_ood), i.e. the
    # k-th smallest OOD confidence; k is computed in integers (no 0.95 * n rounding).
    k = -((-95 * n_ood) // 100)
    cutoff = np.partition(ood_c, k - 1)[k - 1]
    return float(np.mean(id_c <= cutoff))


def aupr(id_conf: np.ndarray, ood_conf: np.ndarray) -> float:
    """Average precision for OOD with score -conf; equal scores are one threshold (as sklearn)."""
    id_c = _as_conf(id_conf, "id_conf")
    ood_c = _as_conf(ood_conf, "ood_conf")
    conf = np.concatenate([id_c, ood_c])
    is_ood = np.concatenate([np.zeros(id_c.shape[0]), np.ones(ood_c.shape[0])])
    # Descending score = ascending confidence; the order inside a tie group does not
    # matter because only the counts at the end of each group (one threshold) are used.
    order = np.argsort(conf, kind="stable")
    conf_sorted = conf[order]
    ends = np.flatnonzero(np.append(conf_sorted[1:] != conf_sorted[:-1], True))
    tps = np.cumsum(is_ood[order])[ends]
    precision = tps / (ends + 1)
    recall = tps / ood_c.shape[0]
    # AP = sum_n (R_n - R_{n-1}) P_n with R_0 = 0
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# ------------------------------------------------------------------------------------
# OOD scores: in-distribution confidence from probabilities or logits (higher = ID)
# ------------------------------------------------------------------------------------


def entropy_score(probs: np.ndarray) -> np.ndarray:
    """Per-sample negative entropy sum_c p_c ln p_c (nats, 0 ln 0 = 0), shape (N,)."""
    p = _as_probs(probs)
    if np.any(p < 0.0):
        raise InputError("probs must be non-negative for entropy_score")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0.0, p * np.log(p), 0.0)
    return terms.sum(axis=1)


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """Per-sample maximum logit, shape (N,)."""
    return _as_matrix(logits, "logits").max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative energy T * logsumexp(logits / T) per sample, shape (N,), computed stably."""
    z = _as_matrix(logits, "logits")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float, np.integer, np.floating))
        or not (math.isfinite(temperature) and temperature > 0.0)
    ):
        raise InputError(f"temperature must be a positive finite number, got {temperature!r}")
    t = float(temperature)
    # T * logsumexp(z / T) = max(z) + T * ln(sum exp((z - max z) / T)); every exponent
    # is <= 0 and the max term contributes exp(0) = 1, so nothing overflows.
    z_max = z.max(axis=1)
    with np.errstate(over="ignore"):
        shifted = (z - z_max[:, None]) / t
    return z_max + t * np.log(np.sum(np.exp(shifted), axis=1))


def mutual_information_score(member_probs: np.ndarray) -> np.ndarray:
    """Per-sample negative mutual information of an ensemble, mean_m H(p_m) - H(mean_m p_m) (nats).

    ``member_probs`` holds each member's probabilities, shape (M, N, C); the result has shape
    (N,) and is 0 where the members agree, negative where they disagree.
    """
    p = np.asarray(member_probs)
    if p.ndim != 3:
        raise InputError(f"member_probs must be a 3-D (M, N, C) array, got shape {p.shape}")
    if 0 in p.shape:
        raise InputError(f"member_probs must be non-empty, got shape {p.shape}")
    members, n, classes = p.shape
    flat = entropy_score(p.reshape(members * n, classes))  # validates: numeric, finite, non-negative
    return entropy_score(p.mean(axis=0)) - flat.reshape(members, n).mean(axis=0)


# ------------------------------------------------------------------------------------
# clustering agreement
# ------------------------------------------------------------------------------------


def cluster_purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Sum over clusters of the count of its most common label, divided by N."""
    c, y = _label_pair(clusters, labels, "clusters", "labels")
    cells, rows, _, row_sums, _ = _contingency(c, y)
    best = np.zeros(row_sums.shape[0], dtype=np.int64)
    np.maximum.at(best, rows, cells)
    return float(best.sum() / c.shape[0])


def _entropy(counts: np.ndarray, n: int) -> float:
    """Shannon entropy (nats) of a labeling given its positive cluster sizes."""
    c = counts[counts > 0].astype(np.float64)
    return float(math.log(n) - np.sum(c * np.log(c)) / n)


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI, arithmetic-mean normalised, as sklearn's normalized_mutual_info_score."""
    x, y = _label_pair(a, b, "a", "b")
    n = x.shape[0]
    cells, rows, cols, row_sums, col_sums = _contingency(x, y)
    n_a, n_b = row_sums.shape[0], col_sums.shape[0]
    if n_a == 1 and n_b == 1:
        return 1.0  # neither labeling splits the data: a perfect (trivial) match
    if n_a == 1 or n_b == 1:
        return 0.0  # one labeling has zero entropy, so MI = 0 < normaliser
    cells_f = cells.astype(np.float64)
    log_outer = np.log(row_sums[rows].astype(np.float64)) + np.log(
        col_sums[cols].astype(np.float64)
    )
    terms = cells_f * (np.log(cells_f) + math.log(n) - log_outer)
    mi = float(np.sum(terms) / n)
    if mi <= 0.0:
        return 0.0
    normalizer = 0.5 * (_entropy(row_sums, n) + _entropy(col_sums, n))
    return float(min(mi / normalizer, 1.0))


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie), as sklearn's adjusted_rand_score."""
    x, y = _label_pair(a, b, "a", "b")
    n = x.shape[0]
    cells, _, _, row_sums, col_sums = _contingency(x, y)
    # Ordered-pair counts (each unordered pair counted twice; the ratio below does not
    # depend on that scale). Python ints keep the products exact for any N.
    sum_cells = int(np.sum(cells * cells))
    sum_rows = int(np.sum(row_sums * row_sums))
    sum_cols = int(np.sum(col_sums * col_sums))
    tp = sum_cells - n  # together in both
    fn = sum_rows - sum_cells  # together in a only
    fp = sum_cols - sum_cells  # together in b only
    tn = n * n - sum_rows - sum_cols + sum_cells  # apart in both
    if fn == 0 and fp == 0:
        # Identical partitions: includes all-one-cluster, all-singletons and N == 1.
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def baseline_line(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    """Intercept and slope of the line through two models' (in-distribution, shifted) accuracies:
    the trade between them that a model without effective robustness lies on (NaN for both when
    the two have the same in-distribution accuracy: no such line)."""
    (x0, y0), (x1, y1) = first, second
    if x0 == x1:
        return float("nan"), float("nan")
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def effective_robustness(clean: float, shifted: float, first: tuple[float, float],
                         second: tuple[float, float]) -> float:
    """Accuracy under a shift above the baseline line through two reference models at this model's
    in-distribution accuracy (Taori et al. 2020, with a line through two models, the zero-shot
    teacher and the supervised probe, in place of one fitted to many): 0 on the line, positive above;
    NaN where the two references have the same in-distribution accuracy."""
    intercept, slope = baseline_line(first, second)
    return shifted - (intercept + slope * clean)
