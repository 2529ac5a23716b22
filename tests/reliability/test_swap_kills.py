"""Drill: the worker loading a month SIGKILLed at each step of the partition swap, then the run re-run.

The import stops at a pause point (FINOPS_INGEST_PAUSE_AT, costs_app.services.partitions.pause_point) in the
COPY into the staging table, between building the staging leaf's primary key and its index, and between
detaching the old leaf and attaching the new one; the whole worker (its process group) is SIGKILLed there.

Shown, for each point: right after the kill the month is the old load, whole (row count and BilledCost sum of
the old file) and no staging table is left; once a worker without the pause runs again and the reconciler has
handed it the lost run, the month is the new load, whole; a reader never sees anything else in between.

And a fenced run does not swap: the executing process frozen (SIGSTOP) before its swap until the reconciler
has handed its run to another worker, then resumed, stops at its next statement and rolls back.
"""

import os
import shutil
import signal
import time

import psycopg
import pytest

from .stack import Driver

pytestmark = pytest.mark.integration

ROWS = 20_000


def month_figures(url: str, account_id: int) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT billing_period_start, count(*), sum(billed_cost) FROM costs_app_costlineitem "
            "WHERE account_id = %s GROUP BY 1",
            [account_id],
        ).fetchall()
        return {str(period): (n, str(total)) for period, n, total in rows}


def staging_tables(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relname ~ '^costs_app_costlineitem_s[0-9]+_' AND relkind IN ('r', 'p')"
        )
        return [row[0] for row in rows.fetchall()]


@pytest.fixture
def drill(stack, focus_files, tmp_path):
    """The stack with a beat (the reconciler), and an account holding the first of two files' month."""
    url = stack.postgres.database_url(stack.db_name)
    files = [focus_files(ROWS, 41), focus_files(ROWS, 42)]
    export = tmp_path / "export.csv.gz"
    stack.beat()  # the reconciler hands lost runs to live workers
    driver = Driver(stack.env(), stack.log_dir)
    try:
        # what each file loads, measured on accounts of their own
        expected = []
        worker = stack.worker(concurrency=1)
        for i, path in enumerate(files):
            reference = driver("account", path=str(path), name=f"reference-{i}")
            [run] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": reference})
            _wait_state(driver, run, "SUCCESS")
            expected.append(month_figures(url, reference))
        assert expected[0] != expected[1] and all(expected)
        shutil.copy(files[0], export)
        account = driver("account", path=str(export), name="swap-drill")
        [run] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account})
        _wait_state(driver, run, "SUCCESS")
        worker.stop()
        assert month_figures(url, account) == expected[0]
        yield {"url": url, "files": files, "export": export, "driver": driver, "account": account, "expected": expected}
    finally:
        driver.close()


def test_a_month_is_all_old_or_all_new_whenever_the_loading_worker_is_killed(drill, stack, tmp_path):
    url, files, export, driver = drill["url"], drill["files"], drill["export"], drill["driver"]
    account, expected = drill["account"], drill["expected"]
    current = 0
    for point in ("copy", "index", "swap"):
        # when: the other file is loaded by a worker that stops at `point`, and is killed there
        new = 1 - current
        shutil.copy(files[new], export)
        paused = tmp_path / f"paused-{point}"
        doomed = stack.worker(concurrency=1, FINOPS_INGEST_PAUSE_AT=point, FINOPS_INGEST_PAUSE_FILE=str(paused))
        [run] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account})
        _wait_for(paused.exists, 90, f"the load to reach {point}")
        doomed.kill()
        # then: the old month, whole, and nothing staged left behind
        assert month_figures(url, account) == expected[current], point
        assert staging_tables(url) == [], point

        # when: a healthy worker takes the lost run over
        healthy = stack.worker(concurrency=1)
        seen = []
        deadline = time.monotonic() + 120
        while _state(driver, run) != "SUCCESS":
            assert time.monotonic() < deadline, f"the run killed at {point} was not re-run"
            seen.append(month_figures(url, account))
            time.sleep(0.5)
        healthy.stop()
        # then: the new month, whole; readers saw only the old one or the new one
        assert month_figures(url, account) == expected[new], point
        assert all(s in (expected[current], expected[new]) for s in seen), point
        assert staging_tables(url) == [], point
        current = new


def test_a_fenced_run_does_not_swap(drill, stack, tmp_path):
    url, files, export, driver = drill["url"], drill["files"], drill["export"], drill["driver"]
    account, expected = drill["account"], drill["expected"]
    # when: the executing process is frozen before its swap, its run handed over meanwhile, then resumed
    shutil.copy(files[1], export)
    paused = tmp_path / "paused-fenced"
    frozen = stack.worker(
        concurrency=1,
        FINOPS_INGEST_PAUSE_AT="index",
        FINOPS_INGEST_PAUSE_FILE=str(paused),
        FINOPS_INGEST_PAUSE_SECONDS="1",
    )
    [run] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account})
    _wait_for(paused.exists, 90, "the load to reach its index build")
    child = int(paused.read_text())
    os.kill(child, signal.SIGSTOP)
    healthy = stack.worker(concurrency=1)
    _wait_for(lambda: _run(driver, run)["redeliveries"] >= 1, 90, "the reconciler to hand the run over")
    os.kill(child, signal.SIGCONT)
    _wait_state(driver, run, "SUCCESS")
    # then: the frozen execution was fenced and rolled back; the run's new owner swapped the month in, once
    _wait_for(lambda: "records nothing" in frozen.log, 30, "the frozen execution to be fenced")
    assert month_figures(url, account) == expected[1]
    assert staging_tables(url) == []
    healthy.stop()
    frozen.stop()


def _run(driver, run: str) -> dict:
    return next(r for r in driver("runs") if r["celery_task_id"] == run)


def _state(driver, run: str) -> str:
    return _run(driver, run)["state"]


def _wait_state(driver, run: str, state: str, timeout: float = 120) -> None:
    _wait_for(lambda: _state(driver, run) == state, timeout, f"run {run} to be {state}")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
