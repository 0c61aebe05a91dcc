"""Tests for lpclip_cache.metrics: hand-computed cases, sklearn parity, edge cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lpclip_cache import metrics as m
from lpclip_cache.errors import InputError

# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------


def _random_probs(
    rng: np.random.Generator, n: int, c: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random softmax probabilities and labels."""
    logits = rng.normal(scale=2.0, size=(n, c))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    return probs, labels


def _ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Loop-based ECE with bins (lo, hi] and the first bin [0, 1/n_bins]."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        mask = (conf > lo) & (conf <= hi) if k > 0 else (conf >= lo) & (conf <= hi)
        if mask.any():
            frac = mask.sum() / len(conf)
            total += frac * abs(correct[mask].mean() - conf[mask].mean())
    return total


def _fpr95_reference(id_conf: np.ndarray, ood_conf: np.ndarray) -> float:
    """Brute force: scan every candidate threshold on score = -conf."""
    id_s, ood_s = -id_conf, -ood_conf
    best_t = -math.inf
    for t in np.unique(np.concatenate([id_s, ood_s])):
        if np.mean(ood_s >= t) >= 0.95 and t > best_t:
            best_t = t
    return float(np.mean(id_s >= best_t))


# Shared 3-class example used by several hand-computed tests.
HAND_PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # label 0, argmax 0: correct
        [0.1, 0.6, 0.3],  # label 2, argmax 1: wrong
        [0.3, 0.3, 0.4],  # label 2, argmax 2: correct
        [0.5, 0.4, 0.1],  # label 1, argmax 0: wrong
    ]
)
HAND_LABELS = np.array([0, 2, 2, 1])


# ------------------------------------------------------------------------------------
# accuracy / nll / brier
# ------------------------------------------------------------------------------------


def test_accuracy_hand() -> None:
    # correct = [1, 0, 1, 0] -> 2 / 4 = 0.5
    assert m.accuracy(HAND_PROBS, HAND_LABELS) == pytest.approx(0.5)


def test_accuracy_all_right_and_all_wrong() -> None:
    probs = np.eye(3)
    assert m.accuracy(probs, np.array([0, 1, 2])) == 1.0
    assert m.accuracy(probs, np.array([1, 2, 0])) == 0.0


def test_nll_hand() -> None:
    # p_label = [0.7, 0.3, 0.4, 0.4]
    # nll = -(ln 0.7 + ln 0.3 + 2 ln 0.4) / 4
    #     = (0.356675 + 1.203973 + 2 * 0.916291) / 4 = 3.393229 / 4 = 0.848307
    expected = -(math.log(0.7) + math.log(0.3) + 2 * math.log(0.4)) / 4
    assert m.nll(HAND_PROBS, HAND_LABELS) == pytest.approx(expected)
    assert m.nll(HAND_PROBS, HAND_LABELS) == pytest.approx(0.848307, abs=1e-6)


def test_nll_eps_clipping() -> None:
    # p_label = 0 -> -ln(1e-12) = 12 ln 10 = 27.631021; p_label = 1 -> 0; mean 13.81551
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    labels = np.array([1, 0])
    assert m.nll(probs, labels) == pytest.approx(12 * math.log(10) / 2)
    assert m.nll(probs, labels, eps=1e-3) == pytest.approx(3 * math.log(10) / 2)


def test_nll_matches_sklearn_log_loss() -> None:
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(0)
    probs, labels = _random_probs(rng, 500, 7)
    expected = log_loss(labels, probs, labels=np.arange(7))
    assert m.nll(probs, labels) == pytest.approx(expected, rel=1e-10)


def test_brier_hand() -> None:
    # row 1, label 0: (0.7-1)^2 + 0.2^2 + 0.1^2 = 0.09 + 0.04 + 0.01 = 0.14
    # row 2, label 2: 0.1^2 + 0.6^2 + (0.3-1)^2 = 0.01 + 0.36 + 0.49 = 0.86
    # mean = (0.14 + 0.86) / 2 = 0.5
    probs = HAND_PROBS[:2]
    labels = HAND_LABELS[:2]
    assert m.brier(probs, labels) == pytest.approx(0.5)


def test_brier_perfect_and_uniform() -> None:
    assert m.brier(np.eye(4), np.arange(4)) == 0.0
    for c in (2, 3, 10):
        # uniform: (c-1) * (1/c)^2 + (1 - 1/c)^2 = (c-1)/c^2 + (c-1)^2/c^2 = 1 - 1/c
        probs = np.full((5, c), 1.0 / c)
        labels = np.arange(5) % c
        assert m.brier(probs, labels) == pytest.approx(1.0 - 1.0 / c)


def test_brier_matches_explicit_one_hot() -> None:
    rng = np.random.default_rng(1)
    probs, labels = _random_probs(rng, 300, 5)
    onehot = np.eye(5)[labels]
    expected = float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    assert m.brier(probs, labels) == pytest.approx(expected, rel=1e-12)


def test_brier_binary_matches_sklearn() -> None:
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(2)
    probs, labels = _random_probs(rng, 400, 2)
    # sklearn's binary Brier is (p1 - y)^2; the two-class sum counts it twice.
    expected = 2.0 * brier_score_loss(labels, probs[:, 1])
    assert m.brier(probs, labels) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------
# ECE
# ------------------------------------------------------------------------------------


