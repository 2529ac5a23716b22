"""Drill: a real streaming replica (pg_basebackup -R of the drills' PostgreSQL, hot standby on its own port).

Which server answered is told by the data, not by our own code: the standby's replay is paused
(pg_wal_replay_pause) and a cost line written on the primary; a page that does not show it was read on the
replica, a page that shows it was read on the primary.

Shown: the admin's cost line list and the FOCUS export (safe requests) read the replica; a POST and the task
ledger it writes go to the primary, and the same client's next pages read the primary (read your writes); in
one scope, a read after a write reads the primary; a replica lagging beyond DATABASE_REPLICA_MAX_LAG_SECONDS
and a replica stopped both send reads to the primary and the pages keep answering (also when it dies between
two probes: the page is served again from the primary); health says "degraded" with since when, /metrics says
finops_replica_up 0; started again, reads go back to it.
"""

import time

import pytest

from .replica import OwnReplica
from .stack import Driver

pytestmark = pytest.mark.integration

LIST = "/admin/costs_app/costlineitem/?q={}"


@pytest.fixture
def replica(own_postgres, stack):
    standby = OwnReplica(own_postgres)
    try:
        began = time.monotonic()
        standby.clone_and_start()
        standby.cloned_s = time.monotonic() - began
        yield standby
    finally:
        standby.remove()


def _listed(page: dict, resource_id: str) -> bool:
    """The admin list shows a row of that resource (not just the search box echoing it)."""
    assert page["status"] == 200, page["status"]
    return f'<td class="field-resource_id">{resource_id}</td>' in page["body"]


def _wait(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.3)
    return value


def test_reads_go_to_the_replica_and_fall_back_to_the_primary(stack, replica):
    started = time.monotonic()
    env = stack.env(
        DATABASE_REPLICA_URL=replica.database_url(stack.db_name),
        DATABASE_REPLICA_CHECK_SECONDS="1",
        DATABASE_REPLICA_MAX_LAG_SECONDS="30",
        DB_REPLICA_POOL_TIMEOUT="2",
    )
    driver = Driver(env, stack.log_dir, module="tests.reliability.replica_driver")
    try:
        # given: a line both servers have, then one only the primary has (the standby's replay paused)
        driver("line", account="replica-drill", resource_id="i-everywhere")
        replica.wait_caught_up()
        replica.pause_replay()
        driver("add_line", account="replica-drill", resource_id="i-primary-only")
        assert driver("primary_has", resource_id="i-primary-only")

        # then: the admin list and the export are read on the replica
        assert _listed(driver("http", path=LIST.format("i-everywhere")), "i-everywhere")
        assert not _listed(driver("http", path=LIST.format("i-primary-only")), "i-primary-only")
        export = driver("http", path="/api/v1/costs/export?account=replica-drill")
        assert export["status"] == 200 and "i-everywhere" in export["body"]
        assert "i-primary-only" not in export["body"]

        # a POST writes the ledger on the primary; the ledger is read there; this client's next pages too
        posted = driver("http", path="/api/v1/tasks/monitor/budgets", method="post", data={})
        assert posted["status"] == 202, posted
        runs = driver("http", path="/api/v1/tasks/runs", fresh=True)
        assert runs["status"] == 200 and '"monitor_budget"' in runs["body"]
        driver("http", path="/api/v1/tasks/monitor/budgets", method="post", data={})
        assert _listed(driver("http", path=LIST.format("i-primary-only")), "i-primary-only")  # sticky cookie
        assert not _listed(driver("http", path=LIST.format("i-primary-only"), fresh=True), "i-primary-only")

        # a read after a write in the same scope is on the primary
        assert driver("read_write_read", resource_id="i-primary-only", account="replica-drill") == [False, True]

        # lag beyond the bound: reads fall back to the primary, health says why
        driver("set_setting", name="DATABASE_REPLICA_MAX_LAG_SECONDS", value=1.0)
        _wait(
            lambda: _listed(driver("http", path=LIST.format("i-primary-only"), fresh=True), "i-primary-only"),
            "a lagging replica was still read",
        )
        health = driver("http", path="/api/v1/tasks/health", fresh=True)["body"]
        assert '"degraded"' in health and "replication lag" in health, health
        driver("set_setting", name="DATABASE_REPLICA_MAX_LAG_SECONDS", value=30.0)
        replica.resume_replay()
        replica.wait_caught_up()
        _wait(lambda: "finops_replica_up 1.0" in driver("http", path="/metrics")["body"], "the replica not back")

        # when: the replica stops while this process still holds "available" (no probe before the next read)
        driver("set_setting", name="DATABASE_REPLICA_CHECK_SECONDS", value=600.0)
        assert _listed(driver("http", path=LIST.format("i-everywhere"), fresh=True), "i-everywhere")
        replica.stop_immediately()
        stopped = time.monotonic()
        driver("add_line", account="replica-drill", resource_id="i-while-down")

        # then: pages answer from the primary, health and /metrics say the replica is down
        down = driver("http", path=LIST.format("i-while-down"), fresh=True)
        fallback_s = time.monotonic() - stopped
        assert _listed(down, "i-while-down")
        log = driver.log_path.read_text()
        assert "read replica unavailable (OperationalError" in log  # the page's replica read failed, then re-ran
        export = driver("http", path="/api/v1/costs/export?account=replica-drill", fresh=True)
        assert export["status"] == 200 and "i-while-down" in export["body"]
        health = driver("http", path="/api/v1/tasks/health", fresh=True)
        assert health["status"] in (200, 503)  # no worker runs in this drill: "fail" names workers, not the replica
        assert "read replica unavailable" in health["body"] and '"replica"' in health["body"], health["body"]
        assert "(since 20" in health["body"]  # when it went down, e.g. (since 2026-12-06T20:17:24.801+00:00)
        assert "finops_replica_up 0.0" in driver("http", path="/metrics", fresh=True)["body"]
        driver("set_setting", name="DATABASE_REPLICA_CHECK_SECONDS", value=1.0)

        # when: it starts again, then: reads go back to it (a line it has not replayed is not shown)
        replica.start_again()
        replica.wait_caught_up()
        time.sleep(1.2)  # the cached verdict (DATABASE_REPLICA_CHECK_SECONDS=1) expires
        assert "finops_replica_up 1.0" in driver("http", path="/metrics", fresh=True)["body"]
        replica.pause_replay()
        driver("add_line", account="replica-drill", resource_id="i-after-restart")
        assert not _listed(driver("http", path=LIST.format("i-after-restart"), fresh=True), "i-after-restart")
        assert _listed(driver("http", path=LIST.format("i-while-down"), fresh=True), "i-while-down")
        health = driver("http", path="/api/v1/tasks/health", fresh=True)["body"]
        assert "read replica unavailable" not in health
        replica.resume_replay()
        print(
            f"\nread replica: first page after the replica died answered in {fallback_s:.1f} s (from the primary);"
            f" standby cloned and started in {replica.cloned_s:.1f} s, drill {time.monotonic() - started:.1f} s"
        )
    finally:
        driver.close()
