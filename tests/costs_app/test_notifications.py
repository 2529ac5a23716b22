"""Channels deliver for real: email through Django's locmem backend, webhooks to an HTTP server on 127.0.0.1."""

import hashlib
import hmac
import json
import logging
import socket
from decimal import Decimal

import pytest
from django.conf import settings
from django.core import mail

from costs_app.models import ChannelKind
from costs_app.services.notifications import (
    NotificationError,
    channel_send,
    channels_notify,
    task_failure_notify,
)
from tasks_app.models import RunState, TaskRun
from tasks_app.services.runs import run_dead_letter
from tests.costs_app.webhook_sink import webhook_sink  # noqa: F401  (fixture)
from tests.factories import NotificationChannelFactory

pytestmark = pytest.mark.django_db


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"


def test_webhook_posts_payload_signed_with_derived_key(webhook_sink):  # noqa: F811
    # given
    channel = NotificationChannelFactory(name="ops-hook", kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/finops"))
    # when
    channel_send(channel=channel, subject="Budget", text="over", payload={"spend": Decimal("12.50"), "budget_id": 3})
    # then
    [hit] = webhook_sink.received
    assert hit.path == "/finops"
    assert hit.json == {"subject": "Budget", "text": "over", "spend": "12.50", "budget_id": 3}
    key = hmac.new(settings.SECRET_KEY.encode(), b"finops-webhook:ops-hook", hashlib.sha256).digest()
    assert hit.headers["X-FinOps-Signature"] == "sha256=" + hmac.new(key, hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["Content-Type"] == "application/json"


def test_webhook_with_channel_secret_is_signed_with_it(webhook_sink):  # noqa: F811
    # given
    channel = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target=webhook_sink.url())
    channel.set_signing_secret("s3cret-shared-with-receiver")
    channel.save()
    # when
    channel_send(channel=channel, subject="s", text="t", payload={})
    # then
    [hit] = webhook_sink.received
    expected = hmac.new(b"s3cret-shared-with-receiver", hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-FinOps-Signature"] == f"sha256={expected}"


def test_slack_gets_incoming_webhook_text(webhook_sink):  # noqa: F811
    # given
    channel = NotificationChannelFactory(kind=ChannelKind.SLACK, target=webhook_sink.url("/services/T0/B0/xyz"))
    # when
    channel_send(channel=channel, subject="Budget alert", text="80% used", payload={"ignored": True})
    # then
    [hit] = webhook_sink.received
    assert json.loads(hit.body) == {"text": "*Budget alert*\n80% used"}
    assert "X-FinOps-Signature" not in hit.headers


def test_email_goes_to_every_address():
    # given
    channel = NotificationChannelFactory(kind=ChannelKind.EMAIL, target="a@example.com, b@example.com")
    # when
    channel_send(channel=channel, subject="Budget alert", text="80% used", payload={})
    # then
    [message] = mail.outbox
    assert message.to == ["a@example.com", "b@example.com"]
    assert message.subject == "Budget alert"
    assert message.body == "80% used"


def test_receiver_error_raises_without_revealing_the_url(webhook_sink, caplog):  # noqa: F811
    # given
    webhook_sink.fail_paths["/secret-token-path"] = 500
    channel = NotificationChannelFactory(kind=ChannelKind.SLACK, target=webhook_sink.url("/secret-token-path"))
    # when
    with pytest.raises(NotificationError) as raised, caplog.at_level(logging.DEBUG):
        channel_send(channel=channel, subject="s", text="t", payload={})
    # then
    assert "HTTP 500" in str(raised.value)
    assert "secret-token-path" not in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__  # nothing chained that holds the URL
    assert "secret-token-path" not in caplog.text


def test_non_http_target_is_refused():
    # given
    channel = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target="file:///etc/passwd")
    # when / then
    with pytest.raises(NotificationError, match="file:// is not allowed"):
        channel_send(channel=channel, subject="s", text="t", payload={})


def test_failing_channel_does_not_block_the_others(webhook_sink, caplog):  # noqa: F811
    # given: a dead receiver first, then a 500, then two working ones
    refused_url = _closed_port_url()
    webhook_sink.fail_paths["/broken"] = 503
    channels = [
        NotificationChannelFactory(name="dead", kind=ChannelKind.WEBHOOK, target=refused_url),
        NotificationChannelFactory(name="broken", kind=ChannelKind.SLACK, target=webhook_sink.url("/broken")),
        NotificationChannelFactory(name="works", kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/ok")),
        NotificationChannelFactory(name="mail", kind=ChannelKind.EMAIL, target="ops@example.com"),
    ]
    # when
    with caplog.at_level(logging.WARNING):
        errors = channels_notify(channels=channels, subject="s", text="t", payload={"k": 1})
    # then
    assert len(errors) == 2
    assert "'dead'" in errors[0] and "cannot reach" in errors[0]
    assert "'broken'" in errors[1] and "HTTP 503" in errors[1]
    assert [hit.path for hit in webhook_sink.received] == ["/broken", "/ok"]
    assert len(mail.outbox) == 1
    assert refused_url not in caplog.text and "/broken" not in caplog.text


def test_task_failure_goes_only_to_active_channels_that_asked():
    # given: organisation-wide channels (no team) hear of every failure
    NotificationChannelFactory(name="oncall", target="oncall@example.com", notify_task_failures=True, team=None)
    NotificationChannelFactory(name="finance", target="finance@example.com", notify_task_failures=False, team=None)
    NotificationChannelFactory(
        name="old", target="old@example.com", notify_task_failures=True, is_active=False, team=None
    )
    # when
    sent = task_failure_notify(
        task_name="sync_provider_cost_data", celery_task_id="abc-1", error="boom\ntraceback...", correlation_id="c-9"
    )
    # then
    assert sent == 1
    [message] = mail.outbox
    assert message.to == ["oncall@example.com"]
    assert "sync_provider_cost_data" in message.subject
    assert "boom" in message.body and "traceback" not in message.body
    assert "abc-1" in message.body and "c-9" in message.body


def test_a_teams_channel_hears_only_of_its_own_accounts_failures():
    # given: a channel of team "Default" and one of another team, both asking for task failures
    from tests.factories import CloudAccountFactory, TeamFactory

    ours = CloudAccountFactory()
    other_team = TeamFactory(name="other")
    theirs = CloudAccountFactory(team=other_team)
    NotificationChannelFactory(name="ours", target="ours@example.com", notify_task_failures=True)
    NotificationChannelFactory(name="theirs", target="theirs@example.com", notify_task_failures=True, team=other_team)
    # when
    for account in (ours, theirs, None):
        task_failure_notify(
            task_name="sync_provider_cost_data",
            celery_task_id=f"run-{account.name if account else 'org'}",
            error="boom",
            correlation_id="c",
            account_id=account.id if account else None,
        )
    # then: each team's channel got its own account's failure; an organisation-wide run goes to neither
    assert sorted((m.to[0], m.body.split("Celery task id: ")[1].split()[0]) for m in mail.outbox) == [
        ("ours@example.com", f"run-{ours.name}"),
        ("theirs@example.com", f"run-{theirs.name}"),
    ]


def test_dead_lettered_run_alerts_the_failure_channels(webhook_sink):  # noqa: F811
    # given
    NotificationChannelFactory(
        kind=ChannelKind.WEBHOOK, target=webhook_sink.url("/fail"), notify_task_failures=True, team=None
    )
    run = TaskRun.objects.create(
        task_name="detect_cost_anomalies",
        celery_task_id="dead-1",
        state=RunState.FAILURE,
        error="PermanentError: bad input",
        correlation_id="corr-dead",
    )
    # when
    run_dead_letter(run_id=run.id)
    # then
    [hit] = webhook_sink.received
    assert hit.json["event"] == "task_failed"
    assert hit.json["task_name"] == "detect_cost_anomalies"
    assert hit.json["correlation_id"] == "corr-dead"
    assert hit.json["error"] == "PermanentError: bad input"


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (404, False), (403, False), (410, False)],
)
def test_http_errors_say_whether_a_retry_can_help(webhook_sink, status, retryable):  # noqa: F811
    # given
    webhook_sink.fail_paths["/x"] = status
    channel = NotificationChannelFactory(kind=ChannelKind.SLACK, target=webhook_sink.url("/x"))
    # when
    with pytest.raises(NotificationError) as raised:
        channel_send(channel=channel, subject="s", text="t", payload={})
    # then
    assert raised.value.retryable is retryable
    assert f"HTTP {status}" in str(raised.value)


def test_unreachable_receiver_is_retryable_and_a_bad_target_is_not():
    # given
    dead = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target=_closed_port_url())
    bad = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target="ftp://example.com/x")
    # when / then
    with pytest.raises(NotificationError) as unreachable:
        channel_send(channel=dead, subject="s", text="t", payload={})
    with pytest.raises(NotificationError) as refused:
        channel_send(channel=bad, subject="s", text="t", payload={})
    assert unreachable.value.retryable and not refused.value.retryable


def test_signing_secret_is_stored_encrypted():
    # given
    channel = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target="https://hooks.example.com/x")
    # when
    channel.set_signing_secret("s3cret-shared-with-receiver")
    channel.save()
    # then
    channel.refresh_from_db()
    assert "s3cret" not in channel.signing_secret_ciphertext
    assert channel.get_signing_secret() == "s3cret-shared-with-receiver"
