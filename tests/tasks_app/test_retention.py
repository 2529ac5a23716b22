"""Retention: per data class, only rows past its policy go, in short batches; a dry run counts and deletes nothing.

Cost lines and rollups are loaded through the real ingest; the policies are the RetentionPolicy rows the
data migration creates. The last tests run cleanup_old_data through a real worker.
"""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult

from costs_app.models import (
    Anomaly,
    AnomalyMonitor,
    AnomalyStatus,
    BudgetAlert,
    CostAllocationTag,
    CostDailyRollup,
    CostLineItem,
    CostTagRollup,
    Recommendation,
    RecommendationStatus,
)
from finops.errors import PermanentError, TransientError
from providers_app.models import Resource
from tasks_app.models import DeadLetter, RetentionDataClass, RetentionPolicy, RunState, TaskRun, TriggerKind
from tasks_app.services.retention import old_data_cleanup
from tasks_app.services.runs import task_enqueue
from tests.costs_app.focus_lines import daily, line, load
from tests.factories import BudgetFactory, CloudAccountFactory, CostLineItemFactory, ResourceFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)
DAYS = {
    "cost_lines": 365,
    "daily_rollups": 400,
    "task_runs": 90,
    "task_results": 30,
    "resolved_alerts": 180,
    "closed_recommendations": 90,
    "terminated_resources": 90,
    "resolved_anomalies": 180,
}
EXPECTED_DELETED = {
    "cost_lines": 8,
    "daily_rollups": 6,  # 3 days of cost rollups + 3 days of tag rollups
    "task_runs": 3,
    "task_results": 3,
    "resolved_alerts": 1,
    "closed_recommendations": 2,
    "terminated_resources": 1,
    "resolved_anomalies": 2,
}


@pytest.fixture(autouse=True)
def policies(settings):
    settings.RETENTION_BATCH_SIZE = 2
    for name, days in DAYS.items():
        RetentionPolicy.objects.update_or_create(data_class=name, defaults={"days": days, "enabled": True})
    return settings


def ago(days: float, now: datetime = NOW) -> datetime:
    return now - timedelta(days=days)


def run(*, state=RunState.SUCCESS, age: int, parent=None, now: datetime = NOW) -> TaskRun:
    return TaskRun.objects.create(
        task_name="platform_noop",
        celery_task_id=str(uuid.uuid4()),
        state=state,
        enqueued_at=ago(age, now),
        parent=parent,
    )


