"""The task API without a worker: auth, triggers into the ledger and the broker, status, cancel, runs, dead letters."""

import json
import uuid

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.factories import BudgetFactory, CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

TRIGGERS = [
    ("/api/v1/tasks/sync/cost-data", "sync_provider_cost_data", "cost_sync"),
    ("/api/v1/tasks/sync/resources", "discover_provider_resources", "resource_discovery"),
    ("/api/v1/tasks/monitor/budgets", "monitor_budget", "monitoring"),
    ("/api/v1/tasks/analyze/optimization", "analyze_optimization_opportunities", "analysis"),
    ("/api/v1/tasks/analyze/anomalies", "detect_cost_anomalies", "analysis"),
    ("/api/v1/tasks/maintenance/cleanup", "cleanup_old_data", "maintenance"),
]
ACCOUNT_TRIGGERS = [t for t in TRIGGERS if t[1] != "cleanup_old_data"]


@pytest.fixture
def broker():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def queued_messages(broker, queue: str) -> list[dict]:
    return [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]


def queued_run(**kwargs) -> TaskRun:
    # Without django_capture_on_commit_callbacks the publish never happens: a ledger row only.
    # An explicit correlation id: task_enqueue() would otherwise set one in this thread's context for good.
    kwargs.setdefault("correlation_id", f"corr-{uuid.uuid4().hex[:8]}")
    return task_enqueue(task_name=kwargs.pop("task_name", "platform_noop"), triggered_by=TriggerKind.COMMAND, **kwargs)


def account_run(**kwargs) -> TaskRun:
    """A queued run of an account of the team "Default", whose viewer and operator the fixtures are."""
    kwargs["kwargs"] = {"account_id": CloudAccountFactory().id, **kwargs.get("kwargs", {})}
    return queued_run(**kwargs)


def dead_letter(task_name: str = "monitor_budget", **kwargs) -> DeadLetter:
    kwargs.setdefault("account_id", CloudAccountFactory().id)  # a run of the team "Default"
    run = queued_run(task_name=task_name, kwargs=kwargs)
    TaskRun.objects.filter(id=run.id).update(state=RunState.FAILURE, error="boom")
    return DeadLetter.objects.create(run=run, task_name=task_name, kwargs=kwargs, queue=run.queue, error="boom")


# --- authentication and permissions -------------------------------------------------------------

ALL_ENDPOINTS = [("post", path) for path, _, _ in TRIGGERS] + [
    ("get", "/api/v1/tasks/status/some-id"),
    ("get", "/api/v1/tasks/active"),
    ("get", "/api/v1/tasks/workers/stats"),
    ("delete", "/api/v1/tasks/cancel/some-id"),
    ("get", "/api/v1/tasks/health"),
    ("get", "/api/v1/tasks/runs"),
    ("get", f"/api/v1/tasks/runs/{uuid.uuid4()}"),
    ("get", "/api/v1/tasks/dead-letters"),
    ("get", "/api/v1/tasks/dead-letters/1"),
    ("post", "/api/v1/tasks/dead-letters/1/replay"),
    ("get", "/api/v1/costs/export?account=x"),
    ("get", "/api/v1/accounts/"),
    ("post", "/api/v1/accounts/"),
]


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
def test_anonymous_request_gets_401_with_bearer_challenge(api_client, method, path):
    # when
    response = getattr(api_client, method)(path, format="json")
    # then
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert TaskRun.objects.count() == 0


@pytest.mark.parametrize(("path", "task_name", "queue"), TRIGGERS)
def test_viewer_may_not_trigger(viewer_client, broker, path, task_name, queue):
    # when
    response = viewer_client.post(path, {}, format="json")
    # then
    assert response.status_code == 403
    assert "trigger_tasks" in response.json()["detail"]
    assert TaskRun.objects.count() == 0
    assert broker.llen(queue) == 0


def test_viewer_may_not_cancel(viewer_client):
    # given
    run = queued_run()
    # when
    response = viewer_client.delete(f"/api/v1/tasks/cancel/{run.celery_task_id}")
    # then
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.state == RunState.QUEUED


def test_viewer_may_not_replay(viewer_client):
    # given
    letter = dead_letter()
    # when
    response = viewer_client.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    # then
    assert response.status_code == 403
    letter.refresh_from_db()
    assert letter.replayed_at is None


