"""Drill: a flood of triggers through the API, by one operator and by several, while a real worker runs.

Shown: the per-user trigger limit (THROTTLE_TRIGGER_RATE, finops/limits.py) answers the excess 429, so the
broker's queues stay bounded (their lengths sampled in Redis throughout); nothing crashes (no 5xx, gunicorn
and the worker alive and answering afterwards); every accepted run reaches a final state, none lost or run twice.
"""

import threading
import time
from collections import Counter

import pytest
import requests

from tests.security.live import LiveServer

from .stack import QUEUES, Driver

pytestmark = pytest.mark.integration

RATE_PER_MINUTE = 30
USERS = 5  # the operator and four more of the account's team
FLOOD_SECONDS = 20
THREADS_PER_USER = 3


def test_a_trigger_flood_is_throttled_queues_stay_bounded_and_every_accepted_run_finishes(stack):
    worker = stack.worker(concurrency=2)
    driver = Driver(stack.env(), stack.log_dir)
    server = None
    try:
        account = driver("account", path="/nonexistent-flood.csv", name="flood-drill")
        names = [f"flood-{i}" for i in range(USERS)]
        for name in names:
            driver("operator", username=name, password="flood-password", account_id=account)
        server = LiveServer(stack.log_dir, **stack.env(THROTTLE_TRIGGER_RATE=f"{RATE_PER_MINUTE}/min"))
        tokens = {name: server.token(name, "flood-password") for name in names}
        broker = stack.redis.client(0)

        codes: Counter = Counter()
        accepted: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        queue_max = 0

        def flood(token: str) -> None:
            session = requests.Session()
            headers = {"Authorization": f"Bearer {token}"}
            while not stop.is_set():
                response = session.post(
                    f"{server.url}/api/v1/tasks/monitor/budgets", json={"account_id": account}, headers=headers,
                    timeout=60,
                )  # fmt: skip
                with lock:
                    codes[response.status_code] += 1
                    if response.status_code == 202:
                        accepted.append(response.json()["task_id"])

        def sample_queues() -> None:
            nonlocal queue_max
            while not stop.is_set():
                queue_max = max(queue_max, sum(broker.llen(q) for q in QUEUES.split(",")))
                time.sleep(0.1)

        # when: every user floods from several threads at once, for FLOOD_SECONDS
        started = time.monotonic()
        threads = [threading.Thread(target=sample_queues)] + [
            threading.Thread(target=flood, args=(tokens[name],)) for name in names for _ in range(THREADS_PER_USER)
        ]
        for thread in threads:
            thread.start()
        time.sleep(FLOOD_SECONDS)
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
        flooded_s = time.monotonic() - started

        # then: every accepted run final
        def finished():
            runs = driver("runs", task="monitor_budget")
            return (
                runs if len(runs) >= len(accepted) and all(r["state"] in ("SUCCESS", "FAILURE") for r in runs) else None
            )

        deadline = time.monotonic() + 60
        runs = None
        while runs is None and time.monotonic() < deadline:
            runs = finished()
            time.sleep(0.5)
        runs = runs or driver("runs", task="monitor_budget")
        seconds = time.monotonic() - started
        by_id = Counter(r["celery_task_id"] for r in runs)
        completed = sum(r["state"] == "SUCCESS" for r in runs if r["celery_task_id"] in set(accepted))
        duplicated = sum(n - 1 for n in by_id.values()) + sum(r["redeliveries"] > 0 for r in runs)
        lost = len(set(accepted) - {r["celery_task_id"] for r in runs if r["state"] in ("SUCCESS", "FAILURE")})
        sent = sum(codes.values())
        other = {code: n for code, n in codes.items() if code not in (202, 429)}
        errors_5xx = sum(n for code, n in codes.items() if code >= 500)
        print(
            f"\ntrigger flood: {USERS} users x {THREADS_PER_USER} threads for {flooded_s:.0f} s: sent={sent} "
            f"accepted={codes[202]} throttled={codes[429]} other={other} "
            f"completed={completed} duplicated={duplicated} lost={lost} 5xx={errors_5xx} "
            f"queue_max={queue_max} seconds={seconds:.1f}"
        )
        assert errors_5xx == 0 and set(codes) <= {202, 429}, codes
        assert codes[429] > 0
        # a fixed window per user: at most two windows' worth when the flood straddles a minute boundary
        assert 0 < codes[202] <= USERS * RATE_PER_MINUTE * 2
        assert queue_max <= codes[202]
        assert completed == len(accepted) == len(set(accepted))
        assert (duplicated, lost) == (0, 0)
        assert worker.proc.poll() is None and server.proc.poll() is None
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        if server is not None:
            server.stop()
        driver.close()