def build_data(tmp_path, now: datetime) -> dict:
    """Rows of every class on both sides of its retention (DAYS), aged relative to `now`."""
    today = now.date()

    def days_ago(*ns: int) -> list[date]:
        return [today - timedelta(days=n) for n in ns]

    account = CloudAccountFactory()
    CostAllocationTag.objects.get_or_create(key="team")
    tagged = {"tags": {"team": "web"}}
    load(
        account,
        [
            *daily("i-march", days_ago(457, 456, 455), "1", **tagged),  # past the rollups' 400 days too
            *daily("i-may", days_ago(370, 369, 368, 367, 366), "1", **tagged),  # lines go, their rollups stay
            *daily("i-june", days_ago(364, 364), "1", **tagged),  # inside every window
        ],
        tmp_path,
    )
    old_runs = [
        run(age=91, now=now),
        run(state=RunState.FAILURE, age=200, now=now),
        run(state=RunState.CANCELLED, age=100, now=now),
    ]
    kept_runs = [
        run(age=89, now=now),
        run(state=RunState.STARTED, age=200, now=now),
        run(state=RunState.QUEUED, age=120, now=now),
    ]
    for task_id, age in [("old-0", 31), ("old-1", 32), ("old-2", 33), ("new", 29)]:
        TaskResult.objects.create(task_id=task_id, status="SUCCESS")
        TaskResult.objects.filter(task_id=task_id).update(date_done=ago(age, now))  # date_done is auto_now
    budget = BudgetFactory()
    for threshold, resolved_age in [(50, 181), (80, 179), (100, None)]:
        BudgetAlert.objects.create(
            budget=budget,
            period_start=date(2024, 1, 1),
            threshold=Decimal(threshold),
            spend=Decimal(1),
            percentage=Decimal(threshold),
            created_at=ago(400, now),
            resolved_at=ago(resolved_age, now) if resolved_age is not None else None,
        )
    gone = ResourceFactory(account=account, resource_id="i-gone", is_terminated=True, terminated_at=ago(100, now))
    ResourceFactory(account=account, resource_id="i-recently-gone", is_terminated=True, terminated_at=ago(30, now))
    ResourceFactory(account=account, resource_id="i-live", last_seen=ago(300, now))
    for rid, status, found_age, resource in [
        ("r1", RecommendationStatus.CLOSED, 100, gone),  # goes
        ("r2", RecommendationStatus.DISMISSED, 100, None),  # goes
        ("r3", RecommendationStatus.DISMISSED, 1, None),  # its rule still finds it: kept, or it would reopen
        ("r4", RecommendationStatus.CLOSED, 10, None),
        ("r5", RecommendationStatus.OPEN, 300, None),
        ("r6", RecommendationStatus.DONE, 300, gone),  # done ones are the record of realised savings
    ]:
        Recommendation.objects.create(
            account=account,
            rule="idle_instances",
            provider_resource_id=rid,
            resource=resource,
            title=rid,
            estimated_monthly_saving=Decimal(1),
            currency="USD",
            status=status,
            last_found_at=ago(found_age, now),
        )
    for day, status, updated_age in [
        (date(2024, 1, 1), AnomalyStatus.RESOLVED, 200),
        (date(2024, 1, 2), AnomalyStatus.FALSE_POSITIVE, 200),
        (date(2024, 1, 3), AnomalyStatus.RESOLVED, 10),
        (date(2024, 1, 4), AnomalyStatus.OPEN, 300),
    ]:
        found = Anomaly.objects.create(
            monitor=AnomalyMonitor.objects.get_or_create(name="Accounts")[0],
            account=account,
            start_day=day,
            end_day=day,
            currency="USD",
            expected=1,
            actual=5,
            impact=4,
            score=9.0,
            status=status,
        )
        Anomaly.objects.filter(pk=found.pk).update(updated_at=ago(updated_age, now))  # updated_at is auto_now
    return {"account": account, "old_runs": old_runs, "kept_runs": kept_runs}


@pytest.fixture
def data(tmp_path):
    return build_data(tmp_path, NOW)


def test_deletes_only_rows_past_retention_per_class_in_batches(data):
    # when
    result = old_data_cleanup(now=NOW).as_dict()
    # then
    assert result["deleted"] == EXPECTED_DELETED
    assert result["complete"] is True
    # the account's March and May are wholly past: dropped as partitions, not deleted row by row
    assert result["batches"]["cost_lines"] == 0
    assert result["classes"]["cost_lines"]["partitions_dropped"] == 2
    assert result["cutoffs"]["task_runs"] == ago(90).isoformat()
    assert result["classes"]["daily_rollups"]["tables"] == {
        "costs_app_costdailyrollup": 3,
        "costs_app_costtagrollup": 3,
    }
    # what is inside its window stays
    assert sorted(CostLineItem.objects.values_list("resource_id", flat=True)) == ["i-june", "i-june"]
    assert min(CostDailyRollup.objects.values_list("day", flat=True)) == date(2024, 5, 27)
    assert min(CostTagRollup.objects.values_list("day", flat=True)) == date(2024, 5, 27)
    assert set(TaskRun.objects.values_list("id", flat=True)) == {r.id for r in data["kept_runs"]}
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["new"]
    assert set(BudgetAlert.objects.values_list("threshold", flat=True)) == {Decimal(80), Decimal(100)}
    assert set(Recommendation.objects.values_list("provider_resource_id", flat=True)) == {"r3", "r4", "r5", "r6"}
    assert Recommendation.objects.get(provider_resource_id="r6").resource is None  # its resource went
    assert set(Resource.objects.values_list("resource_id", flat=True)) == {"i-recently-gone", "i-live"}
    assert set(Anomaly.objects.values_list("start_day", flat=True)) == {date(2024, 1, 3), date(2024, 1, 4)}
    # the policies remember the outcome for the admin list
    policy = RetentionPolicy.objects.get(data_class="cost_lines")
    assert (policy.last_deleted_rows, policy.last_cleanup_at) == (8, NOW)