def test_viewer_reads_runs_and_dead_letters(viewer_client):
    # given
    run = account_run()
    letter = dead_letter()
    # when
    runs = viewer_client.get("/api/v1/tasks/runs")
    detail = viewer_client.get(f"/api/v1/tasks/runs/{run.id}")
    letters = viewer_client.get("/api/v1/tasks/dead-letters")
    letter_detail = viewer_client.get(f"/api/v1/tasks/dead-letters/{letter.id}")
    # then
    assert runs.status_code == detail.status_code == letters.status_code == letter_detail.status_code == 200
    assert runs.json()["count"] == 2
    assert detail.json()["task_id"] == run.celery_task_id
    assert letters.json()["results"][0]["id"] == letter.id
    assert letter_detail.json()["error"] == "boom"


def test_superuser_may_trigger_without_the_explicit_permission(django_capture_on_commit_callbacks, broker):
    # given
    client = APIClient()
    client.force_authenticate(UserFactory(username="root", is_superuser=True))
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/tasks/monitor/budgets", {}, format="json")
    # then
    assert response.status_code == 202
    assert broker.llen("monitoring") == 1


# --- JWT and session ----------------------------------------------------------------------------


def test_jwt_obtain_refresh_and_use(api_client):
    # given
    team_member_set(team=team_default(), user=UserFactory(username="jwt-user"), role=Role.VIEWER)
    # when
    tokens = api_client.post("/api/v1/auth/token", {"username": "jwt-user", "password": "pass-word-123"}, format="json")
    refreshed = api_client.post("/api/v1/auth/token/refresh", {"refresh": tokens.json()["refresh"]}, format="json")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    runs = api_client.get("/api/v1/tasks/runs")
    # then
    assert tokens.status_code == 200
    assert refreshed.status_code == 200
    assert runs.status_code == 200


def test_jwt_wrong_password_and_garbage_token_are_401(api_client):
    # given
    UserFactory(username="jwt-user")
    # when
    tokens = api_client.post("/api/v1/auth/token", {"username": "jwt-user", "password": "wrong"}, format="json")
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not.a.token")
    runs = api_client.get("/api/v1/tasks/runs")
    # then
    assert tokens.status_code == 401
    assert runs.status_code == 401


