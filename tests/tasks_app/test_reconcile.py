"""The reconciler: runs the ledger accepted but that will never finish are published again, or given up."""

import base64
import json
import uuid
import zlib
from datetime import timedelta

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.utils import timezone

from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import BROKER_SENTINEL_KEY, runs_reconcile
from tests.celery_procs import flush_broker

# transaction=True: a requeue publishes on commit, and that is part of what is checked.
pytestmark = pytest.mark.django_db(transaction=True)

LIVE = "alive@host"
GONE = "gone@host"


@pytest.fixture
def broker():
    """The test broker, emptied, with the sentinel of a broker that kept its data (see broker_loss_recover)."""
    flush_broker()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.set(BROKER_SENTINEL_KEY, json.dumps({"run_id": "test", "set_at": "2026-01-01T00:00:00+00:00"}))
    return client


def published(broker, queue: str = "default") -> list[dict]:
    """The messages waiting in a queue: their headers (task id, run id, correlation id)."""
    return [json.loads(raw)["headers"] for raw in broker.lrange(queue, 0, -1)]


def make_run(state: str, *, worker: str = "", age: float = 0, lease_in: float | None = None, **fields) -> TaskRun:
    now = timezone.now()
    run = ledger.record_enqueue(
        task_name="platform_noop",
        celery_task_id=str(uuid.uuid4()),
        queue="default",
        args=[],
        kwargs={"value": 1},
        triggered_by=TriggerKind.COMMAND,
        correlation_id="recon-corr",
    )
    TaskRun.objects.filter(id=run.id).update(
        state=state,
        worker=worker,
        enqueued_at=now - timedelta(seconds=age),
        started_at=now - timedelta(seconds=age) if state == RunState.STARTED else None,
        lease_expires_at=now + timedelta(seconds=lease_in) if lease_in is not None else None,
        **fields,
    )
    return TaskRun.objects.get(id=run.id)


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def test_started_run_whose_claim_is_no_longer_renewed_is_published_again(broker):
    # given: its executor stopped renewing the claim (killed, frozen, cut off); its worker may well answer pings
    run = make_run(RunState.STARTED, worker=f"{LIVE}/123", age=120, lease_in=-1)
    # when
    result = runs_reconcile(now=timezone.now())
    # then
    assert result.as_dict() == {"requeued": 1, "failed": 0, "recorded": 0, "republished": 0}
    run.refresh_from_db()
    assert run.state == RunState.QUEUED and run.redeliveries == 1 and run.lease_expires_at is None
    headers = published(broker)
    assert [(h["id"], h["run_id"], h["x_correlation_id"]) for h in headers] == [
        (run.celery_task_id, str(run.id), "recon-corr")
    ]


def test_started_run_whose_claim_is_renewed_is_left_alone_even_if_its_worker_does_not_answer(broker):
    # given: a worker whose main process is frozen (no ping reply) while its pool child works and renews
    run = make_run(RunState.STARTED, worker=f"{GONE}/123", age=600, lease_in=30)
    # when
    result = runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    assert result.requeued == 0 and result.failed == 0
    assert TaskRun.objects.get(id=run.id).state == RunState.STARTED
    assert published(broker) == []


def test_a_lost_run_whose_outcome_the_backend_holds_is_recorded_not_run_again(broker):
    # given: the work succeeded, but its worker could not tell the ledger (the database was away)
    run = make_run(RunState.STARTED, worker=f"{GONE}/1", age=600, lease_in=-1)
    current_app.backend.mark_as_done(run.celery_task_id, {"rows_loaded": 7})
    # when
    result = runs_reconcile(now=timezone.now())
    # then
    assert result.recorded == 1 and result.requeued == 0
    run.refresh_from_db()
    assert run.state == RunState.SUCCESS and run.result == {"rows_loaded": 7}
    assert published(broker) == []