def test_ece_hand() -> None:
    # n_bins = 5, edges 0, .2, .4, .6, .8, 1
    # conf .9 right, .9 wrong -> bin (.8, 1]: acc .5, conf .9 -> 2/4 * .4 = 0.2
    # conf .7 right           -> bin (.6, .8]: acc 1, conf .7 -> 1/4 * .3 = 0.075
    # conf .6 wrong (on edge) -> bin (.4, .6]: acc 0, conf .6 -> 1/4 * .6 = 0.15
    # ECE = 0.2 + 0.075 + 0.15 = 0.425
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    assert m.ece(probs, labels, n_bins=5) == pytest.approx(0.425)


def test_ece_perfectly_calibrated_is_zero() -> None:
    # 10 samples at conf 0.8 with 8 right, 5 samples at conf 0.6 with 3 right:
    # every bin has acc == conf, so ECE = 0.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert m.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert m.ece(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_bin_edge_goes_to_lower_bin() -> None:
    # n_bins = 10. Sample A: conf 0.5 (exactly on the 0.4|0.5|0.6 edge), right.
    # Sample B: conf 0.45, wrong. Both must share the bin (0.4, 0.5]:
    # acc 0.5, conf 0.475 -> 2/2 * 0.025 = 0.025.
    # (Were A put in (0.5, 0.6] the answer would be 0.5*0.5 + 0.5*0.45 = 0.475.)
    probs = np.array([[0.5, 0.5, 0.0], [0.45, 0.35, 0.2]])
    labels = np.array([0, 1])
    assert m.ece(probs, labels, n_bins=10) == pytest.approx(0.025)


def test_ece_bin_edge_half_with_two_bins() -> None:
    # n_bins = 2: conf 0.5 belongs to [0, 0.5], conf 0.75 to (0.5, 1].
    # conf 0.5 right, conf 0.75 wrong.
    # lower-bin rule: 1/2 * |1 - 0.5| + 1/2 * |0 - 0.75| = 0.25 + 0.375 = 0.625
    # (upper-bin rule would give one bin: |0.5 - 0.625| = 0.125)
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    labels = np.array([0, 1])
    assert m.ece(probs, labels, n_bins=2) == pytest.approx(0.625)


def test_ece_confidence_one_goes_to_last_bin() -> None:
    # conf 1.0 right -> last bin, |1 - 1| = 0; n_bins = 1: |acc - mean conf|.
    assert m.ece(np.eye(3), np.arange(3)) == 0.0
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    # one bin: acc 0.5, mean conf 0.75 -> 0.25
    assert m.ece(probs, np.array([0, 1]), n_bins=1) == pytest.approx(0.25)


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 20])
def test_ece_matches_loop_reference(n_bins: int) -> None:
    rng = np.random.default_rng(3 + n_bins)
    probs, labels = _random_probs(rng, 400, 4)
    # Include confidences exactly on edges k / n_bins.
    k = rng.integers(1, n_bins + 1, size=50)
    edge_conf = k / n_bins
    edge_conf = np.maximum(edge_conf, 0.5)  # keep column 0 the max
    extra = np.zeros((50, 4))
    extra[:, 0], extra[:, 1] = edge_conf, 1.0 - edge_conf
    probs = np.concatenate([probs, extra])
    labels = np.concatenate([labels, rng.integers(0, 4, size=50)])
    assert m.ece(probs, labels, n_bins=n_bins) == pytest.approx(
        _ece_reference(probs, labels, n_bins), abs=1e-12
    )


# ------------------------------------------------------------------------------------
# OOD: AUROC and FPR@95TPR
# ------------------------------------------------------------------------------------


def test_max_softmax_probability() -> None:
    np.testing.assert_array_equal(
        m.max_softmax_probability(HAND_PROBS), np.array([0.7, 0.6, 0.4, 0.5])
    )


def test_auroc_hand() -> None:
    # id = [0.9, 0.6, 0.3], ood = [0.6, 0.2]; 6 pairs (id, ood):
    # (.9,.6) 1  (.9,.2) 1  (.6,.6) tie 0.5  (.6,.2) 1  (.3,.6) 0  (.3,.2) 1
    # AUROC = (1 + 1 + 0.5 + 1 + 0 + 1) / 6 = 4.5 / 6 = 0.75
    assert m.auroc(np.array([0.9, 0.6, 0.3]), np.array([0.6, 0.2])) == pytest.approx(
        0.75
    )


def test_auroc_ties_perfect_reversed() -> None:
    assert m.auroc(np.full(5, 0.7), np.full(3, 0.7)) == 0.5
    assert m.auroc(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.2, 0.5])) == 1.0
    assert m.auroc(np.array([0.1, 0.2, 0.5]), np.array([0.8, 0.9, 0.95])) == 0.0


@pytest.mark.parametrize("rounding", [None, 1, 2])
def test_auroc_matches_sklearn(rounding: int | None) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(10 + (rounding or 0))
    id_conf = rng.beta(5, 2, size=700)
    ood_conf = rng.beta(2, 3, size=400)
    if rounding is not None:  # create many ties
        id_conf, ood_conf = np.round(id_conf, rounding), np.round(ood_conf, rounding)
    y = np.concatenate([np.zeros(700), np.ones(400)])
    score = -np.concatenate([id_conf, ood_conf])
    assert m.auroc(id_conf, ood_conf) == pytest.approx(roc_auc_score(y, score), 1e-12)


def test_auroc_large_n_is_fast_and_exact_on_ties() -> None:
    rng = np.random.default_rng(4)
    n = 1_000_000
    conf = rng.integers(0, 3, size=n).astype(float)
    # Same distribution on both sides -> AUROC is 0.5 exactly up to sampling noise.
    assert m.auroc(conf, rng.permutation(conf)) == pytest.approx(0.5, abs=1e-12)


