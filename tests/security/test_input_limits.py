"""Input that took the service down: unbounded budget dates, huge and deep JSON bodies, unbounded pages."""

import socket
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from costs_app.models import Budget, BudgetAlert, BudgetPeriod
from costs_app.services.budgets import budgets_check
from tasks_app.models import RunState, TaskRun, TriggerKind
from tests.costs_app.test_budgets import spend
from tests.factories import BudgetFactory, CloudAccountFactory, UserFactory
from tests.security.live import LiveServer

NOW = datetime(2024, 9, 20, 10, 0, tzinfo=UTC)
TOKEN_URL = "/api/v1/auth/token"


# --- budget dates ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("start", "end", "field", "words"),
    [
        (date(1, 1, 1), date(9999, 12, 31), "start_date", "outside 2000-01-01 .. 2100-12-31"),
        (date(1, 1, 1), date(9999, 12, 31), "end_date", "outside 2000-01-01 .. 2100-12-31"),
        (date(2024, 1, 1), date(2030, 1, 1), "end_date", "at most 5 years"),
        (date(2099, 1, 1), date(2101, 1, 1), "end_date", "outside 2000-01-01 .. 2100-12-31"),
    ],
)
def test_a_budget_period_out_of_range_is_refused_naming_the_field(start, end, field, words):
    # given
    budget = Budget(name="forever", amount=Decimal(100), period=BudgetPeriod.CUSTOM, start_date=start, end_date=end)
    # when
    with pytest.raises(ValidationError) as refused:
        budget.full_clean()
    # then
    assert any(words in message for message in refused.value.message_dict[field])
    assert not Budget.objects.exists()


@pytest.mark.django_db
def test_a_budget_of_five_years_in_range_is_accepted():
    budget = Budget(
        name="plan",
        amount=Decimal(100),
        period=BudgetPeriod.CUSTOM,
        start_date=date(2025, 1, 1),
        end_date=date(2029, 12, 31),
    )
    budget.full_clean()  # no error
    budget.save()
    assert Budget.objects.get().end_date == date(2029, 12, 31)


@pytest.mark.django_db
def test_the_admin_form_refuses_the_year_one_to_9999_budget(admin_client):
    # when
    response = admin_client.post(
        reverse("admin:costs_app_budget_add"),
        {
            "name": "forever",
            "amount": "100",
            "currency": "USD",
            "period": BudgetPeriod.CUSTOM,
            "start_date": "0001-01-01",
            "end_date": "9999-12-31",
            "is_active": "on",
            "thresholds": "[50, 80, 100]",
        },
    )
    # then: the form is shown again with the errors at the fields, nothing saved
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "outside 2000-01-01 .. 2100-12-31" in " ".join(errors["start_date"])
    assert "outside 2000-01-01 .. 2100-12-31" in " ".join(errors["end_date"])
    assert not Budget.objects.filter(name="forever").exists()


@pytest.mark.django_db
def test_one_stored_budget_from_year_one_to_9999_does_not_stop_the_check_of_the_others(caplog):
    # given: the row the old validation let through (0001-01-01 .. 9999-12-31), and a sound budget
    account = CloudAccountFactory()
    broken = BudgetFactory(account=account, amount=Decimal("10"), thresholds=[50])
    Budget.objects.filter(id=broken.id).update(
        period=BudgetPeriod.CUSTOM, start_date=date(1, 1, 1), end_date=date(9999, 12, 31)
    )
    fine = BudgetFactory(account=account, amount=Decimal("10"), thresholds=[50])
    spend(account, date(2024, 9, 1), "9")
    # when (before the fix: OverflowError: date value out of range, for every budget)
    result = budgets_check(now=NOW)
    # then: the bad one is skipped and reported, the other evaluated and alerted
    assert result.invalid_budget_ids == [broken.id]
    assert (result.budgets_checked, result.invalid_budgets) == (1, 1)
    assert list(BudgetAlert.objects.filter(budget=fine).values_list("threshold", flat=True)) == [Decimal("50.00")]
    assert not BudgetAlert.objects.filter(budget=broken).exists()
    assert f"budget {broken.id} ({broken.name}) skipped" in caplog.text
    assert "start_date: 0001-01-01 is outside 2000-01-01 .. 2100-12-31" in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["1e400", 1e300, {"type": "absolute", "value": "9" * 40}])
def test_a_threshold_too_large_for_a_decimal_is_a_validation_error_and_skipped_when_stored(value):
    # given
    budget = Budget(name="huge", amount=Decimal(100), thresholds=[value])
    # when saved through validation
    with pytest.raises(ValidationError) as refused:
        budget.full_clean()
    assert "threshold 1 (" in refused.value.message_dict["thresholds"][0]
    assert "too large" in refused.value.message_dict["thresholds"][0]
    # when stored around it: the check skips that budget instead of failing on quantize()
    account = CloudAccountFactory()
    stored = BudgetFactory(account=account)
    Budget.objects.filter(id=stored.id).update(thresholds=[value])
    assert budgets_check(now=NOW).invalid_budget_ids == [stored.id]


@pytest.mark.django_db
@pytest.mark.parametrize("param", ["start", "end"])
def test_export_periods_outside_the_supported_years_are_a_400_naming_the_parameter(viewer_client, param):
    account = CloudAccountFactory(name="acme")
    response = viewer_client.get("/api/v1/costs/export", {"account": account.name, param: "0001-01"})
    assert response.status_code == 400
    assert "between 2000 and 2100" in response.json()[param][0]


