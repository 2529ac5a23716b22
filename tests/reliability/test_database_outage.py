"""Drill: the drill's own PostgreSQL stopped (`-m immediate`) in the middle of a cost sync's load and of a
stream of short tasks writing the ledger, then started again.

Shown: the account's period is the old load or the new one, never a mix (row count and BilledCost sum equal
to one file); the sync and the short tasks are retried and recorded once the database is back (none failed,
no "hard time limit" for an outage); no run is left STARTED or QUEUED after the reconciler's next passes;
a long-lived web process answers no 500 from its pooled connections after the restart.
"""

import shutil
import time

import pytest

from .stack import Driver, DriverError

pytestmark = pytest.mark.integration

ROWS = 150_000


def test_postgres_stopped_mid_load_and_mid_ledger_writes(stack, focus_files, tmp_path):
    export = tmp_path / "export.csv.gz"
    shutil.copy(focus_files(ROWS, 31), export)
    stack.beat()
    stack.worker(concurrency=2)
    driver = Driver(stack.env(), stack.log_dir)
    try:
        account = driver("account", path=str(export), name="db-drill")
        [first] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account})
        deadline = time.monotonic() + 120
        while next(r for r in driver("runs") if r["celery_task_id"] == first)["state"] != "SUCCESS":
            assert time.monotonic() < deadline, "the first load did not finish"
            time.sleep(0.5)
        old = driver("cost", account_id=account)
        # the new export: same period, other lines
        shutil.copy(focus_files(ROWS, 32), export)
        [sync] = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account, "force": True})
        short = driver("enqueue", task="platform_noop", kwargs={"value": 1}, count=150)
        while next(r for r in driver("runs") if r["celery_task_id"] == sync)["state"] != "STARTED":
            time.sleep(0.1)
        time.sleep(1.5)  # into the load
        assert driver("http", path="/api/v1/tasks/runs") == 200
        # when
        stack.postgres.stop_immediately()
        stopped = time.monotonic()
        time.sleep(5)
        stack.postgres.start_again()
        back = time.monotonic()
        # then: what readers see is the old period or the new one, never a mix
        codes, seen = [], []
        while time.monotonic() < back + 90:
            try:
                codes.append(driver("http", path="/api/v1/tasks/runs"))
                seen.append(driver("cost", account_id=account))
                rows = driver("runs")
            except DriverError as exc:  # the database still recovering: try again
                seen.append({"error": str(exc)})
                time.sleep(0.5)
                continue
            if all(r["state"] in ("SUCCESS", "FAILURE") for r in rows):
                break
            time.sleep(0.5)
        recovered_s = time.monotonic() - back
        time.sleep(3)  # a reconciler pass or two (every 2 s in drills) after everything finished
        rows = driver("runs")
        new = driver("cost", account_id=account)
        states = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        samples = [s for s in seen if "rows" in s]
        mixed = [s for s in samples if s != old and s != new]
        sync_run = next(r for r in rows if r["celery_task_id"] == sync)
        print(
            f"\ndatabase outage: stopped -m immediate 1.5 s into the load with {len(short)} short tasks queued, "
            f"down {back - stopped:.1f} s; seconds_to_recover={recovered_s:.1f}; states={states}; "
            f"sync retries={sync_run['retries']} redeliveries={sync_run['redeliveries']}; "
            f"reader samples={len(samples)} old={sum(s == old for s in samples)} new={sum(s == new for s in samples)} "
            f"mixed={len(mixed)}; http after restart: {len(codes)} requests, 500s={codes.count(500)}"
        )
        assert new != old and new["rows"] == ROWS
        assert mixed == []
        assert states == {"SUCCESS": len(rows)}, [r for r in rows if r["state"] != "SUCCESS"][:3]
        assert codes and 500 not in codes
        assert driver("dead_letters") == []
    finally:
        driver.close()
