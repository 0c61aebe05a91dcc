"""Latent-space analysis: how well clusters of an embedding space follow the classes.

FAISS spherical k-means on the L2-normalised clean embeddings (CLIP's space) and, with a run,
on the normalised probe logits (LP-CLIP's output space); each clustering is scored by purity,
NMI and ARI against the true labels (where known) and against the teacher's pseudo-labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .config import NEIGHBORS_K
from .errors import InputError

KINDS = ("clusters", "neighbors", "projection", "views")


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


def load_spaces(store_path: str, run_path: str | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The spaces to analyse (CLIP's clean embeddings, and the probe's logits with a run) and the
    reference labellings (teacher pseudo-labels, and true labels where every one is known)."""
    from .evaluation import check_compatible
    from .runs import load_run
    from .store import FeatureStore

    store = FeatureStore(store_path)
    valid = store.read("valid")
    emb = store.read("clean/emb")[valid].astype(np.float32)
    labels = store.labels()[valid]
    references: dict[str, np.ndarray] = {"pseudo_labels": store.read("clean/label")[valid].astype(np.int64)}
    if (labels >= 0).all():
        references["true_labels"] = labels.astype(np.int64)
    spaces = {"clip": emb}
    if run_path:
        run = load_run(run_path)
        check_compatible(run, store, "analysed")
        spaces["probe"] = run.probe_logits(emb)
    return spaces, references


