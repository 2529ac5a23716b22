"""Data retention: deletes what is older than its class's retention (settings.RETENTION_DAYS), in small batches.

Classes and the date they are aged by:
- cost_lines       CostLineItem.charge_period_start. The daily rollups of those days are kept on
                   purpose: they are the long-term summary that budgets, anomaly baselines and
                   dashboards read, and are tiny next to the lines they summarise.
- task_runs        TaskRun.enqueued_at, finished runs only (SUCCESS, FAILURE, CANCELLED); their dead
                   letters go with them, and child runs / replays pointing at them keep living.
- task_results     django-celery-results' TaskResult.date_done (when the database result backend is used).
- resolved_alerts  BudgetAlert.resolved_at; unresolved alerts are never deleted.

A retention of 0 days (or less) keeps a class forever. Each batch of RETENTION_BATCH_SIZE rows is its
own short transaction (`DELETE ... WHERE id IN (SELECT id ... LIMIT n FOR UPDATE SKIP LOCKED)`), so
the cleanup never holds long locks or builds one huge transaction, and a concurrent run simply skips
the rows the other is deleting. The task's TaskRun keeps the counts: that is the audit entry.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models.deletion import CASCADE, DO_NOTHING, SET_NULL, get_candidate_relations_to_delete
from django_celery_results.models import TaskResult

from costs_app.models import BudgetAlert, CostLineItem

from ..models import FINAL_STATES, TaskRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataClass:
    name: str
    model: type[models.Model]
    date_field: str
    extra_filter: models.Q = field(default_factory=models.Q)


DATA_CLASSES = (
    DataClass("cost_lines", CostLineItem, "charge_period_start"),
    DataClass("task_runs", TaskRun, "enqueued_at", models.Q(state__in=FINAL_STATES)),
    DataClass("task_results", TaskResult, "date_done"),
    DataClass("resolved_alerts", BudgetAlert, "resolved_at", models.Q(resolved_at__isnull=False)),
)


@dataclass
class ClassOutcome:
    cutoff: datetime | None
    rows: int = 0
    batches: int = 0


@dataclass
class CleanupResult:
    dry_run: bool
    classes: dict[str, ClassOutcome] = field(default_factory=dict)

    def as_dict(self) -> dict:
        verb = "would_delete" if self.dry_run else "deleted"
        return {
            "dry_run": self.dry_run,
            verb: {name: outcome.rows for name, outcome in self.classes.items()},
            "batches": {name: outcome.batches for name, outcome in self.classes.items()},
            "cutoffs": {
                name: outcome.cutoff.isoformat() if outcome.cutoff else None for name, outcome in self.classes.items()
            },
        }


def _old_rows_sql(data_class: DataClass, cutoff: datetime) -> tuple[str, tuple]:
    """SQL (and params) selecting the ids of rows past retention, compiled by the ORM from the class's filter."""
    queryset = (
        data_class.model._default_manager.filter(data_class.extra_filter, **{f"{data_class.date_field}__lt": cutoff})
        .order_by()
        .values("pk")
    )  # no ORDER BY: the batch takes whichever old rows come first
    return queryset.query.sql_with_params()


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


def _delete_batch(data_class: DataClass, select_sql: str, params: tuple, batch_size: int) -> int:
    table = data_class.model._meta.db_table
    pk = data_class.model._meta.pk.column
    batch = f"{select_sql} LIMIT {int(batch_size)} FOR UPDATE SKIP LOCKED"
    with transaction.atomic(), connection.cursor() as cursor:
        if not _relations(data_class.model):
            cursor.execute(f'DELETE FROM "{table}" WHERE "{pk}" IN ({batch})', params)
            return cursor.rowcount
        # Rows something points at: take the batch's ids first, then cascade / set null, then delete.
        cursor.execute(batch, params)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return 0
        _detach(data_class.model, ids, cursor)
        cursor.execute(f'DELETE FROM "{table}" WHERE "{pk}" = ANY(%s)', [ids])
        return cursor.rowcount


def old_data_cleanup(*, now: datetime, dry_run: bool = False) -> CleanupResult:
    """Delete (or, with dry_run, count) every data class's rows older than its retention."""
    result = CleanupResult(dry_run=dry_run)
    batch_size = settings.RETENTION_BATCH_SIZE
    for data_class in DATA_CLASSES:
        days = settings.RETENTION_DAYS.get(data_class.name, 0)
        if days <= 0:
            result.classes[data_class.name] = ClassOutcome(cutoff=None)
            continue
        cutoff = now - timedelta(days=days)
        outcome = result.classes[data_class.name] = ClassOutcome(cutoff=cutoff)
        select_sql, params = _old_rows_sql(data_class, cutoff)
        if dry_run:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT COUNT(*) FROM ({select_sql}) AS old", params)
                outcome.rows = cursor.fetchone()[0]
            continue
        while True:
            deleted = _delete_batch(data_class, select_sql, params, batch_size)
            if deleted:
                outcome.batches += 1
                outcome.rows += deleted
            if deleted < batch_size:
                break
        if outcome.rows:
            logger.info("retention: deleted %d %s older than %s", outcome.rows, data_class.name, cutoff.date())
    return result
