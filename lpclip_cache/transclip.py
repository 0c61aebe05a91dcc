"""TransCLIP (Zanella, Gérin, Ben Ayed, NeurIPS 2024), zero-shot and "atop" another method: a
transductive, training-free refinement of a CLIP classifier's predictions on a set of test
embeddings, written from the paper's update equations (the public solver is AGPL-3.0).

Given the test images' L2-normalised embeddings x_i (N x D), the zero-shot head's unit rows t_c
(K x D) and initial predictions y_i (zero-shot: the teacher's own probabilities
softmax((s / T) x_i . t_c) at its logit scale s and temperature T, 100 and 1 for pretrained CLIP as
the paper uses; or another method's probabilities "atop" it), the solver alternates, for ``OUTER_ITERATIONS`` rounds:

- z-step (``INNER_Z_STEPS`` times): z_i ∝ y_i^λ · exp((log N(x_i; μ_c, Σ) + (C / 2k) Σ_j (W_ij + W_ji) z_j) / C),
  with the Gaussian log-likelihood up to a constant, -½ Σ_d (x_id - μ_cd)² / σ_d, one diagonal
  variance shared by all classes, W the k-nearest-neighbour affinity (W_ij = x_i . x_j for the k
  nearest j of i, self excluded), λ = 1, C = 50 and k = 3;
- μ-step: μ_c = Σ_i z_ic x_i / Σ_i z_ic, then L2-normalised;
- σ-step: σ_d = Σ_i Σ_c z_ic (x_id - μ_cd)² / Σ_i Σ_c z_ic;

then a last z-step (normalised in the log domain; a class whose assignments all underflow to 0
keeps its previous mean, where the reference would divide 0 by 0). μ starts from the 8 most
confident images of each class (the mean of z_ic x_i over them, normalised) and σ from 1/D; σ is
floored at a millionth of 1/D (``SIGMA_FLOOR``), so a dimension constant over the rows (σ_d = 0,
where the reference's 1/σ_d is infinite and its assignments NaN) stays finite.
Every step is computed in chunks of ``chunk`` rows from expanded squares (‖x‖²/σ - 2 x.(μ/σ) +
‖μ‖²/σ), so memory is O(N K + N D), never N x K x D; the neighbours come from FAISS's exact
inner-product search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .knn import nearest_neighbors
from .numeric import softmax
from .zeroshot import TeacherScale

if TYPE_CHECKING:
    from .progress import Progress

OUTER_ITERATIONS = 10
INNER_Z_STEPS = 5
NEIGHBORS = 3
CONFIDENT = 8  # images per class that start its mean
TEMPERATURE = 50.0  # the constant C of the z-step
LAMBDA = 1.0
CHUNK = 4096
SIGMA_FLOOR = 1e-6  # σ_d is at least this times its start 1/D (see sigma_step)
PROGRESS_FROM = 10_000_000  # images x classes from which evaluate shows the rounds' progress (about 10 s)


def check_size(n: int, what: str) -> None:
    """The one check of a set's size before TransCLIP: an InputError unless ``n``, the number of
    images ``what`` names (a store's valid images, a dataset, an option), is more than
    ``NEIGHBORS``, the neighbours of each image in its graph (self excluded)."""
    if n <= NEIGHBORS:
        raise InputError(f"{what} must be more than {NEIGHBORS}: TransCLIP needs more than {NEIGHBORS} images for "
                         f"its {NEIGHBORS}-nearest-neighbour graph (got {n})")


@dataclass
class TransclipResult:
    z: np.ndarray  # N x K soft assignments (rows sum to 1)
    mu: np.ndarray  # K x D class means (unit rows)
    sigma: np.ndarray  # D shared variances
    neighbors: np.ndarray  # N x k nearest neighbours (self excluded)


def zero_shot(x: np.ndarray, t: np.ndarray, teacher: TeacherScale, chunk: int = CHUNK) -> np.ndarray:
    """The initial predictions: the teacher's probabilities softmax((s / T) x . t), chunk by chunk."""
    out = np.empty((len(x), len(t)), np.float64)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = softmax(teacher.factor * x[start : start + chunk] @ t.T, np.float64)
    return out


def affinity(neighbors: np.ndarray, similarities: np.ndarray, n: int) -> Any:
    """W (N x N, sparse): W_ij = x_i . x_j for the k nearest j of i, and W + W^T, which the z-step uses."""
    from scipy import sparse

    rows = np.repeat(np.arange(n), neighbors.shape[1])
    w = sparse.csr_matrix((similarities.ravel().astype(np.float64), (rows, neighbors.ravel())), shape=(n, n))
    return (w + w.T).tocsr()


def log_likelihood(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """-½ Σ_d (x_id - μ_cd)² / σ_d for every image and class (N x K), chunk by chunk."""
    inverse = 1.0 / sigma
    scaled_mu = mu * inverse  # K x D
    mu_term = (mu * scaled_mu).sum(axis=1)  # K
    out = np.empty((len(x), len(mu)), np.float64)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        x_term = (block * block * inverse).sum(axis=1, keepdims=True)
        out[start : start + chunk] = -0.5 * (x_term - 2.0 * block @ scaled_mu.T + mu_term)
    return out


def log_prior(prior: np.ndarray) -> np.ndarray:
    """λ log y: the z-step's prior term (a prior's exact zeros are -inf: the class is ruled out for
    that image)."""
    with np.errstate(divide="ignore"):
        return LAMBDA * np.log(prior)


def z_step(loglik: np.ndarray, logprior: np.ndarray, z: np.ndarray, symmetric: Any, k: int,
           chunk: int = CHUNK) -> np.ndarray:
    """``INNER_Z_STEPS`` updates of the assignments (the mean-field step of the paper's objective),
    normalised in the log domain, so a row whose terms all underflow in the product form (a small
    variance, a prior with exact zeros) still sums to one. Each update reads the previous z whole
    (the neighbours' messages W z) and writes the new one over those messages chunk by chunk, so it
    holds two N x K arrays besides the log-likelihood and the prior."""
    for _ in range(INNER_Z_STEPS):
        new = symmetric @ z  # the messages; each chunk of rows becomes its new assignments in place
        for start in range(0, len(new), chunk):
            rows = slice(start, start + chunk)
            new[rows] = softmax(logprior[rows] + (loglik[rows] + (TEMPERATURE / (2 * k)) * new[rows])
                                / TEMPERATURE, np.float64)
        z = new
    return z


def mu_step(x: np.ndarray, z: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Each class's z-weighted mean, L2-normalised; a class that holds no mass at all (every z_ic
    underflowed to 0) keeps its previous mean, where the plain ratio would be 0/0."""
    mass = z.sum(axis=0)
    empty = mass == 0
    mu = (z.T @ x) / np.where(empty, 1.0, mass)[:, None]
    mu = mu / np.linalg.norm(np.where(empty[:, None], 1.0, mu), axis=1, keepdims=True)
    mu[empty] = previous[empty]
    return mu


def sigma_step(x: np.ndarray, z: np.ndarray, mu: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """σ_d = Σ_i Σ_c z_ic (x_id - μ_cd)² / Σ z, expanded: Σ_i (Σ_c z_ic) x_id² - 2 Σ_c (Σ_i z_ic x_id) μ_cd
    + Σ_c (Σ_i z_ic) μ_cd², floored at ``SIGMA_FLOOR`` / D.

    A dimension constant over the rows (0 in every row, or every row the same unit vector) has
    σ_d = 0, or a rounding error either side of it, and 1/σ_d would make every log-likelihood
    inf - inf = NaN. The floor, a millionth of the start 1/D, keeps such a dimension finite: it then
    adds (x_id - μ_cd)² · D · 10⁶ with x_id = μ_cd up to rounding, nothing that tells classes apart."""
    mass = z.sum(axis=1)  # N
    column = z.sum(axis=0)  # K
    squares = np.zeros(x.shape[1], np.float64)
    weighted = np.zeros_like(mu)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        squares += (mass[start : start + chunk, None] * block * block).sum(axis=0)
        weighted += z[start : start + chunk].T @ block
    total = squares - 2.0 * (weighted * mu).sum(axis=0) + (column[:, None] * mu * mu).sum(axis=0)
    return np.maximum(total / z.sum(), SIGMA_FLOOR / x.shape[1])


def initial_means(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each class's mean of z_ic x_i over its ``CONFIDENT`` highest z_ic, L2-normalised."""
    count = min(CONFIDENT, len(x))
    top = np.argpartition(-z, count - 1, axis=0)[:count]  # count x K image indices
    classes = np.arange(z.shape[1])
    mu = (z[top, classes][..., None] * x[top]).mean(axis=0)  # K x D
    return mu / np.linalg.norm(mu, axis=1, keepdims=True)


def transclip(embeddings: np.ndarray, head: np.ndarray, teacher: TeacherScale | None = None,
              initial: np.ndarray | None = None, chunk: int = CHUNK, neighbors: int = NEIGHBORS,
              progress: Progress | None = None) -> TransclipResult:
    """TransCLIP's assignments of ``embeddings`` (N x D, unit rows) to the classes of ``head``
    (K x D, unit rows): zero-shot from the ``teacher``'s own probabilities (its scale and
    temperature), or atop ``initial`` (N x K probabilities from another method). ``progress`` (a
    ``Progress`` of ``OUTER_ITERATIONS`` + 1 rounds) counts each round's z-step as it ends."""
    x = np.asarray(embeddings, np.float64)
    t = np.asarray(head, np.float64)
    if len(x) <= neighbors:
        raise ValueError(f"TransCLIP needs more than {neighbors} images (its {neighbors}-nearest-neighbour "
                         f"graph); got {len(x)}")
    if (initial is None) == (teacher is None):
        raise ValueError("TransCLIP starts from the teacher's probabilities (teacher=) or another method's (initial=)")
    z = zero_shot(x, t, teacher, chunk) if initial is None else np.array(initial, np.float64)
    logprior = log_prior(z)
    mu = initial_means(x, z)
    sigma = np.full(x.shape[1], 1.0 / x.shape[1])
    ids, sims = nearest_neighbors(x, neighbors, chunk)
    symmetric = affinity(ids, sims, len(x))
    for round_ in range(OUTER_ITERATIONS + 1):
        z = z_step(log_likelihood(x, mu, sigma, chunk), logprior, z, symmetric, neighbors, chunk)
        if progress is not None:
            progress.update()
        if round_ == OUTER_ITERATIONS:
            break
        mu = mu_step(x, z, mu)
        sigma = sigma_step(x, z, mu, chunk)
    return TransclipResult(z=z, mu=mu, sigma=sigma, neighbors=ids)
