"""Drill: the broker's Redis killed and started again empty while runs are queued and running.

Shown: health fails naming the broker while it is down; once it is back, every run completes within
2 minutes, none twice (each probe's completion counter, kept in a Redis of its own, is exactly 1), nothing
dead-lettered — the sync whose lock release met the dead Redis is SUCCESS, not FAILURE.
"""

import time

import pytest

from .stack import Driver

pytestmark = pytest.mark.integration


def test_redis_restarted_empty_loses_no_run_and_runs_none_twice(stack, focus_files):
    stack.beat()
    stack.worker(concurrency=2)
    driver = Driver(stack.env(), stack.log_dir)
    marks = stack.marks.client()
    try:
        account = driver("account", path=str(focus_files(150_000, 21)), name="broker-drill")
        sent = driver("enqueue", task="sync_provider_cost_data", kwargs={"account_id": account})
        probes = [f"b{i}" for i in range(40)]
        for mark in probes:
            sent += driver("enqueue", task="platform_probe", kwargs={"sleep": 0.5, "mark": mark})

        def counts():
            rows = driver("runs")
            return {s: sum(r["state"] == s for r in rows) for s in ("QUEUED", "STARTED", "SUCCESS")}

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            before = counts()
            if before["STARTED"] >= 1 and before["SUCCESS"] >= 2:
                break
            time.sleep(0.3)
        # when: Redis dies with everything in it, and comes back empty
        stack.redis.kill()
        killed_at = time.monotonic()
        during = driver("health")
        time.sleep(3)
        stack.redis.start()
        returned_at = time.monotonic()
        after_return = driver("health")

        # then
        def finished():
            rows = driver("runs")
            return rows if all(r["state"] in ("SUCCESS", "FAILURE") for r in rows) else None

        rows = None
        while time.monotonic() < returned_at + 120 and rows is None:
            rows = finished()
            time.sleep(0.5)
        recovered_s = time.monotonic() - returned_at
        rows = rows or driver("runs")
        final_health = driver("health")
        done = {mark: int(marks.get(f"finops:probe:{mark}:done") or 0) for mark in probes}
        states = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        print(
            f"\nbroker loss: killed with {before} (queued/started/succeeded), down {returned_at - killed_at:.1f} s; "
            f"health during: {during['status']} failing={during['failing']}; right after return: "
            f"{after_return['status']} degraded={after_return.get('degraded')}; sent={len(sent)} "
            f"completed={states.get('SUCCESS', 0)} states={states} duplicated={sum(n > 1 for n in done.values())} "
            f"lost={sum(n == 0 for n in done.values())} seconds_to_recover={recovered_s:.1f} "
            f"final health: {final_health['status']}"
        )
        assert during["status"] == "fail" and "broker" in during["failing"]
        assert recovered_s <= 120
        assert states == {"SUCCESS": len(sent)}, [r for r in rows if r["state"] != "SUCCESS"][:3]
        assert all(n == 1 for n in done.values()), done
        assert driver("dead_letters") == []
        assert driver("cost", account_id=account)["rows"] == 150_000
    finally:
        driver.close()
