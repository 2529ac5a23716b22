"""Brute force and floods: password guessing, trigger floods, the same forced sync queued 40 times."""

import threading
from datetime import timedelta

import pytest
import requests
import time_machine
from django.utils import timezone

from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tasks_app.models import TaskRun
from tests.celery_procs import flush_broker
from tests.factories import CloudAccountFactory, UserFactory
from tests.security.live import LiveServer

TOKEN_URL = "/api/v1/auth/token"
PASSWORD = "pass-word-123"  # UserFactory's


def login(client, username: str, password: str, ip: str = "127.0.0.1"):
    return client.post(TOKEN_URL, {"username": username, "password": password}, format="json", REMOTE_ADDR=ip)


@pytest.mark.django_db
def test_100_wrong_passwords_are_throttled_early_and_then_the_right_one_gets_no_token(api_client):
    # given
    UserFactory(username="alice")
    # when: 100 guesses, as fast as the client goes
    codes = [login(api_client, "alice", f"guess-{n}").status_code for n in range(100)]
    right = login(api_client, "alice", PASSWORD)
    # then: 5 guesses (THROTTLE_LOGIN_USER_RATE 5/min) are answered, every later one is a 429
    assert codes[:5] == [401] * 5
    assert set(codes[5:]) == {429}
    assert right.status_code == 429
    assert "access" not in right.json() and "refresh" not in right.json()
    assert int(right["Retry-After"]) <= 60


@pytest.mark.django_db
def test_guesses_of_one_username_from_many_addresses_are_throttled_per_username(api_client):
    UserFactory(username="alice")
    codes = [login(api_client, "Alice ", f"guess-{n}", ip=f"10.0.0.{n}").status_code for n in range(10)]
    assert codes == [401] * 5 + [429] * 5
    # another user is not locked out by alice's attacker
    UserFactory(username="bob")
    assert login(api_client, "bob", PASSWORD, ip="10.0.0.99").status_code == 200


@pytest.mark.django_db
def test_one_address_trying_many_usernames_is_throttled_per_address(api_client):
    codes = [login(api_client, f"user-{n}", "guess", ip="192.0.2.7").status_code for n in range(25)]
    assert codes == [401] * 20 + [429] * 5
    assert login(api_client, "user-x", "guess", ip="192.0.2.8").status_code == 401  # other addresses unaffected


@pytest.mark.django_db
def test_the_right_password_works_again_once_the_window_has_passed(api_client):
    UserFactory(username="alice")
    for n in range(6):
        login(api_client, "alice", f"guess-{n}")
    assert login(api_client, "alice", PASSWORD).status_code == 429
    with time_machine.travel(timezone.now() + timedelta(seconds=61), tick=True):
        again = login(api_client, "alice", PASSWORD)
    assert again.status_code == 200
    assert again.json()["access"]


@pytest.mark.django_db
def test_login_rates_come_from_the_settings(api_client, settings):
    settings.THROTTLE_LOGIN_USER_RATE = "2/min"
    UserFactory(username="alice")
    assert [login(api_client, "alice", "x").status_code for _ in range(3)] == [401, 401, 429]


@pytest.mark.django_db
def test_300_trigger_requests_are_throttled_per_user(operator_client, trigger_user):
    # given: an account of the team "Default", whose operator the client is
    payload = {"account_id": CloudAccountFactory().id}
    # when
    codes = [
        operator_client.post("/api/v1/tasks/monitor/budgets", payload, format="json").status_code for _ in range(300)
    ]
    # then: THROTTLE_TRIGGER_RATE 30/min
    assert codes[:30] == [202] * 30
    assert set(codes[30:]) == {429}
    assert TaskRun.objects.filter(task_name="monitor_budget").count() == 30
    # another operator still gets through
    other = UserFactory(username="operator-2")
    team_member_set(team=team_default(), user=other, role=Role.OPERATOR)
    operator_client.force_authenticate(other)
    assert operator_client.post("/api/v1/tasks/monitor/budgets", payload, format="json").status_code == 202


