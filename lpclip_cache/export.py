"""Copy a store into HDF5 for tools that cannot read Zarr (``export``), one shard of rows at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError


def export_hdf5(path: str, out: str, overwrite: bool = False) -> dict[str, Any]:
    """Copy a complete store into one HDF5 file, a local path or a URL (same array paths; manifest as
    JSON attribute)."""
    import h5py

    from .outputs import atomic_file, check_output, has_hdf5_attribute
    from .storage import filesystem
    from .store import FeatureStore

    store = FeatureStore(path)
    if Path(str(out)).suffix not in (".h5", ".hdf5"):
        raise InputError(f"--out '{out}' should end in .h5 or .hdf5")
    check_output(out, [path], overwrite, lambda there: has_hdf5_attribute(there, "lpclip_cache"),
                 "HDF5 export")  # the rename (or the upload) replaces it whole
    with atomic_file(out, "HDF5 export") as staging:
        with h5py.File(staging, "w") as handle:
            handle.attrs["lpclip_cache"] = json.dumps(store.meta, default=str)
            handle.attrs["cache_key"] = store.cache_key
            for name, (shape, _) in store.arrays().items():
                text = store.group[name].dtype.kind in "TUO"  # keys, reason, the shard records
                if text:
                    data = handle.create_dataset(name, shape=shape, dtype=h5py.string_dtype("utf-8"))
                else:
                    data = handle.create_dataset(name, shape=shape, dtype=store.group[name].dtype)
                for start, stop in store.spans(shape[0]):
                    block = store.read_rows(name, start, stop, check_finite=False)
                    data[start:stop] = block.astype(object) if text else block
    fs, inner = filesystem(out)
    return {"store": path, "out": str(out), "bytes": int(fs.size(inner))}
