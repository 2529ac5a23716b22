"""Data retention: deletes what is older than its class's RetentionPolicy, in small batches; a dry run only counts.

The policies are rows edited in the admin (one per class, created by a data migration from the
RETENTION_*_DAYS settings; a class without a row gets one from them here). Classes, and the date each
is aged by:

- cost_lines              CostLineItem.charge_period_start
- daily_rollups           CostDailyRollup.day and CostTagRollup.day (the long-term summary budgets,
                          anomaly baselines and dashboards read: keep them longer than the lines)
- task_runs               TaskRun.enqueued_at, finished runs only; their dead letters go with them, and
                          child runs / replays pointing at them keep living (the link is cleared)
- task_results            django-celery-results' TaskResult.date_done (when the database backend is used)
- resolved_alerts         BudgetAlert.resolved_at; unresolved alerts are never deleted
- closed_recommendations  closed and dismissed Recommendations, by the last run whose rule found them (a
                          dismissal is kept while its rule still finds the resource, or the next run would
                          bring it back as open); open and done ones are never deleted
- terminated_resources    Resource.terminated_at of terminated resources (recommendations keep their
                          provider id, the link is cleared)
- resolved_anomalies      resolved and false-positive Anomalies, by their last update

Cost lines are partitioned by billing month and account (costs_app.services.partitions): a month whose lines
are all past the cutoff is detached whole in one short transaction under the same lock_timeout (only the
accounts' leaves that are, if some account's lines of that month are not), then dropped in a second one,
instead of deleted row by row; a month only partly past it (a cut mid-month) takes the batched path below. The
outcome's `partitions_dropped` counts the accounts' months (leaves) dropped; their rows count in `rows`, taken
from the statistics the month's import recorded, not counted before the drop
(`partitions.month_detach_if_older`): for an account's month of more than about 30,000 lines that is an
estimate, and `rows_estimated` says how many of `rows` are.

A disabled policy keeps its class forever. Each batch of RETENTION_BATCH_SIZE rows is its own short
transaction — `DELETE ... WHERE id IN (SELECT id ... LIMIT n FOR UPDATE SKIP LOCKED)` — with a
lock_timeout of RETENTION_LOCK_TIMEOUT, so the cleanup never holds long locks nor queues behind writers,
and a concurrent run simply skips the rows the other is deleting. The big per-account tables are
walked one account at a time so each batch is a range scan of their (account, date) index. A run
stops between batches after RETENTION_TIME_BUDGET seconds (under the task's soft time limit) and says
so; the next run goes on. The task's TaskRun keeps the per-class counts: that is the audit entry.
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import OperationalError, connection, models, transaction
from django.db.models.deletion import CASCADE, DO_NOTHING, SET_NULL, get_candidate_relations_to_delete
from django.db.models.functions import Coalesce
from django_celery_results.models import TaskResult

from costs_app.models import (
    Anomaly,
    AnomalyStatus,
    BudgetAlert,
    CostDailyRollup,
    CostLineItem,
    CostTagRollup,
    Recommendation,
    RecommendationStatus,
)
from costs_app.services import partitions
from finops.errors import PermanentError, TransientError
from providers_app.models import CloudAccount, Resource

from ..models import FINAL_STATES, RETENTION_MIN_DAYS, RetentionDataClass, RetentionPolicy, TaskRun

logger = logging.getLogger(__name__)

# The days a policy created disabled (its setting is 0) starts with.
FALLBACK_DAYS = 365


@dataclass(frozen=True)
class Target:
    """One table of a data class: its rows past `cutoff` by `age` (a field name, or an expression)."""

    model: type[models.Model]
    age: str | models.Expression
    extra_filter: models.Q = field(default_factory=models.Q)
    # Walk the table one account at a time, so each batch is a range scan of its (account, date) index.
    per_account: bool = False

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    @property
    def age_expression(self) -> models.Expression:
        return models.F(self.age) if isinstance(self.age, str) else self.age

    def old_rows(self, cutoff: datetime, account_id: int | None = None) -> models.QuerySet:
        queryset = self.model._default_manager.alias(_age=self.age_expression)
        queryset = queryset.filter(self.extra_filter, _age__lt=cutoff)
        if account_id is not None:
            queryset = queryset.filter(account_id=account_id)
        return queryset.order_by()  # no ORDER BY: a batch takes whichever old rows come first


DATA_CLASSES: dict[str, tuple[Target, ...]] = {  # keys: RetentionDataClass values
    RetentionDataClass.COST_LINES: (Target(CostLineItem, "charge_period_start", per_account=True),),
    RetentionDataClass.DAILY_ROLLUPS: (
        Target(CostDailyRollup, "day", per_account=True),
        Target(CostTagRollup, "day", per_account=True),
    ),
    RetentionDataClass.TASK_RUNS: (Target(TaskRun, "enqueued_at", models.Q(state__in=FINAL_STATES)),),
    RetentionDataClass.TASK_RESULTS: (Target(TaskResult, "date_done"),),
    RetentionDataClass.RESOLVED_ALERTS: (Target(BudgetAlert, "resolved_at", models.Q(resolved_at__isnull=False)),),
    RetentionDataClass.CLOSED_RECOMMENDATIONS: (
        Target(
            Recommendation,
            Coalesce("last_found_at", "status_changed_at", "updated_at"),
            models.Q(status__in=[RecommendationStatus.CLOSED, RecommendationStatus.DISMISSED]),
        ),
    ),
    RetentionDataClass.TERMINATED_RESOURCES: (
        Target(Resource, Coalesce("terminated_at", "last_seen"), models.Q(is_terminated=True), per_account=True),
    ),
    RetentionDataClass.RESOLVED_ANOMALIES: (
        Target(Anomaly, "updated_at", models.Q(status__in=[AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE])),
    ),
}


@dataclass
class ClassOutcome:
    enabled: bool
    days: int
    cutoff: datetime | None
    rows: int = 0
    batches: int = 0
    oldest: datetime | None = None  # dry run: the oldest row that would go
    tables: dict[str, int] = field(default_factory=dict)
    finished: bool = True
    partitions_dropped: int = 0
    rows_estimated: int = 0  # of `rows`: lines of dropped partitions taken from their statistics, not counted

    def as_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "days": self.days,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
            "rows": self.rows,
            "batches": self.batches,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "tables": dict(self.tables),
            "finished": self.finished,
            "partitions_dropped": self.partitions_dropped,
            "rows_estimated": self.rows_estimated,
        }


@dataclass
class CleanupResult:
    dry_run: bool
    classes: dict[str, ClassOutcome] = field(default_factory=dict)
    complete: bool = True
    stopped_reason: str = ""

    def as_dict(self) -> dict:
        verb = "would_delete" if self.dry_run else "deleted"
        out = {
            "dry_run": self.dry_run,
            "complete": self.complete,
            verb: {name: outcome.rows for name, outcome in self.classes.items()},
            "batches": {name: outcome.batches for name, outcome in self.classes.items()},
            "cutoffs": {
                name: outcome.cutoff.isoformat() if outcome.cutoff else None for name, outcome in self.classes.items()
            },
            "classes": {name: outcome.as_dict() for name, outcome in self.classes.items()},
        }
        if self.stopped_reason:
            out["stopped_reason"] = self.stopped_reason
        return out


def retention_policies_ensure() -> dict[str, RetentionPolicy]:
    """Every data class's policy, creating missing rows from the RETENTION_*_DAYS settings."""
    existing = {p.data_class: p for p in RetentionPolicy.objects.all()}
    missing = []
    for data_class in RetentionDataClass.values:
        if data_class not in existing:
            days = int(settings.RETENTION_DAYS.get(data_class, 0))
            missing.append(
                RetentionPolicy(
                    data_class=data_class,
                    enabled=days > 0,
                    days=days if days > 0 else max(FALLBACK_DAYS, RETENTION_MIN_DAYS[data_class]),
                )
            )
    if missing:
        RetentionPolicy.objects.bulk_create(missing, ignore_conflicts=True)
        existing = {p.data_class: p for p in RetentionPolicy.objects.all()}
    return existing