def test_fpr95_hand() -> None:
    # ood = 0.01 .. 0.20 (20 values); ceil(0.95 * 20) = 19 must be flagged, so the
    # threshold is conf <= 0.19 (the 19th smallest). id = [0.1, 0.19, 0.2, 0.5]:
    # flagged 0.1 and 0.19 (tie counts as flagged) -> FPR = 2 / 4 = 0.5
    ood = np.arange(1, 21) / 100
    id_conf = np.array([0.1, 0.19, 0.2, 0.5])
    assert m.fpr_at_95_tpr(id_conf, ood) == pytest.approx(0.5)


def test_fpr95_rounds_ood_count_up() -> None:
    # n_ood = 10: 95% of 10 = 9.5 -> 10 must be flagged -> threshold at the max 0.10.
    # id = [0.05, 0.10, 0.11] -> flagged 0.05, 0.10 -> 2/3
    ood = np.arange(1, 11) / 100
    assert m.fpr_at_95_tpr(np.array([0.05, 0.10, 0.11]), ood) == pytest.approx(2 / 3)


def test_fpr95_perfect_reversed_ties() -> None:
    id_hi = np.array([0.8, 0.9, 0.95, 0.99])
    ood_lo = np.array([0.1, 0.2, 0.3, 0.5])
    assert m.fpr_at_95_tpr(id_hi, ood_lo) == 0.0
    assert m.fpr_at_95_tpr(ood_lo, id_hi) == 1.0
    assert m.fpr_at_95_tpr(np.full(4, 0.5), np.full(6, 0.5)) == 1.0


def test_fpr95_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    for trial in range(20):
        n_id, n_ood = rng.integers(1, 60, size=2)
        id_conf = np.round(rng.beta(5, 2, size=n_id), 1 + trial % 3)
        ood_conf = np.round(rng.beta(2, 3, size=n_ood), 1 + trial % 3)
        assert m.fpr_at_95_tpr(id_conf, ood_conf) == pytest.approx(
            _fpr95_reference(id_conf, ood_conf)
        )


# ------------------------------------------------------------------------------------
# clustering agreement
# ------------------------------------------------------------------------------------


def test_cluster_purity_hand() -> None:
    # cluster 0: labels 5, 5, 7 -> 2; cluster 1: 7, 7 -> 2; cluster 2: 9 -> 1
    # purity = (2 + 2 + 1) / 6 = 5/6
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([5, 5, 7, 7, 7, 9])
    assert m.cluster_purity(clusters, labels) == pytest.approx(5 / 6)
    assert m.cluster_purity(np.zeros(6, dtype=int), labels) == pytest.approx(3 / 6)
    assert m.cluster_purity(np.arange(6), labels) == 1.0


def test_cluster_purity_matches_dense_reference() -> None:
    rng = np.random.default_rng(6)
    clusters = rng.integers(0, 30, size=2000) * 7  # non-contiguous ids
    labels = rng.integers(0, 10, size=2000) + 100
    table = np.zeros((30 * 7, 110), dtype=int)
    np.add.at(table, (clusters, labels), 1)
    expected = table.max(axis=1).sum() / 2000
    assert m.cluster_purity(clusters, labels) == pytest.approx(expected)


def test_nmi_hand() -> None:
    # a = [0,0,1,1], b = [0,0,0,1]; cells (a0,b0)=2, (a1,b0)=1, (a1,b1)=1; N = 4
    # MI = .5 ln(.5/(.5*.75)) + .25 ln(.25/(.5*.75)) + .25 ln(.25/(.5*.25))
    #    = .5 ln(4/3) + .25 ln(2/3) + .25 ln 2 = 0.143841 - 0.101366 + 0.173287
    #    = 0.215762
    # H(a) = ln 2 = 0.693147; H(b) = -(.75 ln .75 + .25 ln .25) = 0.562335
    # NMI = 0.215762 / ((0.693147 + 0.562335) / 2) = 0.215762 / 0.627741
    #     = 0.343711
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_a = math.log(2)
    h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    a, b = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])
    assert m.normalized_mutual_info(a, b) == pytest.approx(mi / ((h_a + h_b) / 2))
    assert m.normalized_mutual_info(a, b) == pytest.approx(0.343711, abs=1e-6)
    # identical up to renaming -> 1; independent -> 0
    assert m.normalized_mutual_info(a, np.array([9, 9, 4, 4])) == pytest.approx(1.0)
    assert m.normalized_mutual_info(a, np.array([0, 1, 0, 1])) == pytest.approx(
        0.0, abs=1e-12
    )