def test_jwt_operator_triggers(api_client, trigger_user, django_capture_on_commit_callbacks, broker):
    # given
    access = api_client.post(
        "/api/v1/auth/token", {"username": "operator", "password": "pass-word-123"}, format="json"
    ).json()["access"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(
            "/api/v1/tasks/analyze/anomalies", {"account_id": CloudAccountFactory().id}, format="json"
        )
    # then
    assert response.status_code == 202
    assert TaskRun.objects.get(celery_task_id=response.json()["task_id"]).user == trigger_user


def test_session_login_reads(user):
    # given
    client = APIClient()
    client.login(username="viewer", password="pass-word-123")
    # when
    response = client.get("/api/v1/tasks/runs")
    # then
    assert response.status_code == 200


# --- triggers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "task_name", "queue"), TRIGGERS)
def test_trigger_records_run_and_publishes_to_the_seed_queue(
    platform_client, platform_admin, django_capture_on_commit_callbacks, broker, path, task_name, queue
):
    # when: no account, i.e. every account (organisation-wide): a platform admin's trigger
    with django_capture_on_commit_callbacks(execute=True):
        response = platform_client.post(path, {}, format="json", HTTP_X_CORRELATION_ID="corr-trigger-1")
    # then
    assert response.status_code == 202, response.content
    body = response.json()
    run = TaskRun.objects.get(celery_task_id=body["task_id"])
    assert body == {
        "task_id": run.celery_task_id,
        "run_id": str(run.id),
        "task_name": task_name,
        "queue": queue,
        "state": "QUEUED",
        "status_url": f"http://testserver/api/v1/tasks/status/{run.celery_task_id}",
        "correlation_id": "corr-trigger-1",
    }
    assert response["X-Correlation-ID"] == "corr-trigger-1"
    assert (run.triggered_by, run.user, run.correlation_id) == (TriggerKind.API, platform_admin, "corr-trigger-1")
    messages = queued_messages(broker, queue)
    assert [m["headers"]["id"] for m in messages] == [run.celery_task_id]
    assert messages[0]["headers"]["task"] == task_name
    assert messages[0]["headers"]["x_correlation_id"] == "corr-trigger-1"


@pytest.mark.parametrize(("path", "task_name", "queue"), ACCOUNT_TRIGGERS)
def test_trigger_for_one_account(operator_client, django_capture_on_commit_callbacks, broker, path, task_name, queue):
    # given
    account = CloudAccountFactory()
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(path, {"account_id": account.id}, format="json")
    # then
    assert response.status_code == 202
    assert TaskRun.objects.get(celery_task_id=response.json()["task_id"]).kwargs == {"account_id": account.id}
    assert broker.llen(queue) == 1


def test_cost_sync_with_billing_period(operator_client):
    # given
    account = CloudAccountFactory()
    # when
    response = operator_client.post(
        "/api/v1/tasks/sync/cost-data", {"account_id": account.id, "billing_period": "2024-09"}, format="json"
    )
    # then
    assert response.status_code == 202
    run = TaskRun.objects.get(celery_task_id=response.json()["task_id"])
    assert run.kwargs == {"account_id": account.id, "billing_period": "2024-09"}


def test_cleanup_dry_run_and_budget_id(operator_client, platform_client):
    # given
    budget = BudgetFactory(account=CloudAccountFactory())
    # when
    cleanup = platform_client.post(
        "/api/v1/tasks/maintenance/cleanup", {"dry_run": True, "classes": ["task_runs"]}, format="json"
    )
    monitor = operator_client.post("/api/v1/tasks/monitor/budgets", {"budget_id": budget.id}, format="json")
    # then
    assert TaskRun.objects.get(celery_task_id=cleanup.json()["task_id"]).kwargs == {
        "dry_run": True,
        "classes": ["task_runs"],
    }
    assert TaskRun.objects.get(celery_task_id=monitor.json()["task_id"]).kwargs == {"budget_id": budget.id}


def test_cleanup_refuses_an_unknown_data_class(platform_client):
    response = platform_client.post(
        "/api/v1/tasks/maintenance/cleanup", {"classes": ["cost_lines", "logs"]}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"classes": {"1": ['"logs" is not a valid choice.']}}
    assert not TaskRun.objects.exists()


def test_unsafe_correlation_id_is_replaced(operator_client):
    # when
    response = operator_client.post(
        "/api/v1/tasks/sync/resources",
        {"account_id": CloudAccountFactory().id},
        format="json",
        HTTP_X_CORRELATION_ID="a b;c",
    )
    # then
    body = response.json()
    assert body["correlation_id"] != "a b;c"
    assert response["X-Correlation-ID"] == body["correlation_id"]
    assert TaskRun.objects.get(celery_task_id=body["task_id"]).correlation_id == body["correlation_id"]


@pytest.mark.parametrize(
    ("path", "payload", "field", "message"),
    [
        ("/api/v1/tasks/sync/cost-data", {"account_id": 999999}, "account_id", "does not exist"),
        ("/api/v1/tasks/sync/cost-data", {"account_id": "abc"}, "account_id", "valid integer"),
        ("/api/v1/tasks/sync/cost-data", {"billing_period": "2024-13"}, "billing_period", "YYYY-MM"),
        ("/api/v1/tasks/sync/cost-data", {"billing_period": "202409"}, "billing_period", "YYYY-MM"),
        ("/api/v1/tasks/sync/resources", {"billing_period": "2024-09"}, "billing_period", "Unknown field"),
        ("/api/v1/tasks/analyze/anomalies", {"acount_id": 1}, "acount_id", "Unknown field"),
        ("/api/v1/tasks/monitor/budgets", {"budget_id": 999999}, "budget_id", "does not exist"),
        ("/api/v1/tasks/maintenance/cleanup", {"dry_run": "maybe"}, "dry_run", "valid boolean"),
    ],
)
def test_bad_trigger_input_is_400(platform_client, broker, path, payload, field, message):
    # when
    response = platform_client.post(path, payload, format="json")
    # then
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert TaskRun.objects.count() == 0


def test_inactive_account_is_400(operator_client):
    # given
    account = CloudAccountFactory(is_active=False)
    # when
    response = operator_client.post("/api/v1/tasks/sync/cost-data", {"account_id": account.id}, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"account_id": [f"Cloud account {account.id} is not active."]}


# --- status -------------------------------------------------------------------------------------


def test_status_of_a_queued_run(viewer_client):
    # given
    run = account_run(kwargs={"value": 3}, correlation_id="corr-status")
    # when
    response = viewer_client.get(f"/api/v1/tasks/status/{run.celery_task_id}")
    # then
    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["celery_state"], body["known_to"]) == ("QUEUED", "PENDING", ["ledger"])
    assert body["run"]["correlation_id"] == "corr-status"
    assert body["run"]["kwargs"] == {"value": 3, "account_id": run.account_id}