def test_each_batch_is_a_limited_delete_under_a_lock_timeout(data, policies):
    # given: besides the imported months (dropped whole), 4 old lines the ORM wrote (they wait in the
    # partitioned table's DEFAULT partition, so only the batched path can take them)
    policies.RETENTION_LOCK_TIMEOUT = 2.5
    account = CloudAccountFactory()
    for day in range(4):
        CostLineItemFactory(account=account, charge_period_start=ago(400 + day))
    # when
    with CaptureQueriesContext(connection) as queries:
        old_data_cleanup(now=NOW, classes=["cost_lines"])
    # then
    sqls = [q["sql"] for q in queries]
    deletes = [i for i, sql in enumerate(sqls) if sql.startswith('DELETE FROM "costs_app_costlineitem"')]
    # the imported account's batch finds none left; the other's 4 rows go 2 at a time, the third finds none
    assert len(deletes) == 1 + 3
    assert all("LIMIT 2 FOR UPDATE SKIP LOCKED" in sqls[i] for i in deletes)
    # every batch is its own transaction that first sets a local lock_timeout
    assert all("set_config('lock_timeout', '2500ms', true)" in sqls[i - 1] for i in deletes)
    # and each whole month past the cutoff was detached whole from the cost lines (not leaf by leaf) in a
    # transaction of its own, under the same timeout
    detaches = [i for i, sql in enumerate(sqls) if "DETACH PARTITION costs_app_costlineitem_p2024" in sql]
    assert [sqls[i] for i in detaches] == [
        "ALTER TABLE costs_app_costlineitem DETACH PARTITION costs_app_costlineitem_p202403",
        "ALTER TABLE costs_app_costlineitem DETACH PARTITION costs_app_costlineitem_p202405",
    ]
    # (the transaction's first statement: then the leaf's newest line, its statistics and its count, small as it
    # is, the month's partitions and its DEFAULT)
    starts = [max(j for j in range(i) if sqls[j].startswith("SELECT set_config('lock_timeout'")) for i in detaches]
    assert all("'2500ms'" in sqls[j] and i - j <= 6 for i, j in zip(detaches, starts, strict=True))


def test_dry_run_reports_count_oldest_and_cutoff_and_deletes_nothing(data):
    # given
    before = {name: sum(m.objects.count() for m in models) for name, models in {
        "lines": [CostLineItem], "rollups": [CostDailyRollup, CostTagRollup], "runs": [TaskRun],
        "results": [TaskResult], "alerts": [BudgetAlert], "recs": [Recommendation], "resources": [Resource],
        "anomalies": [Anomaly],
    }.items()}  # fmt: skip
    # when
    result = old_data_cleanup(now=NOW, dry_run=True).as_dict()
    # then
    assert result["dry_run"] is True and "deleted" not in result
    assert result["would_delete"] == EXPECTED_DELETED
    lines = result["classes"]["cost_lines"]
    assert lines["rows"] == 8
    assert lines["oldest"] == "2024-03-01T00:00:00+00:00"
    assert lines["cutoff"] == ago(365).isoformat()
    assert result["classes"]["daily_rollups"]["oldest"] == "2024-03-01T00:00:00+00:00"
    assert result["classes"]["task_results"]["oldest"] == ago(33).isoformat()
    after = {
        "lines": CostLineItem.objects.count(),
        "rollups": CostDailyRollup.objects.count() + CostTagRollup.objects.count(),
        "runs": TaskRun.objects.count(), "results": TaskResult.objects.count(), "alerts": BudgetAlert.objects.count(),
        "recs": Recommendation.objects.count(), "resources": Resource.objects.count(),
        "anomalies": Anomaly.objects.count(),
    }  # fmt: skip
    assert after == before
    policy = RetentionPolicy.objects.get(data_class="cost_lines")
    assert (policy.last_dry_run_rows, policy.last_dry_run_oldest, policy.last_cleanup_at) == (
        8,
        datetime(2024, 3, 1, tzinfo=UTC),
        None,
    )


