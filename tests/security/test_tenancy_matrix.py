"""Tenancy matrix: users of team A (each role), a platform admin and users with no team × every API route and every
admin page. Their own team's objects answer, team B's are not found (API 404; admin 403 / redirect / absent),
organisation-wide ones are for platform admins, for reads and writes alike.

Routes are enumerated from the URL resolver and the admin registry: a new route or admin page that this module
does not cover fails `test_every_api_route_is_covered` / `test_every_admin_page_is_covered`.
"""

import re

import pytest
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from costs_app.models import AnomalyMonitor, Recommendation
from providers_app.models import CloudAccount
from tasks_app.models import DeadLetter, RunState, TaskRun

from .world import TRACEBACK, build_world

pytestmark = pytest.mark.django_db

TEAM_ROLES = ("viewer", "operator", "account_admin")
NOT_FOUND_ADMIN = (302, 403, 404)  # Django's admin redirects (with "does not exist") for an object it cannot see


@pytest.fixture
def world():
    return build_world()


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def api_routes() -> dict[str, str]:
    """name -> route of every URL pattern under /api/v1/."""
    found = {}

    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                route = prefix + str(p.pattern)
                if route.startswith(("api/v1/", "^api/v1/")):
                    found[p.name] = route

    walk(get_resolver().url_patterns)
    return found


def ids(response) -> set:
    body = response.json()
    rows = body["results"] if isinstance(body, dict) and "results" in body else body
    return {str(r["id"]) for r in rows}


# --- reads: lists -----------------------------------------------------------------------------------------------

LISTS = {
    # route name: (path, model label of the rows)
    "accounts-list": ("/api/v1/accounts/", "providers_app.cloudaccount"),
    "recommendations-list": ("/api/v1/recommendations/", "costs_app.recommendation"),
    "anomalies-list": ("/api/v1/anomalies/", "costs_app.anomaly"),
    "anomaly-monitors-list": ("/api/v1/anomaly-monitors/", "costs_app.anomalymonitor"),
    "taskrun-list": ("/api/v1/tasks/runs", "tasks_app.taskrun"),
    "deadletter-list": ("/api/v1/tasks/dead-letters", "tasks_app.deadletter"),
}


def check_list(world, name):
    path, label = LISTS[name]
    own, other, org = world.a.rows[label], world.b.rows[label], world.org.get(label)
    for role in TEAM_ROLES:
        response = client_for(world.users[role]).get(path)
        assert response.status_code == 200, (role, response.content)
        seen = ids(response)
        assert str(own.pk) in seen, (name, role)
        assert str(other.pk) not in seen, (name, role, "sees team B's")
        if org is not None:
            assert str(org.pk) not in seen, (name, role, "sees organisation-wide rows")
    platform = ids(client_for(world.users["platform_admin"]).get(path))
    assert {str(own.pk), str(other.pk)} <= platform
    if org is not None:
        assert str(org.pk) in platform
    # no permission at all: refused; permissions but no team: nothing
    assert client_for(world.users["nobody"]).get(path).status_code == 403
    assert ids(client_for(world.users["perms_no_team"]).get(path)) == set()


# --- reads: details ---------------------------------------------------------------------------------------------

DETAILS = {
    "accounts-detail": ("/api/v1/accounts/{pk}/", "providers_app.cloudaccount"),
    "recommendations-detail": ("/api/v1/recommendations/{pk}/", "costs_app.recommendation"),
    "anomalies-detail": ("/api/v1/anomalies/{pk}/", "costs_app.anomaly"),
    "anomaly-monitors-detail": ("/api/v1/anomaly-monitors/{pk}/", "costs_app.anomalymonitor"),
    "taskrun-detail": ("/api/v1/tasks/runs/{pk}", "tasks_app.taskrun"),
    "deadletter-detail": ("/api/v1/tasks/dead-letters/{pk}", "tasks_app.deadletter"),
}


