"""The read replica's routing rules (finops/db_router.py), fast: the "replica" is a second connection to the test
database. The test's rows live in the primary connection's uncommitted test transaction, so the second
connection cannot see them — exactly like a replica that has not replayed them yet: a page that does not show
a row was read on the "replica", a page that shows it was read on the primary.

The real thing (a pg_basebackup standby, stopped and started) is drilled in tests/reliability/test_read_replica.py.
"""

import pytest
from django.contrib.auth.models import Permission
from django.db import connections, router, transaction
from rest_framework.test import APIClient

from costs_app.models import CostLineItem
from finops import db_router
from finops.db_router import REPLICA, replica_reads, replica_status
from tasks_app.models import TaskRun
from tests.factories import CloudAccountFactory, CostLineItemFactory

LIST = "/admin/costs_app/costlineitem/?q={}"


@pytest.fixture
def replica(db, settings):
    # Added after the test's databases are set up, so it is a plain second connection (not the test's own).
    connections.settings[REPLICA] = {**connections.settings["default"], "OPTIONS": {}, "CONN_MAX_AGE": None}
    # Connected here: the test case only lets an alias it was not told about through when already connected.
    connections[REPLICA].connect()
    settings.DATABASE_REPLICA_CHECK_SECONDS = 60
    assert replica_status(force=True).available  # not in recovery: usable, lag 0
    yield
    connections[REPLICA].close()
    del connections[REPLICA]
    del connections.settings[REPLICA]
    db_router._status = None


@pytest.fixture
def admin_client(platform_admin, client):
    platform_admin.user_permissions.add(Permission.objects.get(codename="view_costlineitem"))
    client.force_login(platform_admin)
    return client


def _listed(response, resource_id: str) -> bool:
    assert response.status_code == 200
    return f'<td class="field-resource_id">{resource_id}</td>' in response.content.decode()


def test_without_a_replica_every_read_is_on_the_primary(db):
    with replica_reads():
        assert router.db_for_read(CostLineItem) == "default"
    assert replica_status() is None


def test_a_safe_admin_list_reads_cost_lines_on_the_replica(replica, admin_client):
    # given: a line the "replica" has not replayed
    CostLineItemFactory(resource_id="i-new")
    # when / then
    assert not _listed(admin_client.get(LIST.format("i-new")), "i-new")


def test_after_a_write_the_same_client_reads_the_primary(replica, admin_client, settings):
    # given
    CostLineItemFactory(resource_id="i-new")
    settings.DATABASE_REPLICA_STICKY_SECONDS = 10
    # when: the client writes (any unsafe request; here an admin form post without an action)
    response = admin_client.post(LIST.format("i-new"))
    # then: its next pages read the primary
    assert response.cookies[db_router.STICKY_COOKIE]["max-age"] == 10
    assert _listed(admin_client.get(LIST.format("i-new")), "i-new")
    # and a client that has not written reads the replica
    del admin_client.cookies[db_router.STICKY_COOKIE]
    assert not _listed(admin_client.get(LIST.format("i-new")), "i-new")


def test_the_ledger_is_read_on_the_primary_in_a_safe_request(replica, platform_admin):
    # given: a run written on the primary
    run = TaskRun.objects.create(celery_task_id="replica-ledger-run", task_name="platform_noop", queue="default")
    client = APIClient()
    client.force_authenticate(platform_admin)
    # when
    body = client.get("/api/v1/tasks/runs").content.decode()
    # then
    assert run.celery_task_id in body


def test_the_export_reads_the_replica(replica, platform_admin):
    # given
    account = CloudAccountFactory(name="exported")
    CostLineItemFactory(account=account, resource_id="i-new")
    client = APIClient()
    client.force_authenticate(platform_admin)

    def export() -> str:
        response = client.get("/api/v1/costs/export?account=exported")
        assert response.status_code == 200
        return b"".join(response.streaming_content).decode()

    # when / then: on the replica (which has not replayed the line); after a write, on the primary
    assert "i-new" not in export()
    client.cookies[db_router.STICKY_COOKIE] = "1"
    assert "i-new" in export()


def test_a_read_after_a_write_in_the_same_scope_is_on_the_primary(replica):
    line = CostLineItemFactory(resource_id="i-new")
    with replica_reads():
        assert not CostLineItem.objects.filter(pk=line.pk).exists()  # replica
        CostLineItem.objects.filter(pk=line.pk).update(resource_name="renamed")  # a write pins the scope
        assert CostLineItem.objects.filter(pk=line.pk).exists()  # primary


def test_reads_inside_a_transaction_or_outside_a_scope_are_on_the_primary(replica):
    line = CostLineItemFactory(resource_id="i-new")
    assert CostLineItem.objects.filter(pk=line.pk).exists()  # a task: no scope
    with replica_reads(), transaction.atomic():
        assert CostLineItem.objects.filter(pk=line.pk).exists()


def test_ledger_and_auth_models_never_go_to_the_replica(replica):
    from django.contrib.auth.models import User
    from django_celery_beat.models import PeriodicTask

    with replica_reads():
        assert {router.db_for_read(m) for m in (TaskRun, User, PeriodicTask)} == {"default"}
        assert router.db_for_read(CostLineItem) == REPLICA
    assert router.allow_migrate(REPLICA, "costs_app") is False


def test_health_and_metrics_report_the_replica(replica, platform_client):
    body = platform_client.get("/api/v1/tasks/health").json()
    assert body["checks"]["replica"]["ok"] and body["checks"]["replica"]["lag_s"] == 0.0
    assert "replica" not in body["degraded"]
    metrics = platform_client.get("/metrics").content.decode()
    assert "finops_replica_up 1.0" in metrics and "finops_replica_lag_seconds 0.0" in metrics