def test_a_disabled_policy_keeps_its_class_forever(data):
    # given
    RetentionPolicy.objects.filter(data_class="cost_lines").update(enabled=False)
    # when
    result = old_data_cleanup(now=NOW).as_dict()
    # then
    assert result["deleted"]["cost_lines"] == 0
    assert result["classes"]["cost_lines"]["enabled"] is False
    assert result["cutoffs"]["cost_lines"] is None
    assert CostLineItem.objects.count() == 10


def test_only_the_classes_asked_for(data):
    # when
    result = old_data_cleanup(now=NOW, classes=["task_results", "resolved_alerts"]).as_dict()
    # then
    assert result["deleted"] == {"task_results": 3, "resolved_alerts": 1}
    assert CostLineItem.objects.count() == 10
    with pytest.raises(PermanentError, match="unknown retention data class nope"):
        old_data_cleanup(now=NOW, classes=["nope"])


def test_policies_refuse_days_below_the_class_minimum():
    policy = RetentionPolicy.objects.get(data_class="cost_lines")
    policy.days = 30
    with pytest.raises(ValidationError, match="at least 90 days"):
        policy.full_clean()
    # written around the validation: the cleanup refuses rather than deleting a month of cost data
    RetentionPolicy.objects.filter(pk=policy.pk).update(days=30)
    with pytest.raises(PermanentError, match="below its minimum of 90"):
        old_data_cleanup(now=NOW)


def test_missing_policies_are_created_from_the_settings(settings):
    # given
    RetentionPolicy.objects.all().delete()
    settings.RETENTION_DAYS = {**settings.RETENTION_DAYS, "task_runs": 14, "resolved_anomalies": 0}
    # when
    result = old_data_cleanup(now=NOW, dry_run=True).as_dict()
    # then
    policies = {p.data_class: p for p in RetentionPolicy.objects.all()}
    assert set(policies) == set(RetentionDataClass.values)
    assert (policies["task_runs"].enabled, policies["task_runs"].days) == (True, 14)
    assert policies["resolved_anomalies"].enabled is False  # 0 = kept forever
    assert result["classes"]["task_runs"]["days"] == 14


def test_the_data_migration_created_one_policy_per_class_from_the_settings_defaults(settings):
    policies = {p.data_class: p.days for p in RetentionPolicy.objects.all()}
    assert set(policies) == set(RetentionDataClass.values)


def test_old_runs_take_their_dead_letters_and_release_runs_pointing_at_them():
    # given: an old failed run with a dead letter that was replayed by a recent run, and a recent child run
    old = run(state=RunState.FAILURE, age=120)
    replay = run(age=1)
    DeadLetter.objects.create(run=old, task_name=old.task_name, error="boom", replay_run=replay)
    recent_letter_run = run(state=RunState.FAILURE, age=2)
    recent_letter = DeadLetter.objects.create(run=recent_letter_run, task_name="x", error="e", replay_run=old)
    child = run(age=3, parent=old)
    # when
    result = old_data_cleanup(now=NOW, classes=["task_runs"])
    # then
    assert result.classes["task_runs"].rows == 1
    assert not TaskRun.objects.filter(id=old.id).exists()
    assert list(DeadLetter.objects.values_list("id", flat=True)) == [recent_letter.id]
    recent_letter.refresh_from_db()
    child.refresh_from_db()
    assert recent_letter.replay_run_id is None
    assert child.parent_id is None
    assert TaskRun.objects.filter(id=replay.id).exists()


