"""Drill: workers SIGKILLed again and again (a pool child, or the whole worker replaced under a new name)
under a stream of mixed tasks, cost syncs of big FOCUS files among them.

Shown: every run ends SUCCESS; each probe's side effect happened exactly once (a counter it bumps only
when its work completed, kept in a Redis of its own); each sync's data equals its file; no dead letter (in
particular none from a stale lock); every sync hit by a kill completed within 2 minutes of the kill.
Timings are the production ones scaled down ~10x (stack.Stack.env). RELIABILITY_KILLS sets the number of
kills (50, the issue's figure, by default; about 5 minutes).
"""

import os
import random
import signal
import time
import uuid

import pytest

from .stack import Driver

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("RELIABILITY_KILLS", "50"))
KILL_EVERY = 3.0
SYNC_ROWS = 150_000


# ~5 s a kill (a kill needs a run in progress; a replaced worker takes a few seconds to start), then up to 150 s
# for the runs to finish
@pytest.mark.timeout(240 + KILLS * 8)
def test_workers_killed_repeatedly_lose_nothing_and_do_nothing_twice(stack, focus_files):
    rng = random.Random(10)
    files = [focus_files(SYNC_ROWS, seed) for seed in (1, 2, 3)]
    stack.beat()

    def start_worker():
        node = f"drill-{uuid.uuid4().hex[:6]}"
        worker = stack.worker(concurrency=2, hostname=f"{node}@%h")
        worker.node = node
        return worker

    workers = [start_worker(), start_worker()]
    driver = Driver(stack.env(), stack.log_dir)
    marks = stack.marks.client()
    try:
        accounts = [driver("account", path=str(path), name=f"drill-{i}") for i, path in enumerate(files)]
        probes: list[str] = []
        kills: list[dict] = []
        sent = 0
        started = time.monotonic()
        next_kill = started + 3
        sync_turn = 0
        while len(kills) < KILLS:
            # the stream: probes (some under an account's lock), no-ops, and a sync now and then
            for _ in range(3):
                mark = f"p{len(probes)}"
                kwargs = {"sleep": round(rng.uniform(0.1, 1.2), 2), "mark": mark}
                if rng.random() < 0.3:  # under a lock of their own (contention with syncs is not the point here)
                    # spread over 30 accounts, so that waits for a live holder (which spend no retries, up to
                    # TASK_LOCK_WAIT) stay short; contention itself is tests/integration/test_reliability.py's subject
                    kwargs["account_id"] = 900 + rng.randrange(30)
                driver("enqueue", task="platform_probe", kwargs=kwargs)
                probes.append(mark)
            driver("enqueue", task="platform_noop", kwargs={"value": 1})
            sent += 4
            if time.monotonic() - started > sync_turn * 12:
                # force: a file already loaded is skipped as unchanged (its fingerprint), in a moment; the drill wants
                # each sync to load its lines, so that a kill can land in the middle of one
                sync = {"account_id": accounts[sync_turn % 3], "force": True}
                driver("enqueue", task="sync_provider_cost_data", kwargs=sync)
                sync_turn += 1
                sent += 1
            time.sleep(0.5)
            if time.monotonic() < next_kill:
                continue
            next_kill = time.monotonic() + KILL_EVERY
            # a run killed again and again is given up on purpose ("lost N times", TASK_MAX_RETRIES): the
            # drill spreads its kills so that no run is hit more than twice
            started_runs = [r for r in driver("runs") if r["state"] == "STARTED"]
            running = [r for r in started_runs if r["redeliveries"] < 2]
            # aim at a running sync when there is one: that is where a stale lock used to hurt
            running.sort(key=lambda r: r["task_name"] != "sync_provider_cost_data")
            victim = running[0] if running else None
            target = next((w for w in workers if victim and victim["worker"].startswith(w.node + "@")), None)
            spare = target is not None and all(
                r["redeliveries"] < 2 for r in started_runs if r["worker"].startswith(target.node + "@")
            )
            if len(kills) % 2 == 1 and spare:
                target.kill()
                workers.remove(target)
                workers.append(start_worker())  # a new pod: a new name
                kills.append({"at": time.time(), "kind": "worker", "run": victim})
            elif victim is not None:
                try:
                    os.kill(int(victim["worker"].rpartition("/")[2]), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kills.append({"at": time.time(), "kind": "child", "run": victim})
        stream_s = time.monotonic() - started

        # then: everything finishes
        def all_final():
            rows = driver("runs")
            return rows if all(r["state"] in ("SUCCESS", "FAILURE", "CANCELLED") for r in rows) else None

        deadline = time.monotonic() + 150
        rows = None
        while time.monotonic() < deadline and rows is None:
            rows = all_final()
            time.sleep(1)
        rows = rows or driver("runs")
        by_id = {r["celery_task_id"]: r for r in rows}
        states = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        done = {mark: int(marks.get(f"finops:probe:{mark}:done") or 0) for mark in probes}
        duplicated = sum(1 for n in done.values() if n > 1)
        lost = sum(1 for n in done.values() if n == 0)
        letters = driver("dead_letters")
        recoveries = []
        for kill in kills:
            victim = kill["run"]
            if victim and victim["task_name"] == "sync_provider_cost_data":
                final = by_id[victim["celery_task_id"]]
                recoveries.append((final["finished_at"] or float("inf")) - kill["at"])
        synced = [driver("cost", account_id=account) for account in accounts]
        print(
            f"\nworker kills: {len(kills)} kills ({sum(k['kind'] == 'child' for k in kills)} pool child, "
            f"{sum(k['kind'] == 'worker' for k in kills)} whole worker replaced) over {stream_s:.0f} s; "
            f"sent={sent} runs={len(rows)} states={states} probes={len(probes)} duplicated={duplicated} "
            f"lost={lost} dead_letters={len(letters)} syncs_hit={len(recoveries)} "
            f"sync_recovery_s=max {max(recoveries, default=0):.1f} / mean "
            f"{sum(recoveries) / len(recoveries) if recoveries else 0:.1f} "
            f"redeliveries={sum(r['redeliveries'] for r in rows)}"
        )
        assert states == {"SUCCESS": len(rows)}, [r for r in rows if r["state"] != "SUCCESS"][:5]
        assert len(rows) == sent
        assert duplicated == 0 and lost == 0, {m: n for m, n in done.items() if n != 1}
        assert letters == []
        assert recoveries and max(recoveries) <= 120, recoveries
        for result in synced:
            assert result["rows"] == SYNC_ROWS
        assert "another run holds the lock" not in "".join(r["error"] for r in rows)
    finally:
        driver.close()
