"""What opening ``wds:`` shards costs: the project's tar index and fingerprint, side by side.

    python benchmarks/wds_index.py [--shards 1000] [--samples 20] [--repeats 3]

Writes ``--shards`` tars of ``--samples`` samples each (a real CIFAR-10 JPEG and a ``.cls``, with
WebDataset's ``TarWriter``) into a temporary folder, then times, taking turns so that the
machine's changing load falls on each:

- ``index``: ``open_source("wds:FOLDER")``: every shard indexed with ``tarfile`` (names, offsets,
  sizes, header checksums, how the archive ends), every ``.cls`` read, the samples grouped by key;
- ``fingerprint``: ``source.fingerprint()`` on the opened source (a hash of the index);
- ``wids``: the earlier reader's index of the same shards (``wids.IndexedTarSamples``, which
  reads only ustar names), every ``.cls`` read, as ``webdata`` did before;
- ``sha256``: hashing every byte of every shard (what a full content digest would cost).

Lines: ``what seconds per_shard_ms ratio_to_index`` (fastest of ``--repeats``).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT / "tests" / "data" / "cifar10" / "test"


def write(folder: Path, shards: int, samples: int) -> list[Path]:
    import webdataset as wds

    images = sorted(CIFAR.rglob("*.jpg"))
    paths = []
    for number in range(shards):
        path = folder / f"{number:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(samples):
                image = images[(number * samples + i) % len(images)]
                sink.write({"__key__": f"{number:05d}-{i:04d}", "jpg": image.read_bytes(),
                            "cls": str(i % 10).encode()})
        paths.append(path)
    return paths


def main() -> None:
    from lpclip_cache.data import open_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write(folder, args.shards, args.samples)
        opened = {}

        def index() -> None:
            opened["source"] = open_source(f"wds:{folder}", progress=False)

        def fingerprint() -> None:
            opened["source"].fingerprint()

        def wids_index() -> None:
            from wids.wids import IndexedTarSamples

            for path in paths:
                reader = IndexedTarSamples(path=str(path), index_file=None)
                names = list(reader.reader.names())
                for members in reader.samples:
                    for i in members:
                        if names[i].endswith(".cls"):
                            reader.reader.get_file(i)[1].read()
                reader.close()

        def sha256() -> None:
            for path in paths:
                hashlib.sha256(path.read_bytes()).digest()

        runs = {"index": index, "fingerprint": fingerprint, "wids": wids_index, "sha256": sha256}
        times: dict[str, list[float]] = {name: [] for name in runs}
        index()  # warm the page cache and the imports
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        best = {name: min(values) for name, values in times.items()}
        size = sum(p.stat().st_size for p in paths)
        print(f"shards={args.shards} samples_per_shard={args.samples} bytes={size}")
        for name, seconds in best.items():
            print(f"{name} seconds={seconds:.3f} per_shard_ms={1000 * seconds / args.shards:.3f} "
                  f"ratio_to_index={seconds / best['index']:.3f}")


if __name__ == "__main__":
    main()