def test_a_run_stops_between_batches_when_its_time_budget_is_spent(data, policies):
    # given
    policies.RETENTION_TIME_BUDGET = 0
    # when
    result = old_data_cleanup(now=NOW).as_dict()
    # then
    assert result["complete"] is False
    assert "RETENTION_TIME_BUDGET" in result["stopped_reason"]
    assert result["classes"]["cost_lines"]["finished"] is False
    assert list(result["deleted"]) == ["cost_lines"]  # the classes after it wait for the next run
    assert CostLineItem.objects.count() == 10


def _other_connection():
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname=db["NAME"],
    )


@pytest.mark.django_db(transaction=True)
def test_rows_another_transaction_holds_are_skipped_not_waited_for(data):
    # given: another session holds two of the old cost lines
    held = list(CostLineItem.objects.filter(resource_id="i-march").values_list("id", flat=True)[:2])
    with _other_connection() as other:
        other.execute("SELECT id FROM costs_app_costlineitem WHERE id = ANY(%s) FOR UPDATE", [held])
        # when
        first = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
        other.rollback()
    second = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
    # then
    assert (first["deleted"]["cost_lines"], second["deleted"]["cost_lines"]) == (6, 2)


@pytest.mark.django_db(transaction=True)
def test_a_table_lock_makes_the_batch_give_up_quickly_as_a_transient_error(data, policies):
    # given: a migration-like lock on the table
    policies.RETENTION_LOCK_TIMEOUT = 0.2
    with _other_connection() as other:
        other.execute("LOCK TABLE costs_app_costlineitem IN ACCESS EXCLUSIVE MODE")
        # when / then
        with pytest.raises(TransientError, match="waited longer than 0.2s for a lock"):
            old_data_cleanup(now=NOW, classes=["cost_lines"])
        other.rollback()
    assert CostLineItem.objects.count() == 10


# --- through the real task path ---------------------------------------------------------------------------------


def _finished(run: TaskRun, timeout: float = 60) -> TaskRun:
    from tests.celery_procs import wait_for

    def done():
        current = TaskRun.objects.get(id=run.id)
        return current if current.state in (RunState.SUCCESS, RunState.FAILURE) else None

    current = wait_for(done, timeout=timeout, what=f"{run.task_name} to finish")
    assert current.state == RunState.SUCCESS, current.error
    return current


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_cleanup_task_dry_run_then_real_run_through_a_worker(tmp_path):
    from tests.celery_procs import child_env, flush_broker, start_worker

    # given: data aged against the wall clock (the worker's now), and a real worker deleting 2 rows per batch
    data = build_data(tmp_path, timezone.now())
    flush_broker()
    worker = start_worker(tmp_path, env=child_env(RETENTION_BATCH_SIZE="2"))
    try:
        # when: a dry run, as the admin's "Dry run" action or `run_task cleanup_old_data --dry-run` enqueue it
        dry = _finished(task_enqueue(task_name="cleanup_old_data", kwargs={"dry_run": True},
                                     triggered_by=TriggerKind.ADMIN))  # fmt: skip
        # then
        assert dry.queue == "maintenance"
        assert dry.result["dry_run"] is True
        assert dry.result["would_delete"] == EXPECTED_DELETED
        oldest = datetime.fromisoformat(dry.result["classes"]["cost_lines"]["oldest"])
        assert oldest.date() == timezone.now().date() - timedelta(days=457)
        assert CostLineItem.objects.count() == 10 and TaskResult.objects.filter(task_id__startswith="old").count() == 3
        # when: the real run
        real = _finished(task_enqueue(task_name="cleanup_old_data", kwargs={}, triggered_by=TriggerKind.COMMAND))
    finally:
        worker.stop()
    # then: its TaskRun carries the counts per class (the audit entry); rows inside their window are kept
    assert real.result["deleted"] == EXPECTED_DELETED
    # (how many go by batch and how many by dropping a month depends on where today's cutoff falls)
    assert real.result["classes"]["cost_lines"]["partitions_dropped"] >= 1
    assert real.result["batches"]["task_results"] == 2
    assert sorted(CostLineItem.objects.values_list("resource_id", flat=True)) == ["i-june", "i-june"]
    assert set(TaskRun.objects.filter(id__in=[r.id for r in data["kept_runs"]]).values_list("id", flat=True)) == {
        r.id for r in data["kept_runs"]
    }
    assert set(Recommendation.objects.values_list("provider_resource_id", flat=True)) == {"r3", "r4", "r5", "r6"}
    assert RetentionPolicy.objects.get(data_class="task_runs").last_deleted_rows == 3


