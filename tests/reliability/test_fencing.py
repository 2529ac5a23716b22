"""Drill: a worker that stops answering (SIGSTOP), as in the issue.

- Its main process frozen while its pool child works: the child keeps renewing the claim, so the run is not
  handed to anyone else and completes once.
- The executing child itself frozen: its claim lapses, the reconciler hands the run to another worker, and
  when the frozen one resumes its late result is refused (fenced): the work completed once, never twice at once.
"""

import json
import os
import signal
import time

import pytest

from .stack import Driver

pytestmark = pytest.mark.integration


def wait_state(driver, celery_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = next(r for r in driver("runs") if r["celery_task_id"] == celery_id)
        if run["state"] in states:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {celery_id} not {states} within {timeout} s")


def test_a_frozen_worker_is_fenced_before_its_run_is_handed_over(stack):
    stack.beat()
    first = stack.worker(concurrency=1)
    driver = Driver(stack.env(), stack.log_dir)
    marks = stack.marks.client()
    try:
        # main process frozen, child working
        [main_frozen] = driver("enqueue", task="platform_probe", kwargs={"sleep": 10, "mark": "main"})
        wait_state(driver, main_frozen, ("STARTED",))
        os.kill(first.proc.pid, signal.SIGSTOP)
        second = stack.worker(concurrency=1)
        time.sleep(12)
        os.kill(first.proc.pid, signal.SIGCONT)
        a = wait_state(driver, main_frozen, ("SUCCESS", "FAILURE"))
        main_done = int(marks.get("finops:probe:main:done") or 0)

        # the executing child frozen
        [child_frozen] = driver("enqueue", task="platform_probe", kwargs={"sleep": 4, "mark": "child"})
        started = wait_state(driver, child_frozen, ("STARTED",))
        pid = int(started["worker"].rpartition("/")[2])
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        b = wait_state(driver, child_frozen, ("SUCCESS", "FAILURE"), timeout=60)
        handed_over_s = time.monotonic() - frozen_at
        os.kill(pid, signal.SIGCONT)
        time.sleep(6)  # the resumed child finishes its sleep and meets the fence
        spans = sorted(json.loads(s) for s in marks.lrange("finops:probe:child:spans", 0, -1))
        child_done = int(marks.get("finops:probe:child:done") or 0)
        attempts = marks.llen("finops:probe:child:attempts")
        fenced = "records nothing" in first.log + second.log
        b = wait_state(driver, child_frozen, ("SUCCESS", "FAILURE"))
        print(
            f"\nfencing: main frozen 12 s -> {a['state']}, redeliveries={a['redeliveries']}, done={main_done}; "
            f"child frozen -> handed over and {b['state']} after {handed_over_s:.1f} s, attempts={attempts}, "
            f"done={child_done}, late result fenced={fenced}"
        )
        assert a["state"] == "SUCCESS" and a["redeliveries"] == 0 and main_done == 1
        assert b["state"] == "SUCCESS" and b["redeliveries"] == 1
        assert attempts == 2 and child_done == 1 and len(spans) == 1
        assert fenced
    finally:
        driver.close()
