"""The one k-nearest-neighbour search of the project: exact inner product (FAISS), each row itself
excluded by index wherever it ranks.

A search of a set against itself usually finds each row first, at similarity 1, but not always:
with duplicated embeddings another copy ties with the row and may rank before it, and with more
than k copies the row may not be among the first k + 1 at all. Dropping "the first result" would
then drop a copy and keep the row as its own neighbour. Here the row's own index is dropped
wherever it appears, and the first k others are kept. ``analysis.knn_agreement`` and TransCLIP's
neighbour graph both search through ``nearest_neighbors``.
"""

from __future__ import annotations

import numpy as np

CHUNK = 4096  # rows searched at once (the search's results hold CHUNK x (k + 1) ids)


def nearest_neighbors(points: np.ndarray, k: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of every row of ``points`` (N x D) by inner product, and their
    similarities (float32), each N x k, nearest first.

    Rows are searched as given: normalise them first for cosine similarity. Needs 1 <= k < N.
    """
    import faiss

    data = np.ascontiguousarray(points, dtype=np.float32)
    n = len(data)
    if not 1 <= k < n:
        raise ValueError(f"k nearest neighbours need 1 <= k < the number of rows ({n}), got k = {k}")
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    found_ids, found_sims = [], []
    for start in range(0, n, chunk):
        sims, ids = index.search(data[start : start + chunk], k + 1)
        itself = ids == np.arange(start, start + len(ids))[:, None]
        order = np.argsort(itself, axis=1, kind="stable")[:, :k]  # the row itself last, the others in rank order
        found_ids.append(np.take_along_axis(ids, order, axis=1))
        found_sims.append(np.take_along_axis(sims, order, axis=1))
    return np.concatenate(found_ids).astype(np.int64), np.concatenate(found_sims)
