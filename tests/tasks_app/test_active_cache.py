"""GET /api/v1/tasks/active: bounded answers (limit, counts), and the per-scope answer cache — never shared between
scopes, single flight, fresh within its TTL."""

import threading
import time
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.services.teams import team_create, team_member_set
from tasks_app.api.answer_cache import ScopedAnswerCache, active_answers
from tasks_app.models import RunState, TaskRun, TriggerKind
from tasks_app.services.runs import task_enqueue
from tests.factories import CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

ACTIVE = "/api/v1/tasks/active"


def run_of(account=None, *, task_name="platform_noop") -> TaskRun:
    kwargs = {"account_id": account.id} if account is not None else {}
    return task_enqueue(
        task_name=task_name, kwargs=kwargs, triggered_by=TriggerKind.COMMAND, correlation_id=uuid.uuid4().hex[:12]
    )


def client_of(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def member(team, role=Role.VIEWER):
    user = UserFactory()
    team_member_set(team=team, user=user, role=role)
    return user


def task_ids(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {r["task_id"] for r in response.json()["runs"]}


# --- the bounded answer ---------------------------------------------------------------------------


def test_active_lists_running_runs_first_up_to_limit_and_counts_them_all(platform_client):
    # given: 4 queued runs, then a started one and one waiting to retry (the youngest)
    queued = [run_of() for _ in range(4)]
    started, retrying = run_of(task_name="monitor_budget"), run_of(task_name="monitor_budget")
    TaskRun.objects.filter(id=started.id).update(state=RunState.STARTED)
    TaskRun.objects.filter(id=retrying.id).update(state=RunState.RETRY)
    # when
    body = platform_client.get(ACTIVE, {"limit": 3}).json()
    default = platform_client.get(ACTIVE).json()
    # then
    assert [r["task_id"] for r in body["runs"]] == [
        started.celery_task_id,
        retrying.celery_task_id,
        queued[0].celery_task_id,
    ]
    assert (body["limit"], body["runs_total"], default["limit"], len(default["runs"])) == (3, 6, 50, 6)
    assert body["counts"] == [
        {"task_name": "monitor_budget", "state": "RETRY", "count": 1},
        {"task_name": "monitor_budget", "state": "STARTED", "count": 1},
        {"task_name": "platform_noop", "state": "QUEUED", "count": 4},
    ]


def test_active_limit_is_capped_and_validated(platform_client):
    assert platform_client.get(ACTIVE, {"limit": 100000}).json()["limit"] == 500
    assert platform_client.get(ACTIVE, {"limit": 0}).json()["runs"] == []
    assert platform_client.get(ACTIVE, {"limit": -1}).status_code == 400
    assert platform_client.get(ACTIVE, {"limit": "many"}).status_code == 400


# --- the cache: scopes ----------------------------------------------------------------------------


def test_cached_answers_are_never_shared_between_scopes(platform_admin):
    # given: teams A and B, each with an account and a queued run; a viewer of each, a second viewer of A, a user
    # with the permissions and no team, and a platform admin
    team_a, team_b = team_create(name="team-a"), team_create(name="team-b")
    run_a = run_of(CloudAccountFactory(team=team_a))
    run_b = run_of(CloudAccountFactory(team=team_b))
    org_wide = run_of()  # no account: platform admins only
    viewer_a, viewer_a2, viewer_b = member(team_a), member(team_a), member(team_b)
    no_team = UserFactory()
    no_team.user_permissions.add(Permission.objects.get(codename="view_taskrun"))
    # when: all of them ask within one TTL (10 s here, so nothing expires during the test), the admin first
    with override_settings(TASKS_ACTIVE_CACHE_SECONDS=10):
        before = active_answers.computed
        admin_view = client_of(platform_admin).get(ACTIVE)
        seen = {name: client_of(u).get(ACTIVE) for name, u in [("a", viewer_a), ("b", viewer_b), ("none", no_team)]}
        computed = active_answers.computed
        again_a = client_of(viewer_a2).get(ACTIVE)
        # then: a second viewer of the same team, same scope, is served the answer already computed
        assert active_answers.computed == computed
    assert task_ids(admin_view) == {run_a.celery_task_id, run_b.celery_task_id, org_wide.celery_task_id}
    assert task_ids(seen["a"]) == task_ids(again_a) == {run_a.celery_task_id}
    assert task_ids(seen["b"]) == {run_b.celery_task_id}
    assert task_ids(seen["none"]) == set()
    assert (seen["a"].json()["runs_total"], seen["b"].json()["runs_total"], seen["none"].json()["runs_total"]) == (
        1,
        1,
        0,
    )
    assert computed - before == 4  # admin, A, B, no team: one computation each


def test_a_scope_change_is_not_served_the_old_scope_answer(platform_admin):
    # given: a viewer of team A only, who has been served A's runs
    team_a, team_b = team_create(name="team-a"), team_create(name="team-b")
    run_a, run_b = run_of(CloudAccountFactory(team=team_a)), run_of(CloudAccountFactory(team=team_b))
    viewer = member(team_a)
    client = client_of(viewer)
    with override_settings(TASKS_ACTIVE_CACHE_SECONDS=10):
        before = task_ids(client.get(ACTIVE))
        # when: removed from A and added to B, within the TTL
        viewer.memberships.all().delete()
        team_member_set(team=team_b, user=viewer, role=Role.VIEWER)
        viewer = type(viewer).objects.get(pk=viewer.pk)  # a new request loads the user again (permissions too)
        after = task_ids(client_of(viewer).get(ACTIVE))
    # then
    assert before == {run_a.celery_task_id}
    assert after == {run_b.celery_task_id}


def test_hosts_get_their_own_status_urls(platform_client):
    run_of()
    with override_settings(TASKS_ACTIVE_CACHE_SECONDS=10, ALLOWED_HOSTS=["testserver", "other.example"]):
        here = platform_client.get(ACTIVE).json()["runs"][0]["status_url"]
        there = platform_client.get(ACTIVE, HTTP_HOST="other.example").json()["runs"][0]["status_url"]
    assert here.startswith("http://testserver/") and there.startswith("http://other.example/")


# --- the cache: freshness -------------------------------------------------------------------------


@override_settings(TASKS_ACTIVE_CACHE_SECONDS=0.3)
def test_a_state_change_shows_within_the_ttl(platform_client):
    # given: a queued run, as answered (and cached)
    run = run_of()
    first = platform_client.get(ACTIVE).json()
    # when: it starts, and another run is queued
    TaskRun.objects.filter(id=run.id).update(state=RunState.STARTED)
    newer = run_of()
    within_ttl = platform_client.get(ACTIVE).json()
    time.sleep(0.35)
    # the first request after the TTL refreshes the answer and gets the new one (stale-while-revalidate serves the
    # previous answer only to requests arriving while another one refreshes)
    after_ttl = platform_client.get(ACTIVE).json()
    # then
    assert [r["state"] for r in first["runs"]] == ["QUEUED"]
    assert within_ttl == first  # cached: the proof that the cache is on
    assert [(r["task_id"], r["state"]) for r in after_ttl["runs"]] == [
        (run.celery_task_id, "STARTED"),
        (newer.celery_task_id, "QUEUED"),
    ]


def test_live_is_never_cached(platform_client):
    run_of()
    platform_client.get(ACTIVE)
    computed = active_answers.computed
    platform_client.get(ACTIVE, {"live": "true"})
    assert active_answers.computed == computed


# --- the cache itself: single flight, stale-while-revalidate, bounds ------------------------------


def test_concurrent_misses_compute_once():
    cache, calls = ScopedAnswerCache(), []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return len(calls)

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get("k", 5, compute))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [1] * 20 and len(calls) == 1


def test_a_stale_entry_is_refreshed_by_one_request_while_the_others_get_the_previous_answer():
    cache, calls = ScopedAnswerCache(), []
    cache.get("k", 0.3, lambda: "old")
    time.sleep(0.31)  # stale; served stale for at most one more TTL
    refreshing = threading.Event()

    def slow_compute():
        calls.append(1)
        refreshing.set()
        time.sleep(0.15)
        return "new"

    refresher = threading.Thread(target=lambda: cache.get("k", 0.3, slow_compute))
    refresher.start()
    refreshing.wait(5)
    started = time.monotonic()
    during = cache.get("k", 0.3, slow_compute)
    waited = time.monotonic() - started
    refresher.join()
    assert (during, waited < 0.1) == ("old", True)
    assert cache.get("k", 0.3, slow_compute) == "new" and len(calls) == 1


def test_a_refresh_slower_than_the_ttl_is_waited_for_not_served_stale_forever():
    cache = ScopedAnswerCache()
    cache.get("k", 0.05, lambda: "old")
    time.sleep(0.06)
    refreshing = threading.Event()

    def slow_compute():
        refreshing.set()
        time.sleep(0.3)
        return "new"

    refresher = threading.Thread(target=lambda: cache.get("k", 0.05, slow_compute))
    refresher.start()
    refreshing.wait(5)
    time.sleep(0.1)  # now beyond expiry + one TTL
    assert cache.get("k", 0.05, slow_compute) == "new"
    refresher.join()


def test_the_table_is_bounded():
    cache = ScopedAnswerCache(max_entries=20)
    for i in range(100):
        cache.get(i, 5, lambda i=i: i)
    assert len(cache._entries) <= 20 and cache.get(99, 5, lambda: "recomputed") == 99
    # entries past their stale window go first
    for i in range(100, 120):
        cache.get(i, 0.01, lambda i=i: i)
    time.sleep(0.03)
    cache.get("new", 5, lambda: "new")
    assert not any(isinstance(k, int) and k >= 100 for k in cache._entries)


def test_ttl_zero_computes_every_time():
    cache, calls = ScopedAnswerCache(), []
    for _ in range(3):
        cache.get("k", 0, lambda: calls.append(1))
    assert len(calls) == 3
