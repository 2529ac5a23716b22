"""bench/admin.py runs end to end on a small N: it finds every admin list and page and prints its figures line
(the figures themselves are in bench/README.md and the closing notes)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.contrib import admin
from django.urls import reverse

from finops import devstack
from tests.celery_procs import database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_the_admin_benchmark_times_every_list_and_page():
    # given: a database of its own
    name = f"finops_bench_admin_{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "LOG_LEVEL": "WARNING", "DATABASE_URL": database_url()}
    try:
        # when
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "admin.py"), "--rows", "48000", "--repeat", "1", "--database", name],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=380, check=False,
        )  # fmt: skip
    finally:
        with psycopg.connect(devstack.url_with_path(database_url(), "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # then
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=", 1) for pair in last.split())
    assert {"rows", "pages", "baseline_count_seconds", "slowest_page_seconds", "slowest_page"} <= set(figures)
    assert figures["rows"] == "48000" and figures["server_errors"] == "0", out.stdout[-3000:]
    # seconds, ratio, queries, status, page (then "> 1 s" when over a second)
    timed = {line.split()[4] for line in out.stdout.splitlines() if line.strip()[:1].isdigit() and " /" in line}
    for model in admin.site._registry:
        changelist = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert changelist in timed and f"{changelist}?_facets=True" in timed, changelist
    assert "/admin/" in timed
    assert "/admin/costs_app/costlineitem/?account__id__exact=" in out.stdout