def test_status_of_a_finished_run_merges_result_and_timings(viewer_client):
    # given
    run = account_run()
    current_app.backend.store_result(run.celery_task_id, 5, "SUCCESS")
    TaskRun.objects.filter(id=run.id).update(state=RunState.SUCCESS, result=5, duration_ms=12)
    # when
    body = viewer_client.get(f"/api/v1/tasks/status/{run.celery_task_id}").json()
    # then
    assert (body["state"], body["celery_state"], body["known_to"]) == ("SUCCESS", "SUCCESS", ["ledger", "celery"])
    assert body["result"] == 5
    assert body["run"]["duration_ms"] == 12


def test_status_of_a_task_only_celery_knows(viewer_client, platform_client):
    # given
    task_id = f"plain-{uuid.uuid4()}"
    current_app.backend.store_result(task_id, {"x": 1}, "SUCCESS")
    # when: no run, so no account to scope it by: platform admins only
    hidden = viewer_client.get(f"/api/v1/tasks/status/{task_id}")
    body = platform_client.get(f"/api/v1/tasks/status/{task_id}").json()
    # then
    assert hidden.status_code == 404
    assert (body["state"], body["known_to"], body["run"], body["result"]) == ("SUCCESS", ["celery"], None, {"x": 1})
    assert body["date_done"] is not None


def test_status_of_a_failure_only_celery_knows_names_the_exception(platform_client):
    # given
    task_id = f"plain-{uuid.uuid4()}"
    current_app.backend.store_result(task_id, ValueError("boom"), "FAILURE")
    # when
    body = platform_client.get(f"/api/v1/tasks/status/{task_id}").json()
    # then
    assert (body["state"], body["celery_state"], body["result"]) == ("FAILURE", "FAILURE", "ValueError: boom")
    assert body["date_done"].startswith(str(timezone.now().year))


def test_status_of_an_unknown_task_is_404(viewer_client):
    # when
    response = viewer_client.get(f"/api/v1/tasks/status/{uuid.uuid4()}")
    # then
    assert response.status_code == 404


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_a_queued_run(operator_client):
    # given
    run = account_run()
    # when
    response = operator_client.delete(f"/api/v1/tasks/cancel/{run.celery_task_id}")
    # then
    assert response.status_code == 200
    assert response.json() == {
        "task_id": run.celery_task_id,
        "cancelled": True,
        "message": "cancelled before it started",
        "state": "CANCELLED",
        "run_id": str(run.id),
    }
    run.refresh_from_db()
    assert run.state == RunState.CANCELLED
    assert run.finished_at is not None


def test_cancel_a_finished_run_is_409_and_changes_nothing(operator_client):
    # given
    run = account_run()
    TaskRun.objects.filter(id=run.id).update(state=RunState.SUCCESS)
    # when
    response = operator_client.delete(f"/api/v1/tasks/cancel/{run.celery_task_id}")
    # then
    assert response.status_code == 409
    assert response.json()["message"] == "already success"
    run.refresh_from_db()
    assert run.state == RunState.SUCCESS


def test_cancel_a_finished_plain_celery_task_is_409(platform_admin):
    # given
    task_id = f"plain-{uuid.uuid4()}"
    current_app.backend.store_result(task_id, 1, "SUCCESS")
    client = APIClient()
    client.force_authenticate(platform_admin)
    # when
    response = client.delete(f"/api/v1/tasks/cancel/{task_id}")
    # then
    assert response.status_code == 409
    assert response.json()["state"] == "SUCCESS"


