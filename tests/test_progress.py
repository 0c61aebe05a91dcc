"""The progress line: counts, percentage, rate, ETA, and a finished line at the total."""

from __future__ import annotations

import io

from lpclip_cache.progress import Progress, format_seconds


def test_progress_reports_rate_eta_and_finishes():
    stream = io.StringIO()
    progress = Progress(8, "extract s.zarr", "img", stream=stream, interval=0)
    progress.update(2)
    first = stream.getvalue().splitlines()[0]
    assert first.startswith("extract s.zarr: 2/8 img ( 25.0%)") and "img/s ETA " in first
    progress.update(6)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("extract s.zarr: 8/8 img (100.0%)") and "done in" in lines[-1]
    assert len(lines) == 2


def test_disabled_progress_writes_nothing_and_seconds_read_well():
    stream = io.StringIO()
    progress = Progress(3, "x", stream=stream, enabled=False)
    progress.update(3)
    progress.close()
    assert stream.getvalue() == ""
    assert (format_seconds(5), format_seconds(185), format_seconds(3720)) == ("5s", "3m05s", "1h02m")


def test_the_test_hold_stops_a_progress_at_its_count_until_released(monkeypatch):
    """The test hook (LPCLIP_CACHE_TEST_HOLD): a progress line of the named unit that reaches the
    count reports it and waits until the release descriptor reads end-of-file; other units pass."""
    import os
    import select
    import threading

    from lpclip_cache.progress import HOLD_VARIABLE

    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    monkeypatch.setenv(HOLD_VARIABLE, f"img:3:{report_write}:{release_read}")
    Progress(10, "other", "samples", enabled=False).update(10)  # another unit: never held
    progress = Progress(10, "extract", "img", enabled=False)
    done_when_held = []

    def work() -> None:
        for _ in range(5):
            progress.update(2)
            done_when_held.append(progress.done)

    worker = threading.Thread(target=work)
    worker.start()
    assert select.select([report_read], [], [], 60)[0]
    assert os.read(report_read, 100) == b"img 3\n"
    assert done_when_held == [2]  # held inside the update that reached 4 >= 3
    os.close(release_write)
    worker.join(60)
    assert not worker.is_alive() and done_when_held == [2, 4, 6, 8, 10]
    for fd in (report_read, report_write, release_read):
        os.close(fd)
