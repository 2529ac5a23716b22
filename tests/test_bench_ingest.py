"""bench/ingest.py runs end to end on a small N and prints its figures line (the figures themselves are in bench/)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_the_ingest_benchmark_prints_its_figures(tmp_path):
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--rows", "4000", "--repeat", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=", 1) for pair in last.split()[1:])
    assert last.startswith("ingest rows=4000 format=csv.gz "), last
    assert {"copy_rows_per_s", "project_rows_per_s", "ratio", "reload_ratio", "peak_rss_mb", "linear"} <= set(figures)
    assert float(figures["ratio"]) > 0 and 0 < int(figures["peak_rss_mb"]) < 2000
    assert "replaces 4,000 rows" in out.stdout  # the reload replaced the month it loaded
    assert re.search(r"1,000 rows: .* rows/s", out.stdout) and re.search(r"2,000 rows: .* rows/s", out.stdout)