def test_a_month_wholly_past_is_dropped_and_a_month_cut_by_the_cutoff_takes_the_batched_path(tmp_path):
    # given: an account's May (all past the cutoff of 2024-06-01 01:00) and June, cut by it: its first hour's
    # line is past, the next day's is not
    account = CloudAccountFactory()
    june_first = datetime(2024, 6, 1, tzinfo=UTC)
    load(
        account,
        [
            *daily("i-may", [date(2024, 5, 30), date(2024, 5, 31)], "1"),
            line(start=june_first, hours=1, cost="2", resource_id="i-june"),
            line(start=june_first + timedelta(days=1), cost="3", resource_id="i-june"),
        ],
        tmp_path,
    )
    # when
    result = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
    # then: May went as a whole partition, June's old hour row by row, the rest of June stays in its leaf
    outcome = result["classes"]["cost_lines"]
    assert (outcome["partitions_dropped"], outcome["rows"], outcome["batches"]) == (1, 3, 1)
    assert list(CostLineItem.objects.values_list("charge_period_start", "billed_cost")) == [
        (june_first + timedelta(days=1), Decimal("3"))
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s), to_regclass(%s)",
            [f"costs_app_costlineitem_p202405_a{account.pk}", f"costs_app_costlineitem_p202406_a{account.pk}"],
        )
        assert cursor.fetchone() == (None, f"costs_app_costlineitem_p202406_a{account.pk}")


def test_a_dropped_month_is_not_counted_its_lines_come_from_the_statistics_its_import_recorded(tmp_path):
    # given: two accounts' May loaded by imports (each leaf analysed by its import), both wholly past the cutoff
    small, large = CloudAccountFactory(), CloudAccountFactory()
    may = [date(2024, 5, day) for day in (28, 29, 30)]
    load(small, daily("i-small", may, "1"), tmp_path, "small.csv")
    load(large, daily("i-large", may, "1") + daily("i-large-2", may, "1"), tmp_path, "large.csv")
    # and: the large account's leaf has the statistics ANALYZE leaves on a month too big to read whole (300,000
    # pages, 12.3 M lines: an extrapolation from its sample)
    large_leaf = f"costs_app_costlineitem_p202405_a{large.pk}"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pg_class SET reltuples = 12345678, relpages = 300000 WHERE oid = %s::regclass", [large_leaf]
        )
    # when
    with CaptureQueriesContext(connection) as queries:
        result = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
    # then: both leaves dropped; the small one counted (a few pages), the large one not read: its number is the
    # statistics' estimate, and the outcome says how many lines are estimated
    outcome = result["classes"]["cost_lines"]
    assert outcome["partitions_dropped"] == 2
    assert outcome["rows"] == 3 + 12345678
    assert outcome["rows_estimated"] == 12345678
    assert not [q["sql"] for q in queries.captured_queries if f"count(*) from {large_leaf}" in q["sql"].lower()]
    assert not CostLineItem.objects.filter(account__in=[small, large]).exists()