def check_detail(world, name):
    path, label = DETAILS[name]
    own, other, org = world.a.rows[label], world.b.rows[label], world.org.get(label)
    for role in TEAM_ROLES:
        client = client_for(world.users[role])
        assert client.get(path.format(pk=own.pk)).status_code == 200, (name, role)
        assert client.get(path.format(pk=other.pk)).status_code == 404, (name, role)
        if org is not None:
            assert client.get(path.format(pk=org.pk)).status_code == 404, (name, role)
    platform = client_for(world.users["platform_admin"])
    for row in (own, other, *([org] if org is not None else [])):
        assert platform.get(path.format(pk=row.pk)).status_code == 200, name
    assert client_for(world.users["nobody"]).get(path.format(pk=own.pk)).status_code == 403
    assert client_for(world.users["perms_no_team"]).get(path.format(pk=own.pk)).status_code == 404


# --- writes on objects --------------------------------------------------------------------------------------------
# (route name, method, path, model label, payload, role that may, the answer it gets on its own team's object)

WRITES = {
    "accounts-detail:patch": (
        "patch", "/api/v1/accounts/{pk}/", "providers_app.cloudaccount", {"is_active": False}, "account_admin", 200
    ),
    "accounts-test-connection": (
        "post", "/api/v1/accounts/{pk}/test-connection/", "providers_app.cloudaccount", None, "operator", 202
    ),
    "recommendations-dismiss": (
        "post", "/api/v1/recommendations/{pk}/dismiss/", "costs_app.recommendation", {"reason": "no"}, "operator", 200
    ),
    "recommendations-done": (
        "post", "/api/v1/recommendations/{pk}/done/", "costs_app.recommendation", {}, "operator", 200
    ),
    # an open recommendation cannot be reopened: 409 proves the object was reached, 404 that it was not
    "recommendations-reopen": (
        "post", "/api/v1/recommendations/{pk}/reopen/", "costs_app.recommendation", {}, "operator", 409
    ),
    "anomalies-status": (
        "post", "/api/v1/anomalies/{pk}/status/", "costs_app.anomaly", {"status": "acknowledged"}, "operator", 200
    ),
    "anomaly-monitors-detail:patch": (
        "patch", "/api/v1/anomaly-monitors/{pk}/", "costs_app.anomalymonitor", {"min_impact": "5"}, "account_admin",
        200,
    ),
    "anomaly-monitors-detail:delete": (
        "delete", "/api/v1/anomaly-monitors/{pk}/", "costs_app.anomalymonitor", None, "account_admin", 204
    ),
    "deadletter-replay": (
        "post", "/api/v1/tasks/dead-letters/{pk}/replay", "tasks_app.deadletter", None, "operator", 202
    ),
}  # fmt: skip


def check_write(world, key):
    method, path, label, payload, allowed, success = WRITES[key]
    own, other = world.a.rows[label], world.b.rows[label]

    def call(user, row):
        return getattr(client_for(user), method)(path.format(pk=row.pk), payload, format="json")

    # team B's object: not found, whatever the role, and unchanged
    before = type(other).objects.filter(pk=other.pk).values().first()
    for role in (*TEAM_ROLES, "perms_no_team"):
        response = call(world.users[role], other)
        assert response.status_code in (403, 404), (key, role, response.status_code)
        if (
            TEAM_ROLES.index(allowed) <= (TEAM_ROLES.index(role) if role in TEAM_ROLES else -1)
            or role == "perms_no_team"
        ):
            assert response.status_code == 404, (key, role, "another team's object must be not found")
    assert type(other).objects.filter(pk=other.pk).values().first() == before, (key, "team B's row changed")
    # organisation-wide objects: not found for team members
    org = world.org.get(label)
    if org is not None:
        assert call(world.users[allowed], org).status_code == 404, key
    # own object: roles below `allowed` are refused, `allowed` succeeds
    for role in TEAM_ROLES[: TEAM_ROLES.index(allowed)]:
        assert call(world.users[role], own).status_code in (403, 404), (key, role)
    assert call(world.users[allowed], own).status_code == success, key
    # a platform admin reaches team B's
    assert call(world.users["platform_admin"], other).status_code == success, key
    # no permission at all
    assert call(world.users["nobody"], own).status_code == 403, key


# --- triggers, status, cancel ---------------------------------------------------------------------------------

TRIGGERS = {
    "tasks-sync-cost-data": "/api/v1/tasks/sync/cost-data",
    "tasks-sync-resources": "/api/v1/tasks/sync/resources",
    "tasks-monitor-budgets": "/api/v1/tasks/monitor/budgets",
    "tasks-analyze-optimization": "/api/v1/tasks/analyze/optimization",
    "tasks-analyze-anomalies": "/api/v1/tasks/analyze/anomalies",
}