def test_a_broker_that_lost_its_data_gets_every_queued_and_retrying_run_again_at_once(broker):
    # given: runs waiting in a broker that then restarted empty (the sentinel is gone with everything else)
    queued = [make_run(RunState.QUEUED, age=5) for _ in range(3)]
    retrying = make_run(RunState.RETRY, age=60, lease_in=settings.TASK_QUEUED_LEASE + 30, retries=1)
    started = make_run(RunState.STARTED, worker=f"{LIVE}/1", age=5, lease_in=30)
    broker.flushdb()
    # when
    result = runs_reconcile(now=timezone.now())
    # then: all four published again at once (not after the queued lease), the running one left alone
    assert result.republished == 4 and result.requeued == 0
    headers = {h["id"]: h for h in published(broker)}
    assert sorted(headers) == sorted(r.celery_task_id for r in [*queued, retrying])
    assert all(headers[r.celery_task_id]["eta"] is None for r in queued)
    assert headers[retrying.celery_task_id]["eta"] is not None  # the retry keeps the countdown it had left
    assert broker.exists(BROKER_SENTINEL_KEY)
    assert TaskRun.objects.get(id=started.id).state == RunState.STARTED
    # and a second pass sees the sentinel: nothing is published twice
    assert runs_reconcile(now=timezone.now()).republished == 0


def test_queued_run_whose_message_was_lost_is_published_again(broker):
    # given: a run whose message is not in the broker (looked up after TASK_UNACKED_GRACE), and a fresh one
    fresh = make_run(RunState.QUEUED, age=10)
    lost = make_run(RunState.QUEUED, age=settings.TASK_UNACKED_GRACE + 10)
    # when
    result = runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    assert result.republished == 1
    assert [h["id"] for h in published(broker)] == [lost.celery_task_id]
    lost.refresh_from_db()
    assert lost.redeliveries == 1 and lost.enqueued_at > timezone.now() - timedelta(seconds=60)
    assert TaskRun.objects.get(id=fresh.id).redeliveries == 0


def test_retry_never_redelivered_is_published_again_after_its_lease(broker):
    # given
    waiting = make_run(RunState.RETRY, age=60, lease_in=30, retries=1)
    lost = make_run(RunState.RETRY, age=60, lease_in=-1, retries=1)
    # when
    result = runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    assert result.requeued == 1
    assert TaskRun.objects.get(id=lost.id).state == RunState.QUEUED
    assert TaskRun.objects.get(id=waiting.id).state == RunState.RETRY


def test_a_run_lost_too_often_fails_for_good_into_the_dead_letters(broker):
    # given
    run = make_run(RunState.STARTED, worker=f"{GONE}/1", age=600, lease_in=-1, redeliveries=settings.TASK_MAX_RETRIES)
    # when
    result = runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    assert result.as_dict() == {"requeued": 0, "failed": 1, "recorded": 0, "republished": 0}
    run.refresh_from_db()
    assert run.state == RunState.FAILURE and run.error_type == "Lost"
    assert run.error == f"lost {settings.TASK_MAX_RETRIES + 1} times; given up"
    assert DeadLetter.objects.get(run=run).error == run.error
    assert published(broker) == []


def test_a_run_that_hit_the_hard_time_limit_is_not_run_again(broker):
    # given: the worker recorded a failure in the result backend (time limit), the ledger still says STARTED
    from billiard.exceptions import TimeLimitExceeded

    run = make_run(RunState.STARTED, worker=f"{LIVE}/1", age=4000, lease_in=-1)
    current_app.backend.mark_as_failure(run.celery_task_id, TimeLimitExceeded(1800))
    # when
    result = runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    assert result.failed == 1
    run.refresh_from_db()
    assert run.state == RunState.FAILURE and run.error.startswith("exceeded the hard time limit")
    assert DeadLetter.objects.filter(run=run).exists()


@pytest.mark.parametrize("state", [RunState.SUCCESS, RunState.FAILURE, RunState.CANCELLED])
def test_finished_runs_are_never_touched(broker, state):
    # given
    run = make_run(state, worker=f"{GONE}/1", age=10_000, lease_in=-1)
    # when
    result = runs_reconcile(now=later(10_000), workers=set())
    # then
    assert result.as_dict() == {"requeued": 0, "failed": 0, "recorded": 0, "republished": 0}
    assert TaskRun.objects.get(id=run.id).state == state