def test_ari_hand() -> None:
    # a = [0,0,1,1], b = [0,1,0,1]: every cell 1 -> sum C(n_ij,2) = 0
    # rows: 2 * C(2,2) = 2; cols: 2; C(4,2) = 6; expected = 2*2/6 = 2/3; max = 2
    # ARI = (0 - 2/3) / (2 - 2/3) = -0.5
    a = np.array([0, 0, 1, 1])
    assert m.adjusted_rand_index(a, np.array([0, 1, 0, 1])) == pytest.approx(-0.5)
    # b = [0,0,0,1]: cells 2, 1, 1 -> index = 1; rows 1 + 1 = 2; cols C(3,2) = 3
    # expected = 2*3/6 = 1; max = (2 + 3)/2 = 2.5 -> ARI = (1 - 1)/(2.5 - 1) = 0
    assert m.adjusted_rand_index(a, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert m.adjusted_rand_index(a, np.array([3, 3, 8, 8])) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_clustering_matches_sklearn_random(seed: int) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 3000))
    k_a, k_b = rng.integers(1, 40, size=2)
    a = rng.integers(0, k_a, size=n) * 3 + 5  # non-contiguous ids
    # b correlated with a so that the scores are not all near 0
    b = np.where(rng.random(n) < 0.6, a // 3, rng.integers(0, k_b, size=n))
    assert m.normalized_mutual_info(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-10
    )
    assert m.adjusted_rand_index(a, b) == pytest.approx(
        adjusted_rand_score(a, b), abs=1e-10
    )


DEGENERATE_CASES: list[tuple[str, Any, Any]] = [
    ("both one cluster", [3] * 6, [0] * 6),
    ("both singletons", list(range(6)), [5, 4, 3, 2, 1, 0]),
    ("one cluster vs singletons", [0] * 6, list(range(6))),
    ("singletons vs one cluster", list(range(6)), [0] * 6),
    ("one cluster vs split", [0] * 6, [0, 0, 1, 1, 2, 2]),
    ("split vs one cluster", [0, 0, 1, 1, 2, 2], [7] * 6),
    ("singletons vs split", list(range(6)), [0, 0, 1, 1, 2, 2]),
    ("single point", [4], [9]),
    ("two points together vs apart", [0, 0], [0, 1]),
    ("negative ids", [-1, -1, 2, 2, -5], [0, 0, 0, 1, 1]),
]


@pytest.mark.parametrize(("name", "a", "b"), DEGENERATE_CASES)
def test_clustering_degenerate_match_sklearn(name: str, a: Any, b: Any) -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a_arr, b_arr = np.array(a), np.array(b)
    assert m.normalized_mutual_info(a_arr, b_arr) == pytest.approx(
        normalized_mutual_info_score(a_arr, b_arr), abs=1e-12
    ), name
    assert m.adjusted_rand_index(a_arr, b_arr) == pytest.approx(
        adjusted_rand_score(a_arr, b_arr), abs=1e-12
    ), name


def test_clustering_large_n_matches_sklearn() -> None:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(7)
    n = 200_000
    a = rng.integers(0, 1000, size=n)
    b = np.where(rng.random(n) < 0.5, a, rng.integers(0, 800, size=n))
    assert m.adjusted_rand_index(a, b) == pytest.approx(
        adjusted_rand_score(a, b), abs=1e-10
    )
    assert m.normalized_mutual_info(a, b) == pytest.approx(
        normalized_mutual_info_score(a, b), abs=1e-10
    )
    # all singletons on both sides at large N: no dense N x N table needed
    perm = rng.permutation(n)
    assert m.adjusted_rand_index(perm, np.arange(n)) == 1.0
    assert m.normalized_mutual_info(perm, np.arange(n)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------

PROBS = np.array([[0.6, 0.4], [0.3, 0.7]])
LABELS = np.array([0, 1])
CLASSIFICATION = [m.accuracy, m.nll, m.brier, m.ece]


@pytest.mark.parametrize("fn", CLASSIFICATION)
@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        (np.array([0.6, 0.4]), LABELS),  # probs 1-D
        (PROBS[None], LABELS),  # probs 3-D
        (np.zeros((0, 2)), np.zeros(0, dtype=int)),  # empty
        (np.zeros((2, 0)), LABELS),  # no classes
        (PROBS, np.array([0, 1, 1])),  # N mismatch
        (PROBS, LABELS[:, None]),  # labels 2-D
        (PROBS, np.array([0, 2])),  # label out of range
        (PROBS, np.array([-1, 0])),  # negative label
        (PROBS, np.array([0.0, 1.0])),  # float labels
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), LABELS),  # NaN
    ],
)
def test_classification_bad_inputs(
    fn: Callable[..., float], probs: np.ndarray, labels: np.ndarray
) -> None:
    with pytest.raises(InputError):
        fn(probs, labels)


def test_other_bad_arguments() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="n_bins"):
            m.ece(PROBS, LABELS, n_bins=bad)
    with pytest.raises(InputError, match="eps"):
        m.nll(PROBS, LABELS, eps=0.0)
    with pytest.raises(InputError):
        m.max_softmax_probability(np.array([0.5, 0.5]))


@pytest.mark.parametrize("fn", [m.auroc, m.fpr_at_95_tpr])
@pytest.mark.parametrize(
    ("id_conf", "ood_conf"),
    [
        (np.ones((2, 2)), np.ones(3)),
        (np.ones(3), np.ones((3, 1))),
        (np.zeros(0), np.ones(3)),
        (np.ones(3), np.zeros(0)),
        (np.array([0.5, np.inf]), np.ones(3)),
    ],
)
def test_ood_bad_inputs(
    fn: Callable[..., float], id_conf: np.ndarray, ood_conf: np.ndarray
) -> None:
    with pytest.raises(InputError):
        fn(id_conf, ood_conf)


@pytest.mark.parametrize(
    "fn", [m.cluster_purity, m.normalized_mutual_info, m.adjusted_rand_index]
)
@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.array([0, 1, 1]), np.array([0, 1])),  # length mismatch
        (np.array([[0, 1]]), np.array([0, 1])),  # 2-D
        (np.zeros(0, dtype=int), np.zeros(0, dtype=int)),  # empty
        (np.array([0.0, 1.0]), np.array([0, 1])),  # float labels
    ],
)
def test_clustering_bad_inputs(
    fn: Callable[..., float], a: np.ndarray, b: np.ndarray
) -> None:
    with pytest.raises(InputError):
        fn(a, b)