def check_trigger(world, name):
    path = TRIGGERS[name]
    operator = client_for(world.users["operator"])
    runs_before = TaskRun.objects.count()
    other = operator.post(path, {"account_id": world.b.account.id}, format="json")
    missing = operator.post(path, {"account_id": 999999}, format="json")
    everyone = operator.post(path, {}, format="json")
    viewer = client_for(world.users["viewer"]).post(path, {"account_id": world.a.account.id}, format="json")
    # another team's account answers as one that does not exist; no account = the whole organisation
    assert other.status_code == missing.status_code == 400
    assert other.json() == {"account_id": [f"Cloud account {world.b.account.id} does not exist."]}
    assert everyone.status_code == 403 and "account_id" in everyone.json()["detail"]
    assert viewer.status_code == 403
    assert TaskRun.objects.count() == runs_before
    own = operator.post(path, {"account_id": world.a.account.id}, format="json")
    assert own.status_code == 202
    assert TaskRun.objects.get(celery_task_id=own.json()["task_id"]).account == world.a.account
    assert client_for(world.users["platform_admin"]).post(path, {}, format="json").status_code == 202
    if name == "tasks-monitor-budgets":
        budget_b = world.b.rows["costs_app.budget"]
        refused = operator.post(path, {"budget_id": budget_b.id}, format="json")
        assert refused.status_code == 400 and "does not exist" in refused.json()["budget_id"][0]
        mine = operator.post(path, {"budget_id": world.a.rows["costs_app.budget"].id}, format="json")
        assert mine.status_code == 202
        # a check of a budget of one account concerns that account: its operator follows the run
        assert operator.get(f"/api/v1/tasks/status/{mine.json()['task_id']}").status_code == 200


def check_cleanup(world, name):
    path = "/api/v1/tasks/maintenance/cleanup"
    for role in (*TEAM_ROLES, "perms_no_team"):
        assert client_for(world.users[role]).post(path, {"dry_run": True}, format="json").status_code == 403, role
    assert client_for(world.users["platform_admin"]).post(path, {"dry_run": True}, format="json").status_code == 202


def check_status(world, name):
    own, other = world.a.rows["tasks_app.taskrun"], world.b.rows["tasks_app.taskrun"]
    org = world.org["tasks_app.taskrun"]
    for role in TEAM_ROLES:
        client = client_for(world.users[role])
        body = client.get(f"/api/v1/tasks/status/{own.celery_task_id}")
        assert body.status_code == 200, role
        assert client.get(f"/api/v1/tasks/status/{other.celery_task_id}").status_code == 404, role
        assert client.get(f"/api/v1/tasks/status/{org.celery_task_id}").status_code == 404, role
    platform = client_for(world.users["platform_admin"])
    assert all(platform.get(f"/api/v1/tasks/status/{r.celery_task_id}").status_code == 200 for r in (other, org))
    assert client_for(world.users["nobody"]).get(f"/api/v1/tasks/status/{own.celery_task_id}").status_code == 404


def check_cancel(world, name):
    own, other = world.a.rows["queued_run"], world.b.rows["queued_run"]
    assert client_for(world.users["viewer"]).delete(f"/api/v1/tasks/cancel/{own.celery_task_id}").status_code == 403
    for role in ("operator", "account_admin", "perms_no_team"):
        response = client_for(world.users[role]).delete(f"/api/v1/tasks/cancel/{other.celery_task_id}")
        assert response.status_code == 404, role
    assert TaskRun.objects.get(pk=other.pk).state == RunState.QUEUED
    assert client_for(world.users["operator"]).delete(f"/api/v1/tasks/cancel/{own.celery_task_id}").status_code == 200
    platform = client_for(world.users["platform_admin"])
    assert platform.delete(f"/api/v1/tasks/cancel/{other.celery_task_id}").status_code == 200