@pytest.mark.django_db
def test_a_second_forced_sync_of_an_account_is_a_409_naming_the_active_run(operator_client):
    # given
    account = CloudAccountFactory()
    payload = {"account_id": account.id, "force": True}
    first = operator_client.post("/api/v1/tasks/sync/cost-data", payload, format="json")
    # when
    second = operator_client.post("/api/v1/tasks/sync/cost-data", payload, format="json")
    # then
    assert first.status_code == 202
    assert second.status_code == 409
    body = second.json()
    assert (body["run_id"], body["task_id"], body["state"]) == (
        first.json()["run_id"],
        first.json()["task_id"],
        "QUEUED",
    )
    assert body["status_url"] == first.json()["status_url"]
    assert first.json()["run_id"] in body["detail"]
    assert TaskRun.objects.filter(task_name="sync_provider_cost_data").count() == 1
    # a forced sync of another period, or of another account, is not the same request
    other_period = operator_client.post(
        "/api/v1/tasks/sync/cost-data", {**payload, "billing_period": "2024-09"}, format="json"
    )
    other_account = operator_client.post(
        "/api/v1/tasks/sync/cost-data", {"account_id": CloudAccountFactory().id, "force": True}, format="json"
    )
    assert (other_period.status_code, other_account.status_code) == (202, 202)


@pytest.mark.django_db
def test_a_forced_sync_is_queued_again_once_the_previous_one_finished(operator_client):
    account = CloudAccountFactory()
    payload = {"account_id": account.id, "force": True}
    first = operator_client.post("/api/v1/tasks/sync/cost-data", payload, format="json").json()
    TaskRun.objects.filter(id=first["run_id"]).update(state="SUCCESS")
    again = operator_client.post("/api/v1/tasks/sync/cost-data", payload, format="json")
    assert again.status_code == 202
    assert again.json()["run_id"] != first["run_id"]


@pytest.mark.django_db(transaction=True)
def test_40_concurrent_identical_forced_syncs_against_a_live_server_queue_exactly_one(tmp_path):
    # given: a real threaded server; the trigger rate raised so only the duplicate rule is at work
    flush_broker()
    operator = UserFactory(username="operator")
    team_member_set(team=team_default(), user=operator, role=Role.OPERATOR)
    account = CloudAccountFactory()
    server = LiveServer(tmp_path, THROTTLE_TRIGGER_RATE="1000/min")
    try:
        token = server.token("operator", PASSWORD)
        barrier = threading.Barrier(40)
        answers: list[requests.Response] = []
        lock = threading.Lock()

        def trigger():
            session = requests.Session()
            barrier.wait()
            response = session.post(
                f"{server.url}/api/v1/tasks/sync/cost-data",
                json={"account_id": account.id, "force": True},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=trigger) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
    finally:
        server.stop()
        flush_broker()
    # then
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 39, server.log[-3000:]
    [accepted] = [r.json() for r in answers if r.status_code == 202]
    assert {r.json()["run_id"] for r in answers if r.status_code == 409} == {accepted["run_id"]}
    runs = TaskRun.objects.filter(task_name="sync_provider_cost_data")
    assert [str(run.id) for run in runs] == [accepted["run_id"]]


ADMIN_LOGIN = "/admin/login/?next=/admin/"


def admin_login(client, username: str, password: str, ip: str = "127.0.0.1"):
    return client.post(ADMIN_LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)


@pytest.mark.django_db
def test_the_admin_sign_in_form_is_throttled_like_the_token_endpoint(client):
    # given: a staff user
    UserFactory(username="alice", is_staff=True)
    # when: 10 wrong guesses through the admin's form, then the right password
    codes = [admin_login(client, "alice", f"guess-{n}").status_code for n in range(10)]
    right = admin_login(client, "alice", PASSWORD)
    # then: 5 guesses get the form back (200 with an error), the rest and the right password are 429s, no session
    assert codes == [200] * 5 + [429] * 5
    assert right.status_code == 429 and int(right["Retry-After"]) <= 60
    assert "_auth_user_id" not in client.session
    # and the username's budget is shared with the token endpoint: the API refuses alice too
    assert login(client, "alice", PASSWORD).status_code == 429


@pytest.mark.django_db
def test_one_address_trying_many_usernames_on_the_admin_form_is_throttled(client):
    codes = [admin_login(client, f"user-{n}", "guess", ip="192.0.2.9").status_code for n in range(22)]
    assert codes == [200] * 20 + [429] * 2
    # a right password from another address still signs in
    UserFactory(username="bob", is_staff=True)
    assert admin_login(client, "bob", PASSWORD, ip="192.0.2.10").status_code == 302