def _relations(model: type[models.Model]) -> list:
    return list(get_candidate_relations_to_delete(model._meta))


def _detach(model: type[models.Model], ids: list, cursor) -> None:
    """Do in SQL what Django's collector does in Python for the rows pointing at `ids`: cascade or set null."""
    for relation in _relations(model):
        related, column = relation.related_model, relation.field.column
        table = related._meta.db_table
        on_delete = relation.on_delete
        if on_delete is SET_NULL:
            cursor.execute(f'UPDATE "{table}" SET "{column}" = NULL WHERE "{column}" = ANY(%s)', [ids])
        elif on_delete is CASCADE:
            pk = related._meta.pk.column
            cursor.execute(f'SELECT "{pk}" FROM "{table}" WHERE "{column}" = ANY(%s)', [ids])
            related_ids = [row[0] for row in cursor.fetchall()]
            if related_ids:
                _detach(related, related_ids, cursor)
                cursor.execute(f'DELETE FROM "{table}" WHERE "{pk}" = ANY(%s)', [related_ids])
        elif on_delete is not DO_NOTHING:
            raise NotImplementedError(f"retention cannot apply {on_delete.__name__} from {table}.{column}")


def _delete_batch(target: Target, select_sql: str, params: tuple, batch_size: int) -> int:
    table, pk = target.table, target.model._meta.pk.column
    batch = f"{select_sql} LIMIT {int(batch_size)} FOR UPDATE SKIP LOCKED"
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            timeout_ms = int(settings.RETENTION_LOCK_TIMEOUT * 1000)
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
            if not _relations(target.model):
                cursor.execute(f'DELETE FROM "{table}" WHERE "{pk}" IN ({batch})', params)
                return cursor.rowcount
            # Rows something points at: take the batch's ids first, then cascade / set null, then delete.
            cursor.execute(batch, params)
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return 0
            _detach(target.model, ids, cursor)
            cursor.execute(f'DELETE FROM "{table}" WHERE "{pk}" = ANY(%s)', [ids])
            return cursor.rowcount
    except OperationalError as exc:
        if "lock timeout" in str(exc):
            raise TransientError(
                f"retention: a batch of {table} waited longer than {settings.RETENTION_LOCK_TIMEOUT}s for a lock; "
                "the rows deleted so far stay deleted, the rest is retried"
            ) from exc
        raise