def check_active(world, name):
    own, other = world.a.rows["queued_run"], world.b.rows["queued_run"]
    for role in TEAM_ROLES:
        body = client_for(world.users[role]).get("/api/v1/tasks/active").json()
        seen = {r["task_id"] for r in body["runs"]}
        assert own.celery_task_id in seen and other.celery_task_id not in seen, role
        assert body["workers"] == [] and body["worker_tasks"] == []
    body = client_for(world.users["platform_admin"]).get("/api/v1/tasks/active").json()
    assert {own.celery_task_id, other.celery_task_id} <= {r["task_id"] for r in body["runs"]}
    assert client_for(world.users["perms_no_team"]).get("/api/v1/tasks/active").json()["runs"] == []


def check_workers(world, name):
    for role in (*TEAM_ROLES, "nobody", "perms_no_team"):
        assert client_for(world.users[role]).get("/api/v1/tasks/workers/stats").status_code == 403, role
    assert client_for(world.users["platform_admin"]).get("/api/v1/tasks/workers/stats").status_code in (200, 503)


def check_health(world, name):
    summary = client_for(world.users["nobody"]).get("/api/v1/tasks/health")
    detail = client_for(world.users["platform_admin"]).get("/api/v1/tasks/health")
    assert summary.status_code in (200, 503) and detail.status_code in (200, 503)
    assert all(set(check) <= {"ok", "latency_ms"} for check in summary.json()["checks"].values())
    assert any(set(check) - {"ok", "latency_ms"} for check in detail.json()["checks"].values())


def check_control_room(world, name):
    own, other = world.a.rows["queued_run"], world.b.rows["queued_run"]
    for role in TEAM_ROLES:
        body = client_for(world.users[role]).get("/api/v1/tasks/control-room").json()
        seen = {r["id"] for r in body["recent_runs"]}
        assert str(own.pk) in seen and str(other.pk) not in seen, role
        assert body["schedules"] == [] and "workers" not in body["system"] and "queues" not in body["system"], role
    assert client_for(world.users["nobody"]).get("/api/v1/tasks/control-room").status_code == 403
    body = client_for(world.users["platform_admin"]).get("/api/v1/tasks/control-room").json()
    assert {str(own.pk), str(other.pk)} <= {r["id"] for r in body["recent_runs"]}
    assert "queues" in body["system"]


def check_export(world, name):
    url = "/api/v1/costs/export?account={}"
    for role in TEAM_ROLES:
        client = client_for(world.users[role])
        assert client.get(url.format(world.a.account.name)).status_code == 200, role
        other = client.get(url.format(world.b.account.name))
        assert other.status_code == 400 and "does not exist" in other.json()["account"][0], role
    assert client_for(world.users["nobody"]).get(url.format(world.a.account.name)).status_code == 403
    assert client_for(world.users["perms_no_team"]).get(url.format(world.a.account.name)).status_code == 400
    assert client_for(world.users["platform_admin"]).get(url.format(world.b.account.name)).status_code == 200


def check_dashboards(world, name):
    """The dashboards' JSON: a team's users see their accounts' spend, budgets, anomalies and savings only; another
    team's budget or anomaly is not found; a platform admin sees the organisation."""
    from decimal import Decimal

    from costs_app.models import CostDailyRollup, CostTagRollup

    spend_b = Decimal("123.45")
    CostDailyRollup.objects.filter(account=world.b.account).update(billed_cost=spend_b)
    CostTagRollup.objects.filter(account=world.b.account).update(billed_cost=spend_b)
    window = "date_from=2024-09-01&date_to=2024-09-30&currency=USD"
    budget_a, budget_b = world.a.rows["costs_app.budget"], world.b.rows["costs_app.budget"]
    anomaly_a, anomaly_b = world.a.rows["costs_app.anomaly"], world.b.rows["costs_app.anomaly"]
    paths = {
        "dashboards-api-spend": f"/api/v1/dashboards/spend/?{window}&account={world.b.account.id}&group_by=account",
        "dashboards-api-spend-tags": f"/api/v1/dashboards/spend/tags/?{window}",
        "dashboards-api-budgets": "/api/v1/dashboards/budgets/",
        "dashboards-api-burn": f"/api/v1/dashboards/budgets/{budget_b.pk}/burn/",
        "dashboards-api-anomaly-series": f"/api/v1/dashboards/anomalies/{anomaly_b.pk}/series/",
        "dashboards-api-savings": "/api/v1/dashboards/savings/",
    }
    path = paths[name]
    platform = client_for(world.users["platform_admin"]).get(path)
    assert platform.status_code == 200, platform.content
    assert client_for(world.users["nobody"]).get(path).status_code in (403, 404)
    for role in TEAM_ROLES:
        client = client_for(world.users[role])
        answer = client.get(path)
        if name == "dashboards-api-burn":
            assert answer.status_code == 404, role
            assert client.get(f"/api/v1/dashboards/budgets/{budget_a.pk}/burn/").status_code == 200, role
        elif name == "dashboards-api-anomaly-series":
            assert answer.status_code == 404, role
            assert client.get(f"/api/v1/dashboards/anomalies/{anomaly_a.pk}/series/").status_code == 200, role
        else:
            assert answer.status_code == 200, role
            text = answer.content.decode()
            # nothing of team B in the answer: its spend, its budget's name, its account's name
            for secret in ("123.45", budget_b.name, world.b.account.name):
                assert secret not in text, (role, secret)
    text = platform.content.decode()
    if name == "dashboards-api-spend":
        assert "123.45" in text  # the platform admin's answer does hold team B's spend
    if name == "dashboards-api-budgets":
        assert budget_a.name in text and budget_b.name in text


