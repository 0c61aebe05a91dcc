"""Latent-space analysis: how well clusters of an embedding space follow the classes.

FAISS spherical k-means on the L2-normalised clean embeddings (CLIP's space) and, with a run,
on the normalised probe logits (LP-CLIP's output space); each clustering is scored by purity,
NMI and ARI against the true labels (where known) and against the teacher's pseudo-labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics
from .errors import InputError


def spherical_kmeans(points: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 5) -> np.ndarray:
    """Cluster unit vectors with FAISS spherical k-means (every point counts); return assignments.

    ``nredo`` restarts keep the best of several initialisations (one can merge two clusters).
    """
    import faiss

    data = np.ascontiguousarray(points, dtype=np.float32)
    faiss.normalize_L2(data)
    n, dim = data.shape
    if not 1 <= k <= n:
        raise InputError(f"--k must be between 1 and the number of samples ({n}), got {k}")
    kmeans = faiss.Kmeans(
        dim, k, niter=niter, nredo=nredo, spherical=True, seed=seed, max_points_per_centroid=n,
        min_points_per_centroid=1, verbose=False,
    )
    kmeans.train(data)
    _, assignment = kmeans.index.search(data, 1)
    return assignment[:, 0].astype(np.int64)


def agreement(clusters: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Purity, NMI and ARI of a clustering against a reference labelling."""
    return {
        "purity": metrics.cluster_purity(clusters, reference),
        "nmi": metrics.normalized_mutual_info(clusters, reference),
        "ari": metrics.adjusted_rand_index(clusters, reference),
    }


def score_space(points: np.ndarray, k: int, seed: int, references: dict[str, np.ndarray]) -> dict[str, Any]:
    """Cluster one space and score it against every reference labelling."""
    clusters = spherical_kmeans(points, k, seed)
    return {
        "dim": int(points.shape[1]),
        "clusters_used": int(np.unique(clusters).size),
        **{f"vs_{name}": agreement(clusters, ref) for name, ref in references.items()},
    }


def latent_clusters(store_path: str, k: int, run_path: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Cluster CLIP's clean embeddings (and the probe's outputs) and compare with labels."""
    from .evaluate import check_compatible
    from .probe import load_run
    from .store import FeatureStore

    store = FeatureStore(store_path)
    valid = store.read("valid")
    emb = store.read("clean/emb")[valid].astype(np.float32)
    labels = store.labels()[valid]
    references: dict[str, np.ndarray] = {"pseudo_labels": store.read("clean/label")[valid].astype(np.int64)}
    if (labels >= 0).all():
        references["true_labels"] = labels.astype(np.int64)
    report: dict[str, Any] = {
        "store": store_path,
        "k": k,
        "samples": int(emb.shape[0]),
        "seed": seed,
        "kmeans": {"library": "faiss", "spherical": True, "niter": 25, "nredo": 5},
        "references": sorted(references),
        "spaces": {"clip": score_space(emb, k, seed, references)},
    }
    if run_path:
        run = load_run(run_path)
        check_compatible(run, store, "analysed")
        report["run"] = run_path
        report["spaces"]["probe"] = score_space(run.probe_logits(emb), k, seed, references)
    return report


def format_table(report: dict[str, Any]) -> str:
    """One row per (space, reference): purity, NMI, ARI."""
    lines = [f"{'space':<8} {'against':<14} {'purity':>7} {'nmi':>7} {'ari':>7}", "-" * 47]
    for space, entry in report["spaces"].items():
        for reference in report["references"]:
            values = entry[f"vs_{reference}"]
            lines.append(
                f"{space:<8} {reference:<14} {values['purity']:7.4f} {values['nmi']:7.4f} {values['ari']:7.4f}"
            )
    return "\n".join(lines)