def _drop_whole_months(outcome: ClassOutcome, target: Target, cutoff: datetime, deadline: float) -> None:
    """Drop each month of cost lines wholly past `cutoff` (or, in a month some account's lines of which are not,
    each account's leaf that is): per month, one short transaction detaches it, a second drops it."""
    with connection.cursor() as cursor:
        candidates = partitions.leaves_before(cursor, cutoff)
        leftovers = partitions.detached_sweep(cursor)  # detached by a run that died before dropping them
    _drop_detached(leftovers)
    months: dict[str, list[str]] = {}
    for parent, leaf, _month in candidates:
        months.setdefault(parent, []).append(leaf)
    for parent, leaves in months.items():
        if time.monotonic() > deadline:
            return  # the batched loop that follows stops at once and says so
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                timeout_ms = int(settings.RETENTION_LOCK_TIMEOUT * 1000)
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{timeout_ms}ms"])
                detached = partitions.month_detach_if_older(cursor, parent=parent, leaves=leaves, cutoff=cutoff)
        except OperationalError as exc:
            if "lock timeout" not in str(exc):
                raise
            # Someone holds rows of it (or the table): like SKIP LOCKED, leave it; the batched path below takes
            # the rows it can, and a later run drops what is left.
            logger.info("retention: %s is in use; its old rows take the batched path", parent)
            continue
        if detached is None:
            continue
        # Its own transaction, after the detach's commit (the lines are gone for every reader from there): the
        # tables detached from are not locked while the files are freed.
        _drop_detached(detached.tables)
        outcome.partitions_dropped += detached.leaves
        outcome.rows += detached.rows
        outcome.rows_estimated += detached.rows_estimated
        outcome.tables[target.table] += detached.rows