def test_error_messages_are_one_line() -> None:
    with pytest.raises(InputError) as info:
        m.accuracy(PROBS, np.array([0, 1, 1]))
    assert "\n" not in info.value.message
    assert "labels" in info.value.message


def test_reliability_bins_are_the_diagram_behind_ece():
    # 4 samples, 2 bins: confidences 0.35 (argmax 1, right), 0.4 (argmax 0, wrong) in bin 1;
    # 0.8 and 0.9 (both right) in bin 2
    probs = np.array([[0.3, 0.35, 0.35], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.05, 0.05, 0.9]])
    labels = np.array([1, 1, 0, 2])
    bins = m.reliability_bins(probs, labels, n_bins=2)
    assert bins["edges"] == [0.0, 0.5, 1.0]
    assert bins["count"] == [2, 2]
    assert bins["accuracy"] == pytest.approx([0.5, 1.0])
    assert bins["confidence"] == pytest.approx([0.375, 0.85])
    # ECE = 2/4 * |0.5 - 0.375| + 2/4 * |1.0 - 0.85| = 0.0625 + 0.075
    assert m.ece(probs, labels, n_bins=2) == pytest.approx(0.1375)
    empty = m.reliability_bins(probs, labels, n_bins=10)
    assert empty["count"][0] == 0 and np.isnan(empty["accuracy"][0])


# ------------------------------------------------------------------------------------
# top-k and balanced accuracy
# ------------------------------------------------------------------------------------


def test_top_k_accuracy_hand() -> None:
    # HAND_PROBS rows with p_label and the sorted row:
    # [.7 .2 .1] label 0: p=.7, 1st .7, 2nd .2 -> top1 yes, top2 yes
    # [.1 .6 .3] label 2: p=.3, 1st .6, 2nd .3 -> top1 no,  top2 yes
    # [.3 .3 .4] label 2: p=.4, 1st .4, 2nd .3 -> top1 yes, top2 yes
    # [.5 .4 .1] label 1: p=.4, 1st .5, 2nd .4 -> top1 no,  top2 yes
    # top1 = 2/4, top2 = 4/4, top3 = 1 (every label is among 3 of 3 classes)
    assert m.top_k_accuracy(HAND_PROBS, HAND_LABELS, 1) == pytest.approx(0.5)
    assert m.top_k_accuracy(HAND_PROBS, HAND_LABELS, 2) == 1.0
    assert m.top_k_accuracy(HAND_PROBS, HAND_LABELS, 3) == 1.0
    assert m.top_k_accuracy(HAND_PROBS, np.array([2, 0, 1, 2]), 2) == 0.25  # only row 3 (.3 >= .3)
    assert m.top_k_accuracy(HAND_PROBS, HAND_LABELS, 10) == 1.0  # k >= C


def test_top_k_accuracy_ties_count_in() -> None:
    # row [.5 .25 .25], label 2: 2nd largest is .25 and p_label = .25 >= .25 -> in the top 2
    # (argsort-based tie-breaking would put class 1 or 2 out); top1: .25 < .5 -> out
    probs = np.array([[0.5, 0.25, 0.25]])
    assert m.top_k_accuracy(probs, np.array([2]), 2) == 1.0
    assert m.top_k_accuracy(probs, np.array([1]), 2) == 1.0
    assert m.top_k_accuracy(probs, np.array([2]), 1) == 0.0
    # all-equal row: every label is within the top 1 (unlike accuracy's first-argmax rule)
    flat = np.full((4, 4), 0.25)
    assert m.top_k_accuracy(flat, np.array([0, 1, 2, 3]), 1) == 1.0
    assert m.accuracy(flat, np.array([0, 1, 2, 3])) == 0.25


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_accuracy_matches_sklearn(k: int) -> None:
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(20 + k)
    probs, labels = _random_probs(rng, 500, 6)  # continuous: no ties
    expected = top_k_accuracy_score(labels, probs, k=k, labels=np.arange(6))
    assert m.top_k_accuracy(probs, labels, k) == pytest.approx(expected, abs=1e-12)
    if k == 1:
        assert m.top_k_accuracy(probs, labels, 1) == m.accuracy(probs, labels)


def test_balanced_accuracy_hand() -> None:
    # preds = argmax = [0, 1, 2, 0], labels = [0, 2, 2, 1]
    # class 0: 1 of 1 right -> 1; class 1: 0 of 1 -> 0; class 2: 1 of 2 -> 0.5
    # balanced = (1 + 0 + 0.5) / 3 = 0.5
    assert m.balanced_accuracy(HAND_PROBS, HAND_LABELS) == pytest.approx(0.5)
    # labels [0, 0, 0, 2]: class 0 preds [0, 1, 2] -> 1/3; class 2 pred 0 -> 0;
    # class 1 absent is skipped: (1/3 + 0) / 2 = 1/6  (plain accuracy would be 1/4)
    labels = np.array([0, 0, 0, 2])
    assert m.balanced_accuracy(HAND_PROBS, labels) == pytest.approx(1 / 6)
    assert m.accuracy(HAND_PROBS, labels) == pytest.approx(0.25)


def test_balanced_accuracy_single_class_is_accuracy() -> None:
    rng = np.random.default_rng(21)
    probs, _ = _random_probs(rng, 50, 4)
    labels = np.full(50, 3)
    assert m.balanced_accuracy(probs, labels) == pytest.approx(m.accuracy(probs, labels))