def test_two_reconcilers_requeue_a_run_once(broker):
    # given
    run = make_run(RunState.STARTED, worker=f"{GONE}/1", age=600, lease_in=-1)
    stale_copy = TaskRun.objects.get(id=run.id)
    # when: the first reconciler requeues it; a second one that read the run before acts on its stale copy
    runs_reconcile(now=timezone.now(), workers={LIVE})
    from tasks_app.services.runs import _requeue_or_fail

    outcome = _requeue_or_fail(stale_copy, now=timezone.now())
    # then
    assert outcome is None
    assert TaskRun.objects.get(id=run.id).redeliveries == 1
    assert len(published(broker)) == 1


def test_published_message_is_gzip_json_only(broker):
    # given: the seed's wire format — JSON, gzip-compressed, never pickle
    make_run(RunState.QUEUED, age=settings.TASK_QUEUED_LEASE + 10)
    # when
    runs_reconcile(now=timezone.now(), workers={LIVE})
    # then
    message = json.loads(broker.lrange("default", 0, -1)[0])
    assert message["content-type"] == "application/json"
    assert message["headers"]["compression"] == "application/x-gzip"
    # kombu's "gzip" compression is zlib-framed deflate
    body = json.loads(zlib.decompress(base64.b64decode(message["body"])))
    assert body[1] == {"value": 1}


def test_a_queued_run_whose_message_waits_in_the_broker_is_not_published_twice(broker):
    # given: an old run whose message is still in its queue (a backlog)
    from tasks_app.services.runs import _publish

    waiting = make_run(RunState.QUEUED, age=settings.TASK_UNACKED_GRACE + 10)
    _publish(waiting)
    # when
    result = runs_reconcile(now=timezone.now())
    # then
    assert result.republished == 0
    assert [h["id"] for h in published(broker)] == [waiting.celery_task_id]


def held_by_a_worker(broker, run: TaskRun, *, delivered_at: float) -> None:
    """What kombu writes when a worker takes a message: the message under a delivery tag in `unacked`, and the
    time it was delivered in `unacked_index` (kombu.transport.redis.QoS.append)."""
    tag = str(uuid.uuid4())
    message = {"headers": {"id": run.celery_task_id, "task": run.task_name}, "body": "", "properties": {}}
    broker.hset("unacked", tag, json.dumps([message, "", run.queue]))
    broker.zadd("unacked_index", {tag: delivered_at})


def test_a_requeued_run_whose_new_message_was_lost_is_not_hidden_by_an_earlier_copy(broker):
    # given: a run queued again a while ago (its claim's worker died), whose new message never reached a worker
    # that lived to record it; a dead worker's copy of its earlier delivery is still unacknowledged in the broker
    # (seen in the worker-kill drill: the run stayed QUEUED until the queued lease, hours)
    run = make_run(RunState.QUEUED, age=settings.TASK_UNACKED_GRACE + 10, redeliveries=1)
    held_by_a_worker(broker, run, delivered_at=run.enqueued_at.timestamp() - 5)
    # when
    result = runs_reconcile(now=timezone.now())
    # then: the earlier copy does not count, the run is published again
    assert result.republished == 1
    assert [h["id"] for h in published(broker)] == [run.celery_task_id]
    assert TaskRun.objects.get(id=run.id).redeliveries == 2


def test_a_run_whose_message_a_live_worker_holds_since_its_enqueue_is_not_published_twice(broker):
    # given: the same, but the copy in `unacked` was delivered after the run was queued (a worker holds it in its
    # prefetch; the stranded-message rule, not this one, decides once TASK_UNACKED_GRACE has passed since delivery)
    run = make_run(RunState.QUEUED, age=settings.TASK_UNACKED_GRACE + 10)
    held_by_a_worker(broker, run, delivered_at=timezone.now().timestamp() - 1)
    # when
    result = runs_reconcile(now=timezone.now())
    # then
    assert result.republished == 0
    assert published(broker) == []