def _drop_detached(tables: list[str]) -> None:
    if tables:
        with transaction.atomic(), connection.cursor() as cursor:
            partitions.detached_drop(cursor, tables)


def _count_old(target: Target, cutoff: datetime) -> tuple[int, datetime | None]:
    found = target.old_rows(cutoff).aggregate(rows=models.Count("pk"), oldest=models.Min(target.age_expression))
    oldest = found["oldest"]
    if oldest is not None and not isinstance(oldest, datetime):  # a DateField: the day's start
        oldest = datetime.combine(oldest, datetime.min.time(), tzinfo=cutoff.tzinfo)
    return found["rows"], oldest


def old_data_cleanup(*, now: datetime, dry_run: bool = False, classes: list[str] | None = None) -> CleanupResult:
    """Delete (or, with dry_run, count) every data class's rows older than its retention policy."""
    unknown = sorted(set(classes or []) - set(RetentionDataClass.values))
    if unknown:
        raise PermanentError(
            f"unknown retention data class {', '.join(unknown)}; known: {', '.join(RetentionDataClass.values)}"
        )
    policies = retention_policies_ensure()
    result = CleanupResult(dry_run=dry_run)
    batch_size = settings.RETENTION_BATCH_SIZE
    deadline = time.monotonic() + settings.RETENTION_TIME_BUDGET
    account_ids = list(CloudAccount.objects.order_by("id").values_list("id", flat=True))
    for name, targets in DATA_CLASSES.items():
        if classes and name not in classes:
            continue
        policy = policies[name]
        if policy.days < policy.min_days:  # only possible by writing the row around the admin's validation
            raise PermanentError(
                f"retention policy {name} keeps {policy.days} days, below its minimum of {policy.min_days}; "
                "fix it in the admin (nothing was deleted for this class or the ones after it)"
            )
        cutoff = now - timedelta(days=policy.days) if policy.enabled else None
        outcome = result.classes[str(name)] = ClassOutcome(enabled=policy.enabled, days=policy.days, cutoff=cutoff)
        if cutoff is None:
            continue
        for target in targets:
            if dry_run:
                rows, oldest = _count_old(target, cutoff)
                outcome.tables[target.table] = rows
                outcome.rows += rows
                if oldest is not None and (outcome.oldest is None or oldest < outcome.oldest):
                    outcome.oldest = oldest
                continue
            outcome.tables[target.table] = 0
            if target.model is CostLineItem:
                _drop_whole_months(outcome, target, cutoff, deadline)
            for account_id in account_ids if target.per_account else [None]:
                select_sql, params = target.old_rows(cutoff, account_id).values("pk").query.sql_with_params()
                while True:
                    if time.monotonic() > deadline:
                        outcome.finished = result.complete = False
                        result.stopped_reason = (
                            f"stopped after RETENTION_TIME_BUDGET ({settings.RETENTION_TIME_BUDGET}s) in {name}; "
                            "the next run goes on"
                        )
                        break
                    deleted = _delete_batch(target, select_sql, params, batch_size)
                    if deleted:
                        outcome.batches += 1
                        outcome.rows += deleted
                        outcome.tables[target.table] += deleted
                    if deleted < batch_size:
                        break
                if not result.complete:
                    break
            if not result.complete:
                break
        if outcome.rows and not dry_run:
            logger.info("retention: deleted %d %s older than %s", outcome.rows, name, cutoff.date())
        if not result.complete:
            break
    _record(result, policies, now)
    return result


def _record(result: CleanupResult, policies: dict[str, RetentionPolicy], now: datetime) -> None:
    """The latest outcome on each policy row, for the admin list."""
    for name, outcome in result.classes.items():
        if not outcome.enabled:
            continue
        if result.dry_run:
            fields = {"last_dry_run_at": now, "last_dry_run_rows": outcome.rows, "last_dry_run_oldest": outcome.oldest}
        else:
            fields = {"last_cleanup_at": now, "last_deleted_rows": outcome.rows}
        RetentionPolicy.objects.filter(pk=policies[name].pk).update(**fields)