@pytest.mark.parametrize("seed", range(4))
def test_balanced_accuracy_matches_sklearn(seed: int) -> None:
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(30 + seed)
    n, c = int(rng.integers(5, 400)), int(rng.integers(2, 9))
    probs, labels = _random_probs(rng, n, c)
    if seed % 2:  # leave some classes out of the labels, but not of the predictions
        labels = labels % max(1, c // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected = balanced_accuracy_score(labels, probs.argmax(axis=1))
    assert m.balanced_accuracy(probs, labels) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------
# calibration: adaptive ECE, MCE, direction
# ------------------------------------------------------------------------------------


def _adaptive_ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Loop over np.array_split of the stable ascending sort by confidence."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    total = 0.0
    for idx in np.array_split(np.argsort(conf, kind="stable"), n_bins):
        if len(idx):
            total += len(idx) / len(conf) * abs(correct[idx].mean() - conf[idx].mean())
    return total


def test_adaptive_ece_hand() -> None:
    # conf (label 0 = right, 1 = wrong): .6 w, .7 w, .8 r, .9 r, .95 r; n_bins = 2 -> sizes 3, 2
    # bin {.6, .7, .8}: acc 1/3, conf .7   -> 3/5 * |1/3 - .7| = 3/5 * 11/30 = 0.22
    # bin {.9, .95}:    acc 1,   conf .925 -> 2/5 * .075 = 0.03
    # adaptive ECE = 0.25  (input given out of order to exercise the sort)
    conf = np.array([0.9, 0.6, 0.95, 0.7, 0.8])
    probs = np.stack([conf, 1.0 - conf], axis=1)
    labels = np.array([0, 1, 0, 1, 0])
    assert m.adaptive_ece(probs, labels, n_bins=2) == pytest.approx(0.25)
    # one bin: |acc 3/5 - mean conf 3.95/5| = |.6 - .79| = 0.19
    # five bins: mean |correct - conf| = (.1 + .6 + .05 + .7 + .2) / 5 = 1.65 / 5 = 0.33,
    # and more bins than samples (empty groups dropped) gives the same
    assert m.adaptive_ece(probs, labels, n_bins=1) == pytest.approx(0.19)
    assert m.adaptive_ece(probs, labels, n_bins=5) == pytest.approx(0.33)
    assert m.adaptive_ece(probs, labels, n_bins=50) == pytest.approx(0.33)


@pytest.mark.parametrize("n_bins", [1, 2, 7, 15, 600])
def test_adaptive_ece_matches_loop_reference(n_bins: int) -> None:
    rng = np.random.default_rng(40 + n_bins)
    probs, labels = _random_probs(rng, 503, 4)
    probs = np.round(probs, 2)  # ties in confidence across split points
    assert m.adaptive_ece(probs, labels, n_bins=n_bins) == pytest.approx(
        _adaptive_ece_reference(probs, labels, n_bins), abs=1e-12
    )
    if n_bins == 1:
        assert m.adaptive_ece(probs, labels, 1) == pytest.approx(m.ece(probs, labels, 1), abs=1e-12)


def test_adaptive_ece_all_equal_confidence() -> None:
    # every conf .8, 8 of 10 right; the stable sort keeps input order, so with 2 bins of 5
    # the first holds 5 right (acc 1) and the second 3 right + 2 wrong (acc .6):
    # 1/2 * |1 - .8| + 1/2 * |.6 - .8| = 0.1 + 0.1 = 0.2; one bin: |.8 - .8| = 0
    probs = np.array([[0.8, 0.2]] * 10)
    labels = np.array([0] * 8 + [1] * 2)
    assert m.adaptive_ece(probs, labels, n_bins=2) == pytest.approx(0.2)
    assert m.adaptive_ece(probs, labels, n_bins=1) == pytest.approx(0.0, abs=1e-12)


def test_mce_hand() -> None:
    # same data as test_ece_hand, n_bins = 5:
    # (.8, 1]: |.5 - .9| = .4; (.6, .8]: |1 - .7| = .3; (.4, .6]: |0 - .6| = .6; others empty
    # MCE = max(.4, .3, .6) = 0.6  (ECE weighted the same gaps down to 0.425)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    assert m.mce(probs, labels, n_bins=5) == pytest.approx(0.6)
    # one bin: |acc .5 - mean conf .775| = 0.275
    assert m.mce(probs, labels, n_bins=1) == pytest.approx(0.275)


def test_mce_bounds_and_matches_reliability_bins() -> None:
    rng = np.random.default_rng(50)
    probs, labels = _random_probs(rng, 400, 5)
    bins = m.reliability_bins(probs, labels, n_bins=10)
    gaps = np.abs(np.array(bins["accuracy"]) - np.array(bins["confidence"]))
    assert m.mce(probs, labels, n_bins=10) == pytest.approx(np.nanmax(gaps), abs=1e-12)
    assert m.mce(probs, labels, n_bins=10) >= m.ece(probs, labels, n_bins=10)
    # perfectly calibrated (see test_ece_perfectly_calibrated_is_zero) -> 0
    cal = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 5)
    cal_labels = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert m.mce(cal, cal_labels) == pytest.approx(0.0, abs=1e-12)


