"""Drill: two beats at once, then the leader SIGKILLed: no schedule slot is sent twice, and the standby
takes over within its lease."""

import time

import pytest

from .stack import Driver

pytestmark = pytest.mark.integration

EVERY = 2


def test_two_beats_send_each_slot_once_and_the_standby_takes_over(stack):
    driver = Driver(stack.env(), stack.log_dir)
    try:
        driver("schedule", name="drill-noop", task="platform_noop", every=EVERY)
        stack.worker(concurrency=2)
        beats = [stack.beat(), stack.beat()]
        time.sleep(14)
        leader = next(b for b in beats if "is now the leader" in b.log)
        leader.kill()
        killed = time.time()
        time.sleep(20)
        standby = next(b for b in beats if b is not leader)
        standby.stop()
        time.sleep(2)
        runs = sorted(
            r["enqueued_at"] for r in driver("runs", task="platform_noop") if r["trigger_detail"] == "drill-noop"
        )
        gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
        span = runs[-1] - runs[0]
        expected = span / EVERY + 1
        takeover = min((t for t in runs if t > killed), default=float("inf")) - killed
        doubled = sum(gap < EVERY / 2 for gap in gaps)
        print(
            f"\ntwo beats: sent={len(runs)} over {span:.0f} s (due ~{expected:.0f}), slots sent twice={doubled}, "
            f"smallest gap {min(gaps):.2f} s, leader killed -> standby's first send after {takeover:.1f} s"
        )
        assert doubled == 0, gaps
        assert len(runs) <= expected + 1
        assert "is now the leader" in standby.log
        assert takeover <= 6 + EVERY + 5  # the lease (6 s in drills), a slot, a tick
    finally:
        driver.close()
