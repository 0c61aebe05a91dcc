"""TransCLIP's solver (lpclip_cache/transclip.py) against the paper's update equations written out
here a second time, densely and without chunks (N x K x D tensors, the full similarity matrix);
FAISS's neighbours against an exact sort; chunked against unchunked."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clustered_embeddings

from lpclip_cache import transclip as T


def dense_transclip(x: np.ndarray, head: np.ndarray, initial: np.ndarray | None = None, k: int = 3) -> np.ndarray:
    """The zero-shot TransCLIP iterations as the paper states them, computed the plain way."""
    n, d = x.shape
    logits = 100.0 * x @ head.T
    prior = initial if initial is not None else np.exp(logits - logits.max(1, keepdims=True))
    prior = prior / prior.sum(1, keepdims=True)
    z = prior.copy()
    # means: the 8 most confident images of each class, weighted by their z
    mu = np.stack([(z[np.argsort(-z[:, c], kind="stable")[:8], c][:, None]
                    * x[np.argsort(-z[:, c], kind="stable")[:8]]).mean(0) for c in range(head.shape[0])])
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma = np.full(d, 1.0 / d)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    w = np.zeros((n, n))
    for i in range(n):
        nearest = np.argsort(-similarity[i], kind="stable")[:k]
        w[i, nearest] = x[nearest] @ x[i]
    for round_ in range(11):
        loglik = -0.5 * (((x[:, None, :] - mu[None]) ** 2) / sigma).sum(-1)
        for _ in range(5):
            energy = loglik + 50.0 / (2 * k) * ((w + w.T) @ z)
            energy -= energy.max(1, keepdims=True)
            z = prior * np.exp(energy / 50.0)
            z /= z.sum(1, keepdims=True)
        if round_ == 10:
            return z
        mu = (z.T @ x) / z.sum(0)[:, None]
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        sigma = (z[:, :, None] * (x[:, None, :] - mu[None]) ** 2).sum((0, 1)) / z.sum()
    return z


@pytest.fixture(scope="module")
def world():
    """Clustered unit embeddings with a noisy zero-shot head (the cluster centres moved), so that the
    iterations change the assignments."""
    centres, labels, x, _ = clustered_embeddings(300, 6, 24, 0.9, seed=4)
    rng = np.random.default_rng(5)
    head = centres + 0.6 * rng.normal(size=centres.shape)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    return x, head, labels


def test_the_solver_follows_the_update_equations(world):
    x, head, _ = world
    np.testing.assert_allclose(T.transclip(x, head).z, dense_transclip(x, head), atol=1e-8, rtol=0)


def test_atop_another_methods_predictions(world):
    x, head, _ = world
    rng = np.random.default_rng(0)
    initial = T.softmax_rows(rng.normal(size=(len(x), head.shape[0])) * 3)
    result = T.transclip(x, head, initial=initial)
    np.testing.assert_allclose(result.z, dense_transclip(x, head, initial=initial), atol=1e-8, rtol=0)
    np.testing.assert_allclose(result.z.sum(1), 1.0, atol=1e-12)
    assert not np.allclose(result.z, T.transclip(x, head).z)


def test_faiss_neighbours_are_the_exact_ones():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, sims = T.nearest_neighbors(x, k=3, chunk=100)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    exact = np.argsort(-similarity, axis=1)[:, :3]
    np.testing.assert_array_equal(ids, exact)
    np.testing.assert_allclose(sims, np.take_along_axis(similarity, exact, 1), atol=1e-5)


def test_chunks_change_nothing(world):
    x, head, _ = world
    small, whole = T.transclip(x, head, chunk=7), T.transclip(x, head, chunk=10**6)
    np.testing.assert_allclose(small.z, whole.z, atol=1e-10, rtol=0)
    np.testing.assert_allclose(small.sigma, whole.sigma, rtol=1e-10)


def test_too_few_images_for_the_graph_is_refused():
    with pytest.raises(ValueError, match="more than 3 images"):
        T.transclip(np.eye(3), np.eye(3))