def check_account_create(world, name):
    admin_a = client_for(world.users["account_admin"])
    payload = {"provider": "focus", "settings": {"path": "/data"}}
    into_b = admin_a.post("/api/v1/accounts/", {**payload, "name": "sneaky", "team": world.b.team.pk}, format="json")
    assert into_b.status_code == 400 and "team" in into_b.json()
    assert (
        client_for(world.users["operator"])
        .post("/api/v1/accounts/", {**payload, "name": "op", "team": world.a.team.pk}, format="json")
        .status_code
        == 403
    )
    created = admin_a.post("/api/v1/accounts/", {**payload, "name": "mine", "team": world.a.team.pk}, format="json")
    assert created.status_code == 201 and CloudAccount.objects.get(name="mine").team == world.a.team
    assert not CloudAccount.objects.filter(name__in=["sneaky", "op"]).exists()
    check_list(world, "accounts-list")


def check_monitor_create(world, name):
    admin_a = client_for(world.users["account_admin"])
    other = admin_a.post("/api/v1/anomaly-monitors/", {"name": "m-b", "account": world.b.account.pk}, format="json")
    org_wide = admin_a.post("/api/v1/anomaly-monitors/", {"name": "m-org"}, format="json")
    foreign_channel = admin_a.post(
        "/api/v1/anomaly-monitors/",
        {"name": "m-ch", "account": world.a.account.pk, "channels": [world.b.rows["costs_app.notificationchannel"].pk]},
        format="json",
    )
    assert other.status_code == org_wide.status_code == foreign_channel.status_code == 400
    assert not AnomalyMonitor.objects.filter(name__in=["m-b", "m-org", "m-ch"]).exists()
    own = admin_a.post("/api/v1/anomaly-monitors/", {"name": "m-a", "account": world.a.account.pk}, format="json")
    assert own.status_code == 201, own.content
    check_list(world, "anomaly-monitors-list")


def check_rules(world, name):
    # the rule catalogue: no team's data
    assert client_for(world.users["viewer"]).get("/api/v1/recommendations/rules/").status_code == 200


def check_not_tenant_data(world, name):
    """JWT: no team's data (authentication; its limits are the limits helper's)."""