def latent_clusters(
    store_path: str, k: int, run_path: str | None = None, seed: int = 0, sweep: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Cluster CLIP's clean embeddings (and the probe's outputs) and compare with labels; ``sweep``
    repeats the scores for other numbers of clusters."""
    spaces, references = load_spaces(store_path, run_path)
    report: dict[str, Any] = {
        "store": store_path,
        "k": k,
        "samples": int(spaces["clip"].shape[0]),
        "seed": seed,
        "kmeans": {"library": "faiss", "spherical": True, "niter": 25, "nredo": 5},
        "references": sorted(references),
        "spaces": {name: score_space(points, k, seed, references) for name, points in spaces.items()},
    }
    if sweep:
        report["sweep"] = {name: {str(kk): score_space(points, kk, seed, references) for kk in sweep}
                           for name, points in spaces.items()}
    if run_path:
        report["run"] = run_path
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


def knn_agreement(points: np.ndarray, labels: np.ndarray, k: int = NEIGHBORS_K) -> float:
    """Mean fraction of each point's k nearest neighbours (cosine, itself excluded wherever it ranks,
    so a duplicate of it counts as a neighbour and the point itself never does) sharing its label."""
    import faiss

    from .knn import nearest_neighbors

    data = np.ascontiguousarray(points, dtype=np.float32)
    faiss.normalize_L2(data)
    n = data.shape[0]
    if not 1 <= k < n:
        raise InputError(f"--k must be between 1 and the number of samples - 1 ({n - 1}), got {k}")
    neighbours, _ = nearest_neighbors(data, k)
    return float((labels[neighbours] == labels[:, None]).mean())


def class_geometry(points: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Silhouette (cosine distance) and mean intra- over inter-class distance, exactly via class means.

    For unit vectors the mean cosine distance from x to a set is 1 - x . (mean of the set), so
    both are O(N C D) without a pairwise matrix. A point alone in its class scores 0, as in the
    usual definition. A figure that is undefined (one class; no class of two or more points; no
    distance between classes) is None, and ``undefined`` says why.
    """
    x = points.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = counts[inverse] > 1
    if classes.size < 2:
        return {"silhouette": None, "intra_inter_ratio": None,
                "undefined": f"all {len(x)} points share one label: no other class to compare with"}
    if keep.sum() < 2:
        return {"silhouette": None, "intra_inter_ratio": None,
                "undefined": "every class holds one point: no distance within a class"}
    sums = np.zeros((classes.size, x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    dots = x @ means.T  # N x C: x . mean_c
    own = inverse
    own_count = counts[own]
    a = 1 - (own_count * dots[np.arange(len(x)), own] - 1) / np.maximum(own_count - 1, 1)
    other = 1 - dots
    other[np.arange(len(x)), own] = np.inf
    b = other.min(axis=1)
    silhouette = np.where(keep, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)  # 0 for singletons
    norms2 = (sums**2).sum(axis=1)
    intra_pairs = counts * (counts - 1)
    intra = float((intra_pairs - (norms2 - counts)).sum() / intra_pairs.sum())
    cross = sums @ sums.T
    pair_counts = np.outer(counts, counts).astype(np.float64)
    mask = ~np.eye(classes.size, dtype=bool)
    inter = float((pair_counts[mask] - cross[mask]).sum() / pair_counts[mask].sum())
    if inter <= 0:
        return {"silhouette": float(silhouette.mean()), "intra_inter_ratio": None,
                "undefined": "intra_inter_ratio: the classes' points coincide (mean distance between classes 0)"}
    return {"silhouette": float(silhouette.mean()), "intra_inter_ratio": intra / inter}


def latent_neighbors(store_path: str, k: int = NEIGHBORS_K, run_path: str | None = None) -> dict[str, Any]:
    """kNN label agreement, silhouette and intra/inter distance ratio of CLIP's space (and the probe's)."""
    spaces, references = load_spaces(store_path, run_path)
    report: dict[str, Any] = {"store": store_path, "k": k, "samples": int(spaces["clip"].shape[0]),
                              "references": sorted(references), "spaces": {}}
    for space, points in spaces.items():
        report["spaces"][space] = {
            f"vs_{name}": {"knn_agreement": knn_agreement(points, ref, k), **class_geometry(points, ref)}
            for name, ref in references.items()
        }
    if run_path:
        report["run"] = run_path
    return report


def projection_plot(store_path: str, out: str, run_path: str | None = None) -> dict[str, Any]:
    """A 2-D PCA projection of each space, coloured by true label, pseudo-label and correctness (PNG,
    written whole or not at all)."""
    from .figures.latent import projection_figure

    spaces, references = load_spaces(store_path, run_path)
    count = len(references["pseudo_labels"])
    if count < 3:
        raise InputError(f"analyze latent projection needs at least 3 valid images to draw a 2-D projection; store "
                         f"'{store_path}' has {count}")
    panels = [("pseudo-label", references["pseudo_labels"], "tab10")]
    if "true_labels" in references:
        correct = (references["pseudo_labels"] == references["true_labels"]).astype(int)
        panels = [("true label", references["true_labels"], "tab10"), *panels, ("teacher correct", correct, "RdYlGn")]
    projected, explained = {}, {}
    for name, points in spaces.items():
        centred = points.astype(np.float64) - points.mean(axis=0)
        _, singular, basis = np.linalg.svd(centred, full_matrices=False)
        projected[name] = centred @ basis[:2].T
        explained[name] = float((singular[:2] ** 2).sum() / (singular**2).sum())
    projection_figure(out, projected, panels, {"Software": PLOT_SOFTWARE})
    return {"store": store_path, "out": out, "spaces": list(spaces), "explained_variance_2d": explained}


PLOT_SOFTWARE = "lpclip-cache analyze latent projection"  # the PNG's Software text, which marks it as ours


def is_projection(path: str | Path) -> bool:
    """True when ``path`` (a local path or a URL) is a projection PNG this tool wrote (its Software
    text says so)."""
    from PIL import Image

    from .storage import open_read

    try:
        with open_read(path) as stream, Image.open(stream) as image:
            return image.format == "PNG" and image.info.get("Software") == PLOT_SOFTWARE
    except (OSError, ValueError):
        return False


def format_neighbors(report: dict[str, Any]) -> str:
    """One row per (space, reference): kNN agreement, silhouette, intra/inter ratio."""
    lines = [f"{'space':<8} {'against':<14} {'knn':>7} {'silh':>7} {'ratio':>7}", "-" * 47]
    notes = []
    for space, entry in report["spaces"].items():
        for reference in report["references"]:
            v = entry[f"vs_{reference}"]
            cells = " ".join(f"{'n/a':>7}" if v[key] is None else f"{v[key]:7.4f}"
                             for key in ("knn_agreement", "silhouette", "intra_inter_ratio"))
            lines.append(f"{space:<8} {reference:<14} {cells}")
            if "undefined" in v:
                notes.append(f"n/a ({space} against {reference}): {v['undefined']}")
    return "\n".join(lines + notes)


def analyze(kind: str, store: str, out: str | None = None, run: str | None = None, k: int | None = None,
            sweep: Sequence[int] = (), seed: int = 0, overwrite: bool = False,
            max_images: int | None = None) -> dict[str, Any]:
    """``lpclip-cache analyze latent KIND``: ``clusters`` (k-means purity/NMI/ARI; ``k`` defaults
    to the number of classes), ``neighbors`` (kNN agreement, silhouette, distance ratio; ``k``
    neighbours, default ``config.NEIGHBORS_K``) or ``projection`` (a PNG at ``out``); and
    ``lpclip-cache analyze views`` (``views``: whether the store's weak and strong views keep the
    class, on at most ``max_images`` images; no run, k or sweep). Writes ``out`` when given."""
    from .outputs import check_output, is_report, write_report

    if kind not in KINDS:
        raise InputError(f"analyze kind must be clusters, neighbors, projection or views, got '{kind}'")
    if kind == "views":
        from .viewcheck import MAX_IMAGES, analyze_views

        if run or k is not None or sweep:
            raise InputError("analyze views reads the store's own views: it takes no run, k or sweep")
        return analyze_views(str(store), str(out) if out else None, seed,
                             MAX_IMAGES if max_images is None else int(max_images), overwrite)
    if max_images is not None:
        raise InputError("max_images belongs to analyze views")
    store, run = str(store), (str(run) if run else None)
    inputs = [store, *([run] if run else [])]
    if kind == "projection":
        if not out:
            raise InputError("analyze projection needs out (the PNG file to write)")
        check_output(str(out), inputs, overwrite, is_projection, "plot")
        return projection_plot(store, str(out), run)  # written whole, then renamed (or put) over any old plot
    if out:
        check_output(str(out), inputs, overwrite, is_report, "report")
    if kind == "clusters":
        from .store import FeatureStore

        clusters = k if k is not None else FeatureStore(store).layout.n_classes
        result = latent_clusters(store, int(clusters), run, seed, tuple(int(v) for v in sweep))
    else:
        result = latent_neighbors(store, int(k) if k is not None else NEIGHBORS_K, run)
    if out:
        write_report(result, out, overwrite)
    return result
