"""The store's contract: validation on open, unwritten data visible, the cache key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import clustered_embeddings, write_store

from lpclip_cache.errors import StoreError
from lpclip_cache.store import FeatureStore, Layout, cache_key, create_store


def manifest(**extra):
    return {"model": {"name": "m"}, "classnames": ["a", "b"], "teacher": {"logit_scale": 1, "temperature": 1}, **extra}


def test_new_store_is_incomplete_and_unwritten_data_reads_as_nan(tmp_path):
    create_store(tmp_path / "s.zarr", Layout(10, 4, 2, 1, 0, 4), manifest())
    with pytest.raises(StoreError, match=r"incomplete \(0 of 3 shards written\)"):
        FeatureStore(tmp_path / "s.zarr")
    store = FeatureStore(tmp_path / "s.zarr", require_complete=False)
    assert np.isnan(store.read("clean/emb")).all()
    assert (store.read("weak/label") == -1).all() and (store.labels() == -1).all()
    assert not store.has("strong/emb")
    # chunks along N are one shard long: the unit one writer owns
    assert zarr.open_array(str(tmp_path / "s.zarr" / "weak" / "emb")).chunks == (4, 1, 4)


def test_store_from_a_newer_format_is_refused(tmp_path):
    _, labels, clean, _ = clustered_embeddings(20, 2, 4, 0.1)
    path = write_store(tmp_path / "s.zarr", clean, np.eye(2, 4), labels)
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["lpclip_cache"]["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format version 99, newer"):
        FeatureStore(path)


def test_cache_key_depends_on_every_manifest_field():
    base = manifest(views={"seed": 0})
    assert cache_key(base) == cache_key(json.loads(json.dumps(base)))
    assert cache_key(base) != cache_key(manifest(views={"seed": 1}))
    assert cache_key(base) != cache_key({**base, "classnames": ["a", "c"]})


def test_embeddings_are_stored_uncompressed(tmp_path):
    create_store(tmp_path / "s.zarr", Layout(8, 4, 2, 0, 2, 8), manifest())
    assert zarr.open_array(str(tmp_path / "s.zarr" / "strong" / "emb")).compressors == ()


def test_embeddings_can_be_compressed_on_request(tmp_path):
    create_store(tmp_path / "s.zarr", Layout(8, 4, 2, 0, 2, 8), manifest(storage={"compression": "zstd"}))
    codecs = zarr.open_array(str(tmp_path / "s.zarr" / "strong" / "emb")).compressors
    assert len(codecs) == 1 and type(codecs[0]).__name__ == "ZstdCodec"
    assert zarr.open_array(str(tmp_path / "s.zarr" / "labels")).compressors == ()