def test_calibration_direction() -> None:
    # HAND: mean conf (.7 + .6 + .4 + .5) / 4 = .55, accuracy .5 -> +0.05 (over-confident)
    assert m.calibration_direction(HAND_PROBS, HAND_LABELS) == pytest.approx(0.05)
    # conf .6 everywhere, all right -> .6 - 1 = -0.4 (under-confident)
    probs = np.array([[0.6, 0.4]] * 3)
    assert m.calibration_direction(probs, np.zeros(3, dtype=int)) == pytest.approx(-0.4)
    # with one bin, |direction| is the ECE
    rng = np.random.default_rng(51)
    p, y = _random_probs(rng, 200, 3)
    assert abs(m.calibration_direction(p, y)) == pytest.approx(m.ece(p, y, n_bins=1), abs=1e-12)


# ------------------------------------------------------------------------------------
# selective prediction: AURC
# ------------------------------------------------------------------------------------


def _aurc_reference(probs: np.ndarray, labels: np.ndarray) -> float:
    conf = probs.max(axis=1)
    wrong = probs.argmax(axis=1) != labels
    order = sorted(range(len(conf)), key=lambda i: -conf[i])  # stable
    return float(np.mean([wrong[order[:i]].mean() for i in range(1, len(conf) + 1)]))


def test_aurc_hand() -> None:
    # HAND conf / correct: .7 r, .6 w, .4 r, .5 w; descending .7 r, .6 w, .5 w, .4 r
    # errors among top i: 0, 1, 2, 2 -> risks 0/1, 1/2, 2/3, 2/4
    # AURC = (0 + .5 + .666667 + .5) / 4 = 1.666667 / 4 = 5/12 = 0.416667
    assert m.aurc(HAND_PROBS, HAND_LABELS) == pytest.approx(5 / 12)


def test_aurc_ties_keep_input_order_and_extremes() -> None:
    # equal conf .5: [wrong, right] -> risks 1/1, 1/2 -> 0.75; [right, wrong] -> 0, 1/2 -> 0.25
    probs = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert m.aurc(probs, np.array([1, 0])) == pytest.approx(0.75)
    assert m.aurc(probs, np.array([0, 1])) == pytest.approx(0.25)
    # all right -> 0; all wrong -> 1
    assert m.aurc(np.eye(3), np.arange(3)) == 0.0
    assert m.aurc(np.eye(3), np.array([1, 2, 0])) == 1.0


def test_aurc_matches_reference_and_rewards_ranking() -> None:
    rng = np.random.default_rng(60)
    probs, labels = _random_probs(rng, 300, 4)
    probs = np.round(probs, 2)
    assert m.aurc(probs, labels) == pytest.approx(_aurc_reference(probs, labels), abs=1e-12)
    # make the right answers the most confident: AURC must drop
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    boosted = np.where(right[:, None], probs, probs * 0.5)
    boosted[np.arange(300), probs.argmax(axis=1)] = np.where(right, 0.99, conf * 0.5)
    assert m.aurc(boosted, labels) < m.aurc(probs, labels)


# ------------------------------------------------------------------------------------
# OOD: AUPR
# ------------------------------------------------------------------------------------


def test_aupr_hand() -> None:
    # id = [.9, .6, .3], ood = [.6, .6, .2]; score -conf, so thresholds in ascending conf:
    # conf <= .2: tp 1 fp 0 -> P 1,   R 1/3
    # conf <= .3: tp 1 fp 1 -> P 1/2, R 1/3
    # conf <= .6: tp 3 fp 2 -> P 3/5, R 1     (the tie {id .6, ood .6, ood .6} is one threshold)
    # conf <= .9: tp 3 fp 3 -> P 1/2, R 1
    # AP = 1/3 * 1 + 0 * 1/2 + 2/3 * 3/5 + 0 = 1/3 + 2/5 = 11/15 = 0.733333
    # (breaking the tie id-first would give 0.7, ood-first 29/36 = 0.805556)
    assert m.aupr(np.array([0.9, 0.6, 0.3]), np.array([0.6, 0.6, 0.2])) == pytest.approx(11 / 15)


def test_aupr_degenerate() -> None:
    # perfect separation -> 1; all equal -> one threshold: P = n_ood / N = 3/8
    id_hi, ood_lo = np.array([0.8, 0.9]), np.array([0.1, 0.2])
    assert m.aupr(id_hi, ood_lo) == 1.0
    assert m.aupr(np.full(5, 0.4), np.full(3, 0.4)) == pytest.approx(3 / 8)
    # reversed: both ID ranked first; OOD hits at ranks 3, 4: AP = (1/3 + 2/4) / 2 = 5/12
    assert m.aupr(ood_lo, id_hi) == pytest.approx(5 / 12)


@pytest.mark.parametrize("rounding", [None, 1, 2])
def test_aupr_matches_sklearn(rounding: int | None) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(70 + (rounding or 0))
    id_conf = rng.beta(5, 2, size=600)
    ood_conf = rng.beta(2, 3, size=300)
    if rounding is not None:  # many ties
        id_conf, ood_conf = np.round(id_conf, rounding), np.round(ood_conf, rounding)
    y = np.concatenate([np.zeros(600), np.ones(300)])
    score = -np.concatenate([id_conf, ood_conf])
    assert m.aupr(id_conf, ood_conf) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_aupr_degenerate_match_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    cases = [
        (np.array([0.8, 0.9]), np.array([0.1, 0.2])),
        (np.array([0.1, 0.2]), np.array([0.8, 0.9])),
        (np.full(5, 0.4), np.full(3, 0.4)),
        (np.array([0.5]), np.array([0.5, 0.5, 0.1])),
    ]
    for id_conf, ood_conf in cases:
        y = np.concatenate([np.zeros(len(id_conf)), np.ones(len(ood_conf))])
        expected = average_precision_score(y, -np.concatenate([id_conf, ood_conf]))
        assert m.aupr(id_conf, ood_conf) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------
