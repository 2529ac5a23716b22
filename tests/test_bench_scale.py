"""bench/scale.py runs end to end on a tiny size and prints its figures line (the figures themselves are in bench/)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "load_ratio",
    "reload_ratio",
    "retention_seconds",
    "slowest_page_seconds",
    "budgets_ratio",
    "anomalies_ratio",
    "export_rows_per_s",
    "export_peak_rss_mb",
}


@pytest.mark.timeout(400)
def test_the_scale_benchmark_loads_months_times_every_reader_and_prints_its_figures():
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--rows", "3000", "--months", "2", "--accounts", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=380, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("scale rows=3000 months=2 lines=6000 "), last
    figures = dict(pair.split("=", 1) for pair in last.split()[1:])
    assert set(figures) >= KEYS
    assert figures["pages_not_ok"] == "0", out.stdout  # every admin list answered 200
    assert float(figures["load_ratio"]) > 0 and 0 < int(figures["export_peak_rss_mb"]) < 2000
    assert "month  2 " in out.stdout
    assert re.search(r"\(([\d,]+) lines, replaced \1\)", out.stdout), out.stdout  # the reload replaced its month
    assert "/admin/costs_app/costlineitem/?_facets=1" in out.stdout
    assert re.search(r"retention of [\d-]+: 3,000 lines \(", out.stdout), out.stdout  # the oldest month went