def test_cancel_an_unknown_task_is_404(operator_client):
    # when
    response = operator_client.delete(f"/api/v1/tasks/cancel/{uuid.uuid4()}")
    # then
    assert response.status_code == 404


# --- active and workers (no worker running) -----------------------------------------------------


def test_active_lists_ledger_runs_when_no_worker_answers(viewer_client):
    # given
    queued = account_run()
    done = account_run()
    TaskRun.objects.filter(id=done.id).update(state=RunState.SUCCESS)
    # when
    response = viewer_client.get("/api/v1/tasks/active")
    # then
    assert response.status_code == 200
    body = response.json()
    assert [r["task_id"] for r in body["runs"]] == [queued.celery_task_id]
    assert body["runs_total"] == 1
    assert (body["workers"], body["worker_tasks"], body["inspect_error"]) == ([], [], "")


def test_workers_stats_is_an_empty_list_when_no_worker_answers(viewer_client, platform_client):
    # when
    response = platform_client.get("/api/v1/tasks/workers/stats")
    # then: hostnames and pids are for platform admins only
    assert viewer_client.get("/api/v1/tasks/workers/stats").status_code == 403
    assert response.status_code == 200
    assert response.json() == {"count": 0, "workers": []}


# --- runs and dead letters ----------------------------------------------------------------------


def test_runs_filters(viewer_client):
    # given
    account = CloudAccountFactory()
    mine = queued_run(task_name="monitor_budget", kwargs={"account_id": account.id}, correlation_id="corr-f")
    other = queued_run(task_name="detect_cost_anomalies", kwargs={"account_id": CloudAccountFactory().id})
    TaskRun.objects.filter(id=other.id).update(state=RunState.FAILURE, triggered_by=TriggerKind.SCHEDULE)

    def ids(query):
        return [r["id"] for r in viewer_client.get(f"/api/v1/tasks/runs?{query}").json()["results"]]

    # when / then
    assert ids("task_name=monitor_budget") == [str(mine.id)]
    assert ids("state=FAILURE") == [str(other.id)]
    assert ids("triggered_by=schedule") == [str(other.id)]
    assert ids("correlation_id=corr-f") == [str(mine.id)]
    assert ids(f"account_id={account.id}") == [str(mine.id)]
    assert ids("limit=1&offset=1") == [str(mine.id)]  # newest first


def test_runs_bad_filter_is_400_and_unknown_run_404(viewer_client):
    # when
    bad_state = viewer_client.get("/api/v1/tasks/runs?state=DONE")
    bad_param = viewer_client.get("/api/v1/tasks/runs?stat=FAILURE")
    unknown = viewer_client.get(f"/api/v1/tasks/runs/{uuid.uuid4()}")
    # then
    assert bad_state.status_code == bad_param.status_code == 400
    assert unknown.status_code == 404


def test_replay_a_dead_letter(operator_client, trigger_user, django_capture_on_commit_callbacks, broker):
    # given
    letter = dead_letter(task_name="monitor_budget", budget_id=7)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    # then
    assert response.status_code == 202
    replay = TaskRun.objects.get(celery_task_id=response.json()["task_id"])
    assert (replay.task_name, replay.kwargs, replay.triggered_by) == (
        "monitor_budget",
        {"budget_id": 7, "account_id": letter.run.account_id},
        "replay",
    )
    assert replay.user == trigger_user
    assert replay.correlation_id == letter.run.correlation_id
    letter.refresh_from_db()
    assert letter.replay_run == replay
    assert [m["headers"]["id"] for m in queued_messages(broker, "monitoring")] == [replay.celery_task_id]


def test_replay_while_the_previous_replay_is_active_is_409(operator_client):
    # given
    letter = dead_letter()
    first = operator_client.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    # when
    second = operator_client.post(f"/api/v1/tasks/dead-letters/{letter.id}/replay")
    # then
    assert first.status_code == 202
    assert second.status_code == 409
    assert TaskRun.objects.filter(triggered_by=TriggerKind.REPLAY).count() == 1