# OOD scores
# ------------------------------------------------------------------------------------


def test_entropy_score() -> None:
    # [.5 .5 0]: -(2 * .5 ln 2) = -ln 2 (0 ln 0 = 0); one-hot: 0; uniform over 4: -ln 4
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.25] * 4])
    np.testing.assert_allclose(m.entropy_score(probs), [-math.log(2), 0.0, -math.log(4)], atol=1e-15)
    rng = np.random.default_rng(80)
    p, _ = _random_probs(rng, 50, 6)
    np.testing.assert_allclose(m.entropy_score(p), np.sum(p * np.log(p), axis=1), rtol=1e-12)
    # more peaked -> higher (more in-distribution) score
    assert m.entropy_score(np.array([[0.9, 0.1]]))[0] > m.entropy_score(np.array([[0.6, 0.4]]))[0]
    with pytest.raises(InputError):
        m.entropy_score(np.array([[1.5, -0.5]]))


def test_max_logit_score() -> None:
    logits = np.array([[1.0, -2.0, 3.5], [-1.0, -0.5, -7.0]])
    np.testing.assert_array_equal(m.max_logit_score(logits), [3.5, -0.5])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_energy_score_matches_float64_logsumexp(temperature: float) -> None:
    rng = np.random.default_rng(90)
    logits = rng.normal(scale=3.0, size=(40, 7))
    expected = temperature * np.log(np.sum(np.exp(logits.astype(np.float64) / temperature), axis=1))
    np.testing.assert_allclose(m.energy_score(logits, temperature=temperature), expected, rtol=1e-12)


def test_energy_score_large_logits_and_limits() -> None:
    # logits 1e4: naive exp overflows; lse([1e4, 1e4, 1e4 - 1]) = 1e4 + ln(2 + e^-1)
    logits = np.array([[1e4, 1e4, 1e4 - 1.0], [-1e4, 0.0, 1e4]])
    out = m.energy_score(logits)
    assert np.all(np.isfinite(out))
    assert out[0] == pytest.approx(1e4 + math.log(2 + math.exp(-1)), rel=1e-15)
    assert out[1] == pytest.approx(1e4, rel=1e-15)
    # small T tends to the max logit; a constant row gives max + T ln C
    z = np.array([[2.0, 1.0, -3.0]])
    assert m.energy_score(z, temperature=1e-3)[0] == pytest.approx(2.0, abs=1e-12)
    assert m.energy_score(np.full((1, 4), 5.0), temperature=2.0)[0] == pytest.approx(5 + 2 * math.log(4))
    assert np.all(np.isfinite(m.energy_score(logits, temperature=1e-300)))


# ------------------------------------------------------------------------------------
# input validation for the additions
# ------------------------------------------------------------------------------------

NEW_CLASSIFICATION: list[Callable[..., float]] = [
    m.balanced_accuracy,
    m.adaptive_ece,
    m.mce,
    m.calibration_direction,
    m.aurc,
    lambda p, y: m.top_k_accuracy(p, y, 1),
]


@pytest.mark.parametrize("fn", NEW_CLASSIFICATION)
@pytest.mark.parametrize(
    ("probs", "labels"),
    [
        (np.array([0.6, 0.4]), LABELS),  # probs 1-D
        (np.zeros((0, 2)), np.zeros(0, dtype=int)),  # empty
        (PROBS, np.array([0, 1, 1])),  # N mismatch
        (PROBS, np.array([0, 2])),  # label out of range
        (PROBS, np.array([0.0, 1.0])),  # float labels
        (np.array([[np.nan, 1.0], [0.5, 0.5]]), LABELS),  # NaN
    ],
)
def test_new_classification_bad_inputs(fn: Callable[..., float], probs: np.ndarray, labels: np.ndarray) -> None:
    with pytest.raises(InputError):
        fn(probs, labels)


def test_new_bad_arguments() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="n_bins"):
            m.adaptive_ece(PROBS, LABELS, n_bins=bad)
        with pytest.raises(InputError, match="n_bins"):
            m.mce(PROBS, LABELS, n_bins=bad)
        with pytest.raises(InputError, match="k must"):
            m.top_k_accuracy(PROBS, LABELS, bad)
    for bad_t in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(InputError, match="temperature"):
            m.energy_score(PROBS, temperature=bad_t)


@pytest.mark.parametrize("fn", [m.entropy_score, m.max_logit_score, m.energy_score])
@pytest.mark.parametrize(
    "values",
    [np.array([0.5, 0.5]), np.ones((1, 2, 2)), np.zeros((0, 3)), np.zeros((2, 0)), np.array([[np.inf, 0.0]])],
)
def test_ood_scores_bad_inputs(fn: Callable[..., np.ndarray], values: np.ndarray) -> None:
    with pytest.raises(InputError):
        fn(values)


@pytest.mark.parametrize(
    ("id_conf", "ood_conf"),
    [
        (np.ones((2, 2)), np.ones(3)),
        (np.ones(3), np.ones((3, 1))),
        (np.zeros(0), np.ones(3)),
        (np.ones(3), np.zeros(0)),
        (np.array([0.5, np.nan]), np.ones(3)),
    ],
)
def test_aupr_bad_inputs(id_conf: np.ndarray, ood_conf: np.ndarray) -> None:
    with pytest.raises(InputError):
        m.aupr(id_conf, ood_conf)
