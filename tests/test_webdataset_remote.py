"""``wds:`` shards on object storage, against moto's real S3 server (the ``s3`` fixture of
test_object_store: started on 127.0.0.1, reached through s3fs as a user's ``s3://`` shards are):
the local copy of a shard is current on every run, and processes copying the same shard at once
never see each other's partial file."""

from __future__ import annotations

import threading
from pathlib import Path

from test_object_store import s3  # noqa: F401 (a fixture)
from test_webdataset_integrity import extract_cli, rows, samples, tar_of


def test_a_shard_replaced_remotely_is_copied_again(tiny_checkpoint, s3, tmp_path, monkeypatch):  # noqa: F811
    """s3://.../0.tar replaced by the same images with other labels (the same size: only the
    ETag and the modification time tell): a new store holds the new labels."""
    monkeypatch.setenv("LPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    keys = [f"k{n}" for n in range(4)]
    for labels, out in (([0, 1, 2, 3], "old.zarr"), ([3, 2, 1, 0], "new.zarr")):
        shard = tar_of(tmp_path / "upload" / "0.tar", samples(keys, labels))
        s3.fs.put_file(str(shard), s3.url("stale/0.tar"))
        result = extract_cli(tmp_path, f"wds:{s3.url('stale/0.tar')}", tiny_checkpoint, out=out)
        assert result.returncode == 0, result.stderr
        assert rows(tmp_path / out) == dict(zip(keys, labels))
    assert len(list((tmp_path / "cache" / "shards").rglob("0.tar"))) == 1  # the old copy is gone


def test_two_processes_copying_one_shard_never_see_a_partial_file(s3, tmp_path, monkeypatch):  # noqa: F811
    """Two ranks copy the same shard at once, forced to interleave: the second is half-way through
    its download when the first has finished. The first indexes a whole file, and so does the
    second once done: every key with its label, in both."""
    from lpclip_cache.data import open_source
    from lpclip_cache.storage import filesystem

    monkeypatch.setenv("LPCLIP_CACHE_DIR", str(tmp_path / "cache"))
    keys, labels = [f"k{n}" for n in range(6)], [5, 4, 3, 2, 1, 0]
    s3.fs.put_file(str(tar_of(tmp_path / "upload" / "0.tar", samples(keys, labels))), s3.url("race/0.tar"))
    fs, _ = filesystem(s3.url("race/0.tar"))
    real_get_file = fs.get_file
    first_done, second_half_written = threading.Event(), threading.Event()

    def get_file(remote: str, local: str, **kwargs) -> None:
        if threading.current_thread().name == "first":
            real_get_file(remote, local, **kwargs)
            assert second_half_written.wait(60)  # the second rank is writing its copy now
            return
        data = fs.cat_file(remote)  # the second rank: a slow download, its bytes from the server
        with open(local, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            second_half_written.set()
            assert first_done.wait(60)  # the first rank has indexed its copy meanwhile
            handle.write(data[len(data) // 2 :])

    monkeypatch.setattr(fs, "get_file", get_file)
    found: dict[str, object] = {}

    def rank(name: str) -> None:
        try:
            source = open_source(f"wds:{s3.url('race/0.tar')}")
            source.admit(10, skip_bad=False)
            found[name] = dict(zip(source.keys, source.labels.tolist()))
        except Exception as exc:  # reported below, as the rank would have failed
            found[name] = exc
        finally:
            if name == "first":
                first_done.set()

    threads = [threading.Thread(target=rank, args=(name,), name=name) for name in ("first", "second")]
    threads[0].start()
    threads[1].start()
    for thread in threads:
        thread.join(120)
    assert found == {"first": dict(zip(keys, labels)), "second": dict(zip(keys, labels))}
    copies = [p for p in (tmp_path / "cache" / "shards").rglob("*") if p.is_file()]
    assert [p.name for p in copies] == ["0.tar"] and Path(copies[0]).read_bytes() == s3.fs.cat_file(
        s3.url("race/0.tar"))