ROUTES = {
    **dict.fromkeys(LISTS, check_list),
    **dict.fromkeys(DETAILS, check_detail),
    **dict.fromkeys(TRIGGERS, check_trigger),
    "accounts-test-connection": lambda w, n: check_write(w, n),
    "recommendations-dismiss": lambda w, n: check_write(w, n),
    "recommendations-done": lambda w, n: check_write(w, n),
    "recommendations-reopen": lambda w, n: check_write(w, n),
    "anomalies-status": lambda w, n: check_write(w, n),
    "deadletter-replay": lambda w, n: check_write(w, n),
    "tasks-maintenance-cleanup": check_cleanup,
    "tasks-status": check_status,
    "tasks-cancel": check_cancel,
    "tasks-active": check_active,
    "tasks-workers-stats": check_workers,
    "tasks-health": check_health,
    "tasks-control-room": check_control_room,
    "dashboards-api-spend": check_dashboards,
    "dashboards-api-spend-tags": check_dashboards,
    "dashboards-api-budgets": check_dashboards,
    "dashboards-api-burn": check_dashboards,
    "dashboards-api-anomaly-series": check_dashboards,
    "dashboards-api-savings": check_dashboards,
    "costs-export": check_export,
    "recommendations-rules": check_rules,
    "token-obtain": check_not_tenant_data,
    "token-refresh": check_not_tenant_data,
}
# Routes with several methods: the extra (write) checks, keyed "route:method".
EXTRA = {
    "accounts-list": [check_account_create],
    "accounts-detail": [lambda w, n: check_write(w, "accounts-detail:patch")],
    "anomaly-monitors-list": [check_monitor_create],
    "anomaly-monitors-detail": [
        lambda w, n: check_write(w, "anomaly-monitors-detail:patch"),
        lambda w, n: check_write(w, "anomaly-monitors-detail:delete"),
    ],
}


def test_every_api_route_is_covered():
    missing = sorted(set(api_routes()) - set(ROUTES))
    assert not missing, f"API routes without a tenancy check in this module: {missing}"


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_api_route(world, name):
    ROUTES[name](world, name)
    for extra in EXTRA.get(name, []):
        extra(world, name)


def test_errors_users_see_carry_the_message_not_the_traceback(world):
    run = world.a.rows["tasks_app.taskrun"]
    for role in TEAM_ROLES:
        body = client_for(world.users[role]).get(f"/api/v1/tasks/runs/{run.pk}").json()
        assert body["error"] == "PermanentError: bucket not found" and body["error_traceback"] == ""
        assert body["worker"] == ""
    body = client_for(world.users["platform_admin"]).get(f"/api/v1/tasks/runs/{run.pk}").json()
    assert body["error_traceback"] == TRACEBACK and body["worker"] == "worker-host-7/4242"


# --- the admin ----------------------------------------------------------------------------------------------------

PLATFORM_ONLY = {
    "django_celery_beat.periodictask",
    "django_celery_beat.intervalschedule",
    "django_celery_beat.crontabschedule",
    "django_celery_beat.solarschedule",
    "django_celery_beat.clockedschedule",
    "tasks_app.retentionpolicy",
    "costs_app.costallocationtag",
}
# User management and the JWT blacklist (it lists every user's tokens): superusers only (no role group holds
# their permissions).
SUPERUSER_ONLY = {"auth.user", "auth.group", "token_blacklist.outstandingtoken", "token_blacklist.blacklistedtoken"}


def admin_labels() -> set[str]:
    return {model._meta.label_lower for model in admin.site._registry}


def test_every_admin_page_is_covered():
    known = set(TEAM_PAGES) | PLATFORM_ONLY | SUPERUSER_ONLY
    missing = sorted(admin_labels() - known)
    assert not missing, f"admin pages without a tenancy check in this module: {missing}"


def admin_url(label: str, view: str, *args) -> str:
    app, model = label.split(".")
    return reverse(f"admin:{app}_{model}_{view}", args=args)


def page(client, url):
    response = client.get(url)
    return response.status_code, response.content.decode()


TEAM_PAGES = [
    "providers_app.cloudaccount", "providers_app.resource", "providers_app.team", "costs_app.costlineitem",
    "costs_app.costdailyrollup", "costs_app.costtagrollup", "costs_app.notificationchannel", "costs_app.budget",
    "costs_app.budgetalert", "costs_app.alertdelivery", "costs_app.anomalymonitor", "costs_app.anomaly",
    "costs_app.recommendation", "tasks_app.taskrun", "tasks_app.deadletter",
]  # fmt: skip