def test_a_detached_month_is_dropped_in_its_own_transaction_and_one_a_dead_run_left_is_dropped_next_time(tmp_path):
    # given: a month a previous run detached and renamed but never dropped (it died in between: a partitioned table
    # with a leaf, both renamed), and an account's May past the cutoff
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE costs_app_costlineitem_x0123456789ab (LIKE costs_app_costlineitem) "
            "PARTITION BY LIST (account_id)"
        )
        cursor.execute(
            "CREATE TABLE costs_app_costlineitem_xba9876543210 "
            "PARTITION OF costs_app_costlineitem_x0123456789ab DEFAULT"
        )
    account = CloudAccountFactory()
    load(account, daily("i-may", [date(2024, 5, 30)], "1"), tmp_path)
    # when
    with CaptureQueriesContext(connection) as queries:
        result = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
    # then: May went; the leftover (with its leaf) and May's table (renamed on detach, with its leaf and DEFAULT,
    # renamed too) are dropped, each in a transaction of its own after the detach committed; nothing detached is left
    assert result["classes"]["cost_lines"]["partitions_dropped"] == 1
    sqls = [q["sql"] for q in queries.captured_queries]
    drops = [i for i, sql in enumerate(sqls) if sql.startswith("DROP TABLE IF EXISTS costs_app_costlineitem_x")]
    assert len(drops) == 2 and sqls[drops[0]] == "DROP TABLE IF EXISTS costs_app_costlineitem_x0123456789ab"
    detach = sqls.index("ALTER TABLE costs_app_costlineitem DETACH PARTITION costs_app_costlineitem_p202405")
    renames = sqls[detach + 1 : detach + 4]
    assert [sql.split()[2] for sql in renames] == [
        "costs_app_costlineitem_p202405",
        "costs_app_costlineitem_p202405_a" + str(account.pk),
        "costs_app_costlineitem_p202405_default",
    ]
    assert all(" RENAME TO costs_app_costlineitem_x" in sql for sql in renames)
    # (the end of the detach's transaction: a savepoint's release inside the test's own transaction)
    assert sqls[detach + 4] == "COMMIT" or sqls[detach + 4].startswith("RELEASE SAVEPOINT")
    assert drops[1] > detach + 4 and sqls[drops[1]] == f"DROP TABLE IF EXISTS {renames[0].split()[-1]}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname ~ '^costs_app_costlineitem_(x|p202405)'")
        assert cursor.fetchall() == []
    # and an import of May after it makes the month anew
    load(account, daily("i-may-again", [date(2024, 5, 30)], "2"), tmp_path, "again.csv")
    assert list(CostLineItem.objects.values_list("resource_id", flat=True)) == ["i-may-again"]


def test_in_a_month_with_an_account_s_line_not_past_the_cutoff_only_the_other_accounts_leaves_are_dropped(tmp_path):
    # given: two accounts' May; one of them also bills in May a line charged in June (after the cutoff of
    # 2024-06-01 01:00)
    done, late = CloudAccountFactory(), CloudAccountFactory()
    load(done, daily("i-done", [date(2024, 5, 30), date(2024, 5, 31)], "1"), tmp_path, "done.csv")
    may = datetime(2024, 5, 1, tzinfo=UTC)
    late_line = line(
        start=datetime(2024, 6, 2, tzinfo=UTC), cost="7", resource_id="i-late",
        billing_period_start=may, billing_period_end=datetime(2024, 6, 1, tzinfo=UTC),
    )  # fmt: skip
    load(late, [*daily("i-late", [date(2024, 5, 31)], "2"), late_line], tmp_path, "late.csv")
    # when
    result = old_data_cleanup(now=NOW, classes=["cost_lines"]).as_dict()
    # then: the first account's May went as a leaf; the month's table and the other account's leaf stay, its
    # old line taken by the batched path
    outcome = result["classes"]["cost_lines"]
    assert (outcome["partitions_dropped"], outcome["rows"], outcome["batches"]) == (1, 3, 1)
    assert list(CostLineItem.objects.values_list("resource_id", "billed_cost")) == [("i-late", Decimal("7"))]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s)",
            ["costs_app_costlineitem_p202405", f"costs_app_costlineitem_p202405_a{done.pk}",
             f"costs_app_costlineitem_p202405_a{late.pk}"],
        )  # fmt: skip
        assert cursor.fetchone() == (
            "costs_app_costlineitem_p202405",
            None,
            f"costs_app_costlineitem_p202405_a{late.pk}",
        )
