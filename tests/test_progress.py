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