@pytest.mark.django_db
def test_sync_of_a_billing_period_in_year_9999_is_refused(operator_client):
    account = CloudAccountFactory()
    response = operator_client.post(
        "/api/v1/tasks/sync/cost-data", {"account_id": account.id, "billing_period": "9999-12"}, format="json"
    )
    assert response.status_code == 400
    assert "billing_period" in response.json()
    assert not TaskRun.objects.exists()


# --- request bodies -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_50_mb_json_body_to_the_token_endpoint_is_refused_413_at_once(api_client):
    # given: valid JSON, which json.loads would take a while over
    UserFactory(username="alice")
    body = b'{"username": "alice", "password": "' + b"a" * (50 << 20) + b'"}'
    # when
    started = time.monotonic()
    response = api_client.post(TOKEN_URL, data=body, content_type="application/json")
    elapsed = time.monotonic() - started
    # then
    assert response.status_code == 413
    assert "larger than the API accepts" in response.json()["detail"]
    assert "access" not in response.json()
    assert elapsed < 2.0


@pytest.mark.django_db(transaction=True)
def test_a_live_server_answers_413_before_the_50_mb_body_is_even_sent(tmp_path):
    """Only the headers and 64 KiB are sent: a 413 proves the server neither read nor parsed the body."""
    UserFactory(username="alice")
    server = LiveServer(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {50 << 20}\r\n\r\n".encode()
                + b'{"username": "alice", "password": "'
                + b"a" * (64 << 10)
            )
            started = time.monotonic()
            reply = b""
            while b"}" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"larger than the API accepts" in reply
    assert elapsed < 5.0


@pytest.mark.django_db
@pytest.mark.parametrize("path", [TOKEN_URL, "/api/v1/tasks/monitor/budgets", "/api/v1/accounts/"])
def test_a_100000_deep_json_body_is_a_400_not_a_500(admin_client, path):
    body = "[" * 100_000 + "]" * 100_000
    response = admin_client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper than 32 levels" in response.json()["detail"]


@pytest.mark.django_db
def test_json_nested_beyond_the_depth_limit_is_refused_before_it_is_stored(admin_client):
    # given: 40 levels, which json.loads parses but no setting needs
    deep: dict = {}
    for _ in range(40):
        deep = {"x": deep}
    # when
    response = admin_client.post(
        "/api/v1/accounts/", {"provider": "aws", "name": "deep", "settings": deep}, content_type="application/json"
    )
    # then
    assert response.status_code == 400
    assert "nested deeper than 32 levels" in response.json()["detail"]
    assert not TaskRun.objects.exists()


# --- pagination -----------------------------------------------------------------------------------------------


def _runs(n: int) -> None:
    TaskRun.objects.bulk_create(
        TaskRun(
            task_name="monitor_budget",
            celery_task_id=f"t-{i}",
            queue="monitoring",
            state=RunState.SUCCESS,
            triggered_by=TriggerKind.API,
        )
        for i in range(n)
    )


@pytest.mark.django_db
def test_a_limit_of_100000000_returns_at_most_the_max_limit(platform_client, settings):
    # given (organisation-wide runs: a platform admin sees them all)
    settings.API_PAGE_MAX_LIMIT = 20
    _runs(30)
    # when
    response = platform_client.get("/api/v1/tasks/runs", {"limit": 100_000_000})
    # then
    assert response.status_code == 200
    assert response.json()["count"] == 30
    assert len(response.json()["results"]) == 20


@pytest.mark.django_db
def test_the_default_max_limit_is_500(platform_client):
    _runs(501)
    response = platform_client.get("/api/v1/tasks/runs", {"limit": 100_000_000})
    assert len(response.json()["results"]) == 500


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/tasks/runs", "/api/v1/recommendations/", "/api/v1/anomalies/"])
def test_an_offset_past_the_bound_is_a_400_naming_it(viewer_client, path):
    response = viewer_client.get(path, {"offset": 10**30})
    assert response.status_code == 400
    assert "offset" in response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(("param", "value"), [("since", "not-a-date"), ("monitor", "9" * 25), ("account", "9" * 25)])
def test_anomaly_filters_out_of_range_are_a_400_naming_the_parameter(viewer_client, param, value):
    # found by the schema fuzz: a bare list for `since`, a bigint overflow (500) for ids
    response = viewer_client.get("/api/v1/anomalies/", {param: value})
    assert response.status_code == 400
    assert param in response.json()


def test_the_json_parser_itself_stops_reading_at_the_limit(settings):
    """A body arriving without a usable Content-Length (ASGI, a proxy's chunked upload) is bounded by the parser."""
    import io

    from finops.limits import BoundedJSONParser, RequestTooLarge

    settings.API_MAX_BODY_BYTES = 1000

    class CountingStream(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            data = super().read(size)
            self.read_bytes += len(data)
            return data

    stream = CountingStream(b'{"a": "' + b"x" * (10 << 20) + b'"}')
    with pytest.raises(RequestTooLarge):
        BoundedJSONParser().parse(stream)
    assert stream.read_bytes == 1001  # never the 10 MiB
    assert BoundedJSONParser().parse(io.BytesIO(b'{"a": [1, {"b": 2}]}')) == {"a": [1, {"b": 2}]}