@pytest.mark.parametrize("label", TEAM_PAGES)
def test_admin_team_pages(client, world, label):
    own, other = world.a.rows[label], world.b.rows[label]
    own_change, other_change = admin_url(label, "change", own.pk), admin_url(label, "change", other.pk)
    for role in TEAM_ROLES:
        client.force_login(world.users[role])
        status, html = page(client, admin_url(label, "changelist"))
        assert status == 200, (label, role)
        assert own_change in html, (label, role, "own row missing")
        assert other_change not in html, (label, role, "team B's row listed")
        # nothing of team B anywhere on the page: not its account in a list filter, not its team
        assert "acct-B" not in html and "team-B" not in html, (label, role)
        assert page(client, own_change)[0] == 200, (label, role)
        assert client.get(other_change).status_code in NOT_FOUND_ADMIN, (label, role)
        # writes on team B's row: the delete page and the bulk delete action leave it alone
        client.post(admin_url(label, "delete", other.pk), {"post": "yes"})
        client.post(
            admin_url(label, "changelist"), {"action": "delete_selected", "_selected_action": [other.pk], "post": "yes"}
        )
        assert type(other).objects.filter(pk=other.pk).exists(), (label, role, "team B's row deleted")
    client.force_login(world.users["platform_admin"])
    status, html = page(client, admin_url(label, "changelist"))
    assert status == 200 and own_change in html and other_change in html, label
    assert page(client, other_change)[0] == 200
    client.force_login(world.users["nobody"])
    assert client.get(admin_url(label, "changelist")).status_code == 403
    client.force_login(world.users["perms_no_team"])
    status, html = page(client, admin_url(label, "changelist"))
    if status == 200:
        assert own_change not in html and other_change not in html, label


@pytest.mark.parametrize("label", sorted(PLATFORM_ONLY))
def test_admin_platform_pages(client, world, label):
    for role in (*TEAM_ROLES, "perms_no_team"):
        client.force_login(world.users[role])
        assert client.get(admin_url(label, "changelist")).status_code == 403, (label, role)
    client.force_login(world.users["platform_admin"])
    assert client.get(admin_url(label, "changelist")).status_code == 200, label


@pytest.mark.parametrize(
    "label",
    ["costs_app.budget", "costs_app.anomalymonitor", "costs_app.notificationchannel", "providers_app.cloudaccount"],
)
def test_admin_forms_offer_no_other_team_choices(client, world, label):
    client.force_login(world.users["account_admin"])
    for url in (admin_url(label, "add"), admin_url(label, "change", world.a.rows[label].pk)):
        status, html = page(client, url)
        assert status == 200, (label, url)
        for foreign in ("acct-B", "team-B", "channel-B", "channel-org", "budget-B"):
            assert foreign not in html, (label, url, foreign)


def test_admin_trigger_actions_only_act_on_operated_accounts(client, world):
    # an operator selects team A's and team B's queued runs and cancels them: only A's is cancelled
    client.force_login(world.users["operator"])
    own, other = world.a.rows["queued_run"], world.b.rows["queued_run"]
    client.post(
        admin_url("tasks_app.taskrun", "changelist"),
        {"action": "cancel_runs", "_selected_action": [str(own.pk), str(other.pk)]},
    )
    assert TaskRun.objects.get(pk=own.pk).state == RunState.CANCELLED
    assert TaskRun.objects.get(pk=other.pk).state == RunState.QUEUED
    # replaying team B's dead letter from the admin: nothing enqueued
    letter = world.b.rows["tasks_app.deadletter"]
    client.post(admin_url("tasks_app.deadletter", "changelist"), {"action": "replay", "_selected_action": [letter.pk]})
    assert DeadLetter.objects.get(pk=letter.pk).replayed_at is None
    # dismissing team B's recommendation: unchanged
    rec = world.b.rows["costs_app.recommendation"]
    client.post(
        admin_url("costs_app.recommendation", "changelist"),
        {"action": "mark_done", "_selected_action": [rec.pk]},
    )
    assert Recommendation.objects.get(pk=rec.pk).status == "open"


def test_admin_index_task_system_box_counts_only_the_users_runs(client, world):
    # given team A and team B each with a queued run and a failed run (dead-lettered), and an org-wide failed run
    def box(user) -> dict[str, str]:
        client.force_login(user)
        html = client.get(reverse("admin:index")).content.decode()
        return {
            name: re.search(rf'id="task-system-{name}"[^>]*>(\d+)</td>', html).group(1)
            for name in ("queued", "failed", "dead-letters")
        }

    # then a team A user counts team A's runs only, a platform admin every run
    for role in TEAM_ROLES:
        assert box(world.users[role]) == {"queued": "1", "failed": "1", "dead-letters": "1"}, role
    assert box(world.users["platform_admin"]) == {"queued": "2", "failed": "3", "dead-letters": "3"}
