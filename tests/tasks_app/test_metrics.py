"""/metrics: the ledger's figures in Prometheus' text format, readable only by loopback or with the token."""

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tasks_app.models import DeadLetter, RunState, TaskRun
from tests.celery_procs import flush_broker

pytestmark = pytest.mark.django_db


def run(task: str, state: str, **fields) -> TaskRun:
    return TaskRun.objects.create(task_name=task, celery_task_id=str(uuid.uuid4()), state=state, **fields)


def scrape(client: Client, **headers) -> dict:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_report_runs_durations_retries_dead_letters_queues_and_rows():
    # given
    flush_broker()
    now = timezone.now()
    run(
        "sync_provider_cost_data",
        RunState.SUCCESS,
        duration_ms=2500,
        finished_at=now,
        retries=1,
        result={"rows_loaded": 1200},
    )
    run("sync_provider_cost_data", RunState.SUCCESS, duration_ms=40, finished_at=now, result={"rows_loaded": 3})
    failed = run("monitor_budget", RunState.FAILURE, duration_ms=10, finished_at=now, retries=3)
    DeadLetter.objects.create(run=failed, task_name="monitor_budget", error="boom")
    run("monitor_budget", RunState.QUEUED, queue="monitoring", enqueued_at=now - timedelta(seconds=90))
    run("platform_noop", RunState.STARTED, lease_expires_at=now - timedelta(seconds=5))
    # when
    samples = scrape(Client(REMOTE_ADDR="127.0.0.1"))
    # then
    assert samples[("finops_task_runs", (("state", "SUCCESS"), ("task", "sync_provider_cost_data")))] == 2
    assert samples[("finops_task_retries_total", (("task", "monitor_budget"),))] == 3
    assert samples[("finops_task_duration_seconds_bucket", (("le", "1.0"), ("task", "sync_provider_cost_data")))] == 1
    assert samples[("finops_task_duration_seconds_count", (("task", "sync_provider_cost_data"),))] == 2
    assert samples[("finops_dead_letters_total", (("task", "monitor_budget"),))] == 1
    assert samples[("finops_rows_ingested_total", ())] == 1203
    assert samples[("finops_stuck_runs", ())] == 1
    assert samples[("finops_queue_length", (("queue", "monitoring"),))] == 0
    assert samples[("finops_broker_up", ())] == 1
    assert 85 <= samples[("finops_oldest_queued_run_age_seconds", (("queue", "monitoring"),))] <= 120
    # and the HTTP figures of this process (the first scrape counted once it was answered)
    again = scrape(Client(REMOTE_ADDR="127.0.0.1"))
    assert again[("finops_http_requests_total", (("method", "GET"), ("route", "metrics"), ("status", "200")))] >= 1


def test_metrics_are_refused_to_others_without_the_token(settings):
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "s3cret"
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
    ok = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert ok.status_code == 200 and b"finops_task_runs" in ok.content


@pytest.mark.parametrize(
    "header",
    ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_HOST"],
)
def test_a_request_relayed_by_a_proxy_on_this_host_is_not_a_loopback_client(header):
    # behind nginx on the same host every client's REMOTE_ADDR is 127.0.0.1; the proxy's header gives it away
    relayed = Client(REMOTE_ADDR="127.0.0.1").get("/metrics", **{header: "203.0.113.7"})
    assert relayed.status_code == 403
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200


def test_with_a_proxy_declared_only_the_token_opens_metrics(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "s3cret"
    ok = Client(REMOTE_ADDR="127.0.0.1").get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert ok.status_code == 200