def test_replay_unknown_dead_letter_is_404(operator_client):
    # when
    response = operator_client.post("/api/v1/tasks/dead-letters/999999/replay")
    # then
    assert response.status_code == 404


def test_dead_letters_filter_replayed(viewer_client, operator_client):
    # given
    replayed = dead_letter()
    waiting = dead_letter()
    operator_client.post(f"/api/v1/tasks/dead-letters/{replayed.id}/replay")
    # when
    yes = viewer_client.get("/api/v1/tasks/dead-letters?replayed=true").json()["results"]
    no = viewer_client.get("/api/v1/tasks/dead-letters?replayed=false").json()["results"]
    # then
    assert [d["id"] for d in yes] == [replayed.id]
    assert [d["id"] for d in no] == [waiting.id]
    assert yes[0]["replay_state"] == "QUEUED"


# --- health -------------------------------------------------------------------------------------


def test_health_without_worker_or_beat_is_503_naming_them(viewer_client, platform_client, broker):
    # when
    response = platform_client.get("/api/v1/tasks/health")
    summary = viewer_client.get("/api/v1/tasks/health")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["failing"] == ["workers", "beat"]
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert "never written" in body["checks"]["beat"]["error"]
    # any signed-in user: the status and the failing checks' names, no details
    assert summary.status_code == 503
    assert summary.json()["failing"] == ["workers", "beat"]
    assert "error" not in summary.json()["checks"]["beat"]


def test_health_beat_freshness(platform_client, broker, settings):
    # given
    import time

    from tasks_app.beat import HEARTBEAT_KEY

    settings.BEAT_HEARTBEAT_MAX_AGE = 30
    # when
    broker.set(HEARTBEAT_KEY, str(time.time() - 5))
    fresh = platform_client.get("/api/v1/tasks/health").json()["checks"]["beat"]
    broker.set(HEARTBEAT_KEY, str(time.time() - 60))
    stale = platform_client.get("/api/v1/tasks/health").json()["checks"]["beat"]
    # then
    assert fresh["ok"] is True and 4 < fresh["age_s"] < 30
    assert stale["ok"] is False and "max 30 s" in stale["error"]


def test_health_with_broker_down_names_it(viewer_client, settings):
    # given
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    # when
    response = viewer_client.get("/api/v1/tasks/health")
    # then
    assert response.status_code == 503
    assert response.json()["failing"] == ["broker", "workers", "beat"]


def test_healthz_is_unauthenticated_and_minimal(api_client, settings):
    # when
    up = api_client.get("/healthz")
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    down = api_client.get("/healthz")
    # then
    assert (up.status_code, up.json()) == (200, {"status": "ok"})
    assert (down.status_code, down.json()) == (503, {"status": "fail"})


# --- the schema ---------------------------------------------------------------------------------


def test_openapi_schema_generates_without_warnings(tmp_path):
    # when
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    # then
    schema = (tmp_path / "schema.yml").read_text()
    for path in ("/api/v1/tasks/sync/cost-data:", "/api/v1/tasks/cancel/{task_id}:", "/api/v1/tasks/health:"):
        assert path in schema


def test_trigger_permission_exists():
    assert Permission.objects.filter(codename="trigger_tasks", content_type__app_label="tasks_app").exists()


@pytest.mark.parametrize(
    "path",
    ["/api/v1/tasks/runs", "/api/v1/tasks/active", "/api/v1/tasks/dead-letters", "/api/v1/accounts/"],
)
def test_browsable_api_renders_for_a_session_user(trigger_user, path):
    # given
    client = APIClient()
    client.login(username="operator", password="pass-word-123")
    # when
    response = client.get(path, HTTP_ACCEPT="text/html")
    # then
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_browsable_trigger_form_renders(trigger_user):
    # given
    client = APIClient()
    client.login(username="operator", password="pass-word-123")
    # when: a GET on a POST-only endpoint still renders the page with its form
    response = client.get("/api/v1/tasks/sync/cost-data", HTTP_ACCEPT="text/html")
    # then
    assert response.status_code == 405
    assert b"billing_period" in response.content


def test_schema_and_docs_are_served(viewer_client):
    assert viewer_client.get("/api/schema/").status_code == 200
    assert viewer_client.get("/api/docs/").status_code == 200
