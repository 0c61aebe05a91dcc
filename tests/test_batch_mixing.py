"""Training batches mix classes as a uniform shuffle does, even from a class-sorted folder.

An ImageFolder lists its samples class by class. The store is written through the real
extraction from such a folder (200 classes), then the batches training would form are counted,
in memory and streamed, against a brute-force uniform shuffle of the same labels.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.sampling import PairSource
from lpclip_cache.store import FeatureStore, row_order

CLASSES, PER_CLASS, SHARD, BATCH = 200, 10, 32, 256


@pytest.fixture(scope="module")
def sorted_store(tiny_checkpoint, tmp_path_factory) -> FeatureStore:
    """A store extracted from a 200-class folder, whose sample list is sorted by class."""
    base = tmp_path_factory.mktemp("sorted")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = base / "data" / f"class_{c:03d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = base / "store.zarr"
    extract(ExtractConfig(data=str(base / "data"), out=str(out), model="test-tiny", pretrained=str(tiny_checkpoint),
                          weak_views=1, strong_views=1, shard_size=SHARD, num_workers=0, device="cpu",
                          templates="simple", progress=False))
    return FeatureStore(out)


def distinct_per_batch(label_batches: list[np.ndarray]) -> float:
    """The mean number of distinct classes in the full batches given."""
    return float(np.mean([np.unique(b).size for b in label_batches if b.size == BATCH]))


def training_batches(store: FeatureStore, memory_budget: int, epochs: int = 3) -> tuple[list[np.ndarray], bool]:
    """The true labels of each batch that training forms (rows sliced from each buffer in turn), and
    whether the store was streamed."""
    source = PairSource(store, "weak", "strong", need_truth=True, memory_budget=memory_budget)
    found = []
    for epoch in range(epochs):
        for buffer in source.epoch(seed=0, epoch=epoch):
            truth = buffer.truth()
            found += [truth[start: start + BATCH] for start in range(0, truth.size, BATCH)]
    return found, source.streaming


def uniform_reference(labels: np.ndarray, repeats: int = 20) -> float:
    """Brute force: shuffle every label uniformly, cut into batches, count classes per batch."""
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(repeats):
        shuffled = labels[rng.permutation(labels.size)]
        counts.append(distinct_per_batch([shuffled[s: s + BATCH] for s in range(0, shuffled.size, BATCH)]))
    return float(np.mean(counts))


@pytest.mark.parametrize("memory_budget", [1 << 30, 0], ids=["in-memory", "streaming"])
def test_batches_mix_classes_like_a_uniform_shuffle(sorted_store, memory_budget):
    batches, streaming = training_batches(sorted_store, memory_budget)
    assert streaming == (memory_budget == 0)
    uniform = uniform_reference(sorted_store.labels())
    assert uniform > 130  # about 144 of 200 classes in 256 draws from 2,000 samples
    assert distinct_per_batch(batches) >= 0.9 * uniform


def test_keys_map_every_row_to_its_file(sorted_store):
    keys = sorted_store.read("keys").tolist()
    labels = sorted_store.labels()
    folder_order = [f"class_{c:03d}/{i}.png" for c in range(CLASSES) for i in range(PER_CLASS)]
    assert keys == [folder_order[i] for i in row_order(CLASSES * PER_CLASS)]
    # the class folder of each row's file is its label (folders are classes in sorted order)
    assert [int(key.split("/")[0][len("class_"):]) for key in keys] == labels.tolist()


def test_row_order_is_a_fixed_permutation():
    first, again = row_order(1000), row_order(1000)
    np.testing.assert_array_equal(first, again)
    assert sorted(first.tolist()) == list(range(1000))
    assert not np.array_equal(first, np.arange(1000))
