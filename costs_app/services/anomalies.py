"""Cost anomalies: every monitor's daily series judged against a seasonal baseline; anomalies that grow, not repeat.

One run (`anomalies_detect`, called by the task `detect_cost_anomalies`):
1. Windows. Per active account, the days judged are the last ANOMALY_LOOKBACK_DAYS up to its latest day
   with data (not the wall clock: data arrives late), and only days with a whole baseline
   (ANOMALY_BASELINE_DAYS) of history before them and within NEWS_DAYS of today.
2. Series. Every active monitor contributes its series — per account, per account × service, or per
   account × value of a tag key (untagged spend is the value "") — daily EffectiveCost from the rollups
   (CostDailyRollup, CostTagRollup), never the raw lines, of the days the detector reads
   (`anomaly_detector.columns_read`): the first judged day's baseline onwards, and, only when a judged day is a
   1st, the days around the previous two 1sts (recurring month-start charges) up to `history_days` back.
   EffectiveCost, not BilledCost, so an upfront commitment purchase is not a spending spike. All series of all
   monitors form ONE series × days array that `anomaly_detector.series_evaluate` judges in one vectorised pass,
   each row with its monitor's floors.
3. Anomalies. The flagged days of a series become anomalies by day ownership: a day already in a closed
   anomaly (resolved, false positive) stays there and is never reported again; an open or acknowledged
   anomaly keeps its days before the window and those in the window that are still flagged, and grows
   by flagged days at most ANOMALY_MERGE_GAP_DAYS normal days away; flagged days nobody owns start a new
   anomaly. An open anomaly whose days are no longer anomalous after the data changed is resolved with a
   note. The writes run under one PostgreSQL advisory lock, so two runs at once cannot duplicate.
4. Root causes of every new or changed anomaly: the services, regions, sub-accounts and tag values
   (from the rollups, each judged against its own baseline the same way) and the resources (cost lines
   of the anomaly's days and the week before, one indexed query for all anomalies) whose increase makes
   up at least ROOT_CAUSE_MIN_SHARE of the anomaly's impact.
5. Notification of new anomalies to their monitor's channels, after commit; failed channels are retried
   on the next runs (NOTIFY_MAX_ATTEMPTS), channels that got it are not sent it twice.

Users close anomalies with `anomaly_status_set` (admin actions, REST API): open → acknowledged →
resolved / false positive, with who, when and a note. A false positive is recorded only: it changes
no baseline (the baseline is robust statistics of the raw data, nothing else).
"""

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from costs_app.models import (
    Anomaly,
    AnomalyDimension,
    AnomalyMonitor,
    AnomalyStatus,
    CostAllocationTag,
)
from costs_app.services import anomaly_detector as detector
from costs_app.services.ingest import tag_rollups_rebuild
from costs_app.services.notifications import channels_notify

logger = logging.getLogger(__name__)

ROOT_CAUSES_PER_DIMENSION = 3
DAILY_FACTS = ("account", "currency", "service", "region", "sub_account", "col", "cost")
TAG_FACTS = ("key", "account", "currency", "value", "service", "region", "sub_account", "col", "cost")
# A contributor must carry at least this share of the anomaly's impact; everyday noise is not a cause.
ROOT_CAUSE_MIN_SHARE = 0.1
# Resources are compared with their average day of the week before the anomaly.
RESOURCE_REFERENCE_DAYS = 7
# Days before today whose data can still be judged; older days are history.
NEWS_DAYS = 14
NOTIFY_MAX_ATTEMPTS = 3
NOTIFY_WITHIN = timedelta(days=1)
# pg_advisory_xact_lock key for the write phase ("anom").
STORE_LOCK = 0x616E6F6D
CLOSED = (AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE)
TRANSITIONS = {
    AnomalyStatus.OPEN: {AnomalyStatus.ACKNOWLEDGED, AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE},
    AnomalyStatus.ACKNOWLEDGED: {AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE},
}
AUTO_RESOLVED_NOTE = (
    "Resolved automatically: none of its days is anomalous any more (the cost data or the monitor's floors changed)."
)


class AnomalyStatusError(ValueError):
    """A status change that the lifecycle does not allow (e.g. reopening a closed anomaly)."""


class AnomalyMonitorError(ValueError):
    """A monitor that cannot be saved as given."""


@dataclass
class AnomalyResult:
    monitors: int = 0
    accounts: int = 0
    series: int = 0
    points_evaluated: int = 0
    anomalous_days: int = 0
    created: int = 0
    updated: int = 0
    auto_resolved: int = 0
    notified: int = 0
    notification_failures: int = 0
    skipped_monitors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Window:
    account_id: int
    first_day: date
    start: date
    end: date


@dataclass
class _Series:
    """One row of the judged array."""

    monitor: AnomalyMonitor
    account_id: int
    currency: str
    value: str

    @property
    def key(self) -> tuple:
        return (self.monitor.pk, self.account_id, self.value, self.currency)


@dataclass
class _Plan:
    """What the write phase does to one anomaly (new or existing)."""

    series: _Series
    days: dict[date, dict]  # day -> stats, the anomaly's days after this run
    record: Anomaly | None = None
    auto_resolve: bool = False
    root_causes: list = field(default_factory=list)


# --- detection --------------------------------------------------------------------------------------------


def anomalies_detect(*, account_id: int | None = None, now: datetime) -> AnomalyResult:
    """Judge the latest days of every active monitor's series (of every active account, or one) and store."""
    result = AnomalyResult()
    monitors = _monitors(account_id=account_id, result=result)
    windows = _windows(account_id=account_id, today=now.date())
    result.accounts = len(windows)
    if monitors and windows:
        load_start = min(w.start for w in windows.values()) - timedelta(days=_history_days())
        load_end = max(w.end for w in windows.values())
        days = _days_read(load_start, load_end)
        series, matrix = _series_matrix(monitors, windows, load_start, load_end, days)
        result.monitors = len(monitors)
        result.series = len(series)
        if series:
            evaluation, in_window = _evaluate(series, matrix, windows, load_start)
            result.points_evaluated = int(in_window.sum())
            flags = evaluation.flags & in_window
            result.anomalous_days = int(flags.sum())
            _store(series, evaluation, flags, windows, load_start, matrix, days, now=now, result=result)
    _notify_pending(account_id=account_id, now=now, result=result)
    if result.created or result.auto_resolved:
        logger.info(
            "anomalies: %d new, %d updated, %d resolved automatically",
            result.created,
            result.updated,
            result.auto_resolved,
        )
    return result


def _monitors(*, account_id: int | None, result: AnomalyResult) -> list[AnomalyMonitor]:
    monitors = list(AnomalyMonitor.objects.filter(is_active=True).order_by("pk"))
    if account_id is not None:
        monitors = [m for m in monitors if m.account_id in (None, account_id)]
    active_keys = set(CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True))
    usable = []
    for monitor in monitors:
        if monitor.dimension == AnomalyDimension.TAG and monitor.tag_key not in active_keys:
            # Its rollups are not kept up to date: judging stale data would invent anomalies.
            result.skipped_monitors.append(f"{monitor.name}: tag key {monitor.tag_key!r} is not an active tag")
            logger.warning("anomaly monitor %s skipped: tag key %r is not active", monitor.name, monitor.tag_key)
            continue
        usable.append(monitor)
    return usable


def _windows(*, account_id: int | None, today: date) -> dict[int, _Window]:
    lookback = settings.ANOMALY_LOOKBACK_DAYS
    baseline = settings.ANOMALY_BASELINE_DAYS
    # Two index probes per account on the rollups' (account, day, ...) key, not a scan of all its history.
    sql = """
        SELECT a.id,
               (SELECT MIN(r.day) FROM costs_app_costdailyrollup r WHERE r.account_id = a.id),
               (SELECT MAX(r.day) FROM costs_app_costdailyrollup r WHERE r.account_id = a.id AND r.day <= %s)
        FROM providers_app_cloudaccount a
        WHERE a.is_active AND (%s::bigint IS NULL OR a.id = %s)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [today, account_id, account_id])
        rows = cursor.fetchall()
    windows = {}
    for acct, first, latest in rows:
        if latest is None:
            continue
        # A day is judged only with a whole baseline of history before it, and only while it is news: an
        # account whose data stopped is not re-judged forever (retention may have removed what was closed).
        start = max(
            latest - timedelta(days=lookback - 1),
            first + timedelta(days=baseline),
            today - timedelta(days=NEWS_DAYS - 1),
        )
        if start <= latest:
            windows[acct] = _Window(acct, first, start, latest)
    return windows


def _grouped(keys: list[np.ndarray], cols: np.ndarray, costs: np.ndarray, n_days: int):
    """Dense (unique key × day) sums; days without a row are zero spend. Returns (key tuples, matrix).

    Each key column is factorised on its own (a C-level sort), the codes combined into one integer.
    """
    if not len(cols):
        return [], np.zeros((0, n_days))
    combined = np.zeros(len(cols), dtype=np.int64)
    for part in keys:
        values = part.astype(np.int64) if isinstance(part[0], int) else part.astype(str)
        uniques, codes = np.unique(values, return_inverse=True)
        combined = combined * len(uniques) + codes.ravel()
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    matrix = np.zeros((len(first), n_days))
    np.add.at(matrix, (inverse.ravel(), cols), costs)
    return [tuple(part[i] for part in keys) for i in first], matrix


def _fetch(sql: str, params) -> list[np.ndarray]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return []
    return [np.array(column, dtype=object) for column in zip(*rows, strict=True)]


def _series_matrix(monitors, windows, start: date, end: date, days: tuple) -> tuple[list[_Series], np.ndarray]:
    """All monitors' series as one (series × day) array from `start` to `end`, loaded on `days` (`_days_read`; the
    other days are zeros, which the detector does not read)."""
    n_days = (end - start).days + 1
    accounts = sorted(windows)
    sources: dict[tuple, tuple[list, np.ndarray]] = {}
    if any(m.dimension != AnomalyDimension.TAG for m in monitors):
        columns = _fetch(
            """
            SELECT account_id, billing_currency, service_name, day - %s::date, SUM(effective_cost)::float8
            FROM costs_app_costdailyrollup
            WHERE account_id = ANY(%s) AND (day BETWEEN %s AND %s OR day = ANY(%s::date[]))
            GROUP BY 1, 2, 3, 4
            """,
            [start, accounts, days[0], end, days[1]],
        )
        if columns:
            acct, currency, service, col, cost = columns
            col, cost = col.astype(np.int64), cost.astype(np.float64)
            sources[("account",)] = _grouped([acct, currency], col, cost, n_days)
            sources[("service",)] = _grouped([acct, currency, service], col, cost, n_days)
    tag_keys = sorted({m.tag_key for m in monitors if m.dimension == AnomalyDimension.TAG})
    if tag_keys:
        columns = _fetch(
            """
            SELECT tag_key, account_id, billing_currency, tag_value, day - %s::date, SUM(effective_cost)::float8
            FROM costs_app_costtagrollup
            WHERE tag_key = ANY(%s) AND account_id = ANY(%s) AND (day BETWEEN %s AND %s OR day = ANY(%s::date[]))
            GROUP BY 1, 2, 3, 4, 5
            """,
            [start, tag_keys, accounts, days[0], end, days[1]],
        )
        if columns:
            key, acct, currency, value, col, cost = columns
            col, cost = col.astype(np.int64), cost.astype(np.float64)
            for tag_key in tag_keys:
                mine = key == tag_key
                parts = [acct[mine], currency[mine], value[mine]]
                sources[("tag", tag_key)] = _grouped(parts, col[mine], cost[mine], n_days)

    series: list[_Series] = []
    blocks = []
    for monitor in monitors:
        source = ("tag", monitor.tag_key) if monitor.dimension == AnomalyDimension.TAG else (monitor.dimension,)
        keys, matrix = sources.get(source, ([], None))
        rows = [i for i, k in enumerate(keys) if monitor.account_id in (None, k[0]) and k[0] in windows]
        if not rows:
            continue
        blocks.append(matrix[rows])
        for i in rows:
            acct, currency, *value = keys[i]
            series.append(_Series(monitor, int(acct), currency, value[0] if value else ""))
    return series, (np.vstack(blocks) if blocks else np.zeros((0, n_days)))


def _history_days() -> int:
    """Days loaded before the first judged day: the baseline, and at least back to the previous 1st of the month."""
    return detector.history_days(settings.ANOMALY_BASELINE_DAYS)


def _month_starts(start: date, n_days: int) -> np.ndarray:
    return np.array([(start + timedelta(days=i)).day == 1 for i in range(n_days)])


def _days_read(start: date, end: date) -> tuple[date, list[date]]:
    """The days from start to end whose rollups the detector reads (`anomaly_detector.columns_read`), as the first
    judged day's baseline start (every day from it to `end`) and the days before it around the previous two 1sts,
    only when a 1st is judged. The span before the baseline is most of the history (MONTH_LOOKBACK of ~83 days)
    and most runs judge no 1st: reading every day made a run on a long history read 2.7 × the rollup rows of one
    on a month's (bench/README.md, scale)."""
    n_days = (end - start).days + 1
    baseline_start = _history_days() - settings.ANOMALY_BASELINE_DAYS
    needed = detector.columns_read(
        n_days,
        first_column=_history_days(),
        baseline_days=settings.ANOMALY_BASELINE_DAYS,
        month_starts=_month_starts(start, n_days),
    )
    # columns_read reads every day from the first judged day's baseline on: the queries read that as one range.
    return start + timedelta(days=baseline_start), [
        start + timedelta(days=int(i)) for i in np.flatnonzero(needed[:baseline_start])
    ]


def _evaluate(series: list[_Series], matrix: np.ndarray, windows: dict[int, _Window], start: date):
    history = _history_days()
    evaluation = detector.series_evaluate(
        matrix,
        first_column=history,
        baseline_days=settings.ANOMALY_BASELINE_DAYS,
        score_threshold=settings.ANOMALY_SCORE_THRESHOLD,
        min_impact=np.array([float(s.monitor.min_impact) for s in series]),
        min_impact_percent=np.array([float(s.monitor.min_impact_percent) for s in series]),
        month_starts=_month_starts(start, matrix.shape[1]),
    )
    # Each row is judged only inside its account's window (columns are days from start + history).
    lo = np.array([(windows[s.account_id].start - start).days - history for s in series])
    hi = np.array([(windows[s.account_id].end - start).days - history for s in series])
    cols = np.arange(evaluation.flags.shape[1])
    in_window = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])
    return evaluation, in_window


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.6f}")


def _day_stats(evaluation: detector.SeriesEvaluation, row: int, col: int, day: date) -> dict:
    percent = evaluation.impact_percent[row, col]
    return {
        "day": day.isoformat(),
        "expected": str(_money(evaluation.expected[row, col])),
        "lower": str(_money(evaluation.lower[row, col])),
        "upper": str(_money(evaluation.upper[row, col])),
        "actual": str(_money(evaluation.actual[row, col])),
        "impact": str(_money(evaluation.impact[row, col])),
        "impact_percent": None if np.isnan(percent) else round(float(percent), 2),
        "score": round(float(evaluation.score[row, col]), 3),
        "baseline": "weekly" if evaluation.weekly[row, col] else "plain",
    }


# --- anomalies from flagged days ---------------------------------------------------------------------------


def anomaly_days_assign(
    *, flagged: list[date], window_start: date, window_end: date, records: list[Anomaly], gap: int
) -> tuple[dict[int, list[date]], list[list[date]]]:
    """Which anomaly each flagged day of one series belongs to: (days per existing live anomaly id, new groups).

    Closed anomalies keep their days (a flagged day they own is not reported again). A live anomaly
    keeps its days before the window and those in it still flagged; flagged days nobody owns join the
    nearest live anomaly or new group at most `gap` normal days away, else start a new group.
    """
    closed_days = {date.fromisoformat(d["day"]) for r in records if r.status in CLOSED for d in r.days}
    flagged_set = set(flagged) - closed_days
    owned: dict[int, list[date]] = {}
    for record in records:
        if record.status in CLOSED:
            continue
        days = [date.fromisoformat(d["day"]) for d in record.days]
        owned[record.pk] = sorted(d for d in days if d < window_start or d in flagged_set)
    taken = {d for days in owned.values() for d in days}
    groups: list[list[date]] = list(owned.values())
    group_ids: list[int | None] = list(owned)
    for day in sorted(flagged_set - taken):
        best, best_distance = None, None
        for i, days in enumerate(groups):
            if not days:
                continue
            distance = min(abs((day - d).days) for d in days) - 1
            if distance <= gap and (best_distance is None or distance < best_distance):
                best, best_distance = i, distance
        if best is None:
            groups.append([day])
            group_ids.append(None)
        else:
            groups[best] = sorted([*groups[best], day])
    existing = {gid: days for gid, days in zip(group_ids, groups, strict=True) if gid is not None}
    new = [days for gid, days in zip(group_ids, groups, strict=True) if gid is None]
    return existing, new


def _plans(series, evaluation, flags, windows, start: date, records_by_series) -> list[_Plan]:
    history = _history_days()
    gap = settings.ANOMALY_MERGE_GAP_DAYS
    flagged_rows: dict[int, list[int]] = defaultdict(list)
    for row, col in zip(*np.nonzero(flags), strict=True):
        flagged_rows[int(row)].append(int(col))
    row_of = {s.key: i for i, s in enumerate(series)}
    plans = []
    for key in sorted(set(records_by_series) | {series[r].key for r in flagged_rows}):
        row = row_of.get(key)
        records = records_by_series.get(key, [])
        account_id = key[1]
        window = windows.get(account_id)
        if window is None or (row is None and not records):
            continue
        # A series with no rows any more (e.g. a service no longer used) has no flagged day in its window.
        cols = flagged_rows.get(row, []) if row is not None else []
        day_of = {c: start + timedelta(days=history + c) for c in cols}
        existing, new_groups = anomaly_days_assign(
            flagged=list(day_of.values()),
            window_start=window.start,
            window_end=window.end,
            records=records,
            gap=gap,
        )
        stats = {day_of[c]: _day_stats(evaluation, row, c, day_of[c]) for c in cols}
        target = series[row] if row is not None else _Series(records[0].monitor, account_id, key[3], key[2])
        for record in records:
            if record.pk not in existing:
                continue
            old = {date.fromisoformat(d["day"]): d for d in record.days}
            days = {d: stats.get(d) or old[d] for d in existing[record.pk]}
            if not days:
                plans.append(_Plan(target, {}, record=record, auto_resolve=True))
            elif days != old:
                plans.append(_Plan(target, days, record=record))
        plans.extend(_Plan(target, {d: stats[d] for d in group}) for group in new_groups)
    return plans


def _totals(days: dict[date, dict]) -> dict:
    expected = sum((Decimal(d["expected"]) for d in days.values()), Decimal(0))
    actual = sum((Decimal(d["actual"]) for d in days.values()), Decimal(0))
    impact = actual - expected
    return {
        "start_day": min(days),
        "end_day": max(days),
        "day_count": len(days),
        "expected": expected,
        "actual": actual,
        "impact": impact,
        "impact_percent": (impact * 100 / expected).quantize(Decimal("0.01")) if expected > 0 else None,
        "score": max(d["score"] for d in days.values()),
        "days": [days[d] for d in sorted(days)],
    }


def _store(series, evaluation, flags, windows, start, matrix, days, *, now: datetime, result: AnomalyResult) -> None:
    monitor_ids = sorted({s.monitor.pk for s in series})
    oldest = min(w.start for w in windows.values()) - timedelta(days=settings.ANOMALY_MERGE_GAP_DAYS + 1)
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Two runs at once (a global one and an account's) would otherwise both create the same anomaly.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [STORE_LOCK])
        records_by_series: dict[tuple, list[Anomaly]] = defaultdict(list)
        # FOR UPDATE: a user's status change waits for this run, and this run sees the status it overwrites.
        for record in (
            Anomaly.objects.select_for_update(of=("self",))
            .select_related("monitor")
            .filter(monitor_id__in=monitor_ids, account_id__in=list(windows), end_day__gte=oldest)
        ):
            key = (record.monitor_id, record.account_id, record.dimension_value, record.currency)
            records_by_series[key].append(record)
        plans = _plans(series, evaluation, flags, windows, start, records_by_series)
        _root_causes_attach([p for p in plans if p.days], series, matrix, start, days)
        created, updated = [], []
        for plan in plans:
            if plan.auto_resolve:
                record = plan.record
                record.status_history = [
                    *record.status_history,
                    _history(record.status, AnomalyStatus.RESOLVED, None, now, AUTO_RESOLVED_NOTE),
                ]
                record.status = AnomalyStatus.RESOLVED
                record.status_note = AUTO_RESOLVED_NOTE
                record.status_changed_at = now
                record.status_changed_by = None
                updated.append(record)
                result.auto_resolved += 1
            elif plan.record is not None:
                for name, value in _totals(plan.days).items():
                    setattr(plan.record, name, value)
                plan.record.root_causes = plan.root_causes
                updated.append(plan.record)
                result.updated += 1
            else:
                s = plan.series
                created.append(
                    Anomaly(
                        monitor=s.monitor,
                        account_id=s.account_id,
                        dimension_value=s.value,
                        currency=s.currency,
                        root_causes=plan.root_causes,
                        detected_at=now,
                        **_totals(plan.days),
                    )
                )
        if updated:
            for record in updated:
                record.updated_at = now
            Anomaly.objects.bulk_update(
                updated,
                [
                    "start_day", "end_day", "day_count", "expected", "actual", "impact", "impact_percent", "score",
                    "days", "root_causes", "status", "status_note", "status_changed_at", "status_changed_by",
                    "status_history", "updated_at",
                ],
            )  # fmt: skip
        Anomaly.objects.bulk_create(created)
        result.created = len(created)


# --- root causes -------------------------------------------------------------------------------------------


def _root_causes_attach(
    plans: list[_Plan], series: list[_Series], matrix: np.ndarray, start: date, days: tuple
) -> None:
    """Fill plan.root_causes: the sub-dimensions whose own increase explains the anomaly, largest first.

    The sub-series are judged like the series (same columns), so they too are loaded on `days` only."""
    if not plans:
        return
    history = _history_days()
    n_days = matrix.shape[1]
    end = start + timedelta(days=n_days - 1)
    judged_from = start + timedelta(days=history)
    accounts = sorted({p.series.account_id for p in plans})
    daily = _fetch(
        """
        SELECT account_id, billing_currency, service_name, region_id, sub_account_id, day - %s::date,
               SUM(effective_cost)::float8
        FROM costs_app_costdailyrollup
        WHERE account_id = ANY(%s) AND (day BETWEEN %s AND %s OR day = ANY(%s::date[]))
        GROUP BY 1, 2, 3, 4, 5, 6
        """,
        [start, accounts, days[0], end, days[1]],
    )
    wanted_keys = set(CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True))
    tags = _fetch(
        """
        SELECT tag_key, account_id, billing_currency, tag_value, service_name, region_id, sub_account_id,
               day - %s::date, SUM(effective_cost)::float8
        FROM costs_app_costtagrollup
        WHERE tag_key = ANY(%s) AND account_id = ANY(%s) AND (day BETWEEN %s AND %s OR day = ANY(%s::date[]))
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        """,
        [start, sorted(wanted_keys), accounts, days[0], end, days[1]],
    )
    daily_facts = _facts_by_account(DAILY_FACTS, daily)
    tag_facts = _facts_by_account(TAG_FACTS, tags)

    rows: list[tuple[int, dict]] = []  # (plan index, {"dimension", "key"?, "value"})
    blocks: list[np.ndarray] = []
    day_cols: list[np.ndarray] = []
    for i, plan in enumerate(plans):
        s = plan.series
        cols = np.array(sorted((d - start).days for d in plan.days if judged_from <= d <= end), dtype=np.int64)
        day_cols.append(cols)
        if not len(cols):
            continue
        daily, tags = daily_facts.get(s.account_id), tag_facts.get(s.account_id)
        for meta, block in _candidate_series(s, daily, tags, n_days):
            rows.append((i, meta))
            blocks.append(block)
    contributions: dict[int, list[dict]] = defaultdict(list)
    if blocks:
        evaluation = detector.series_evaluate(
            np.vstack(blocks),
            first_column=history,
            baseline_days=settings.ANOMALY_BASELINE_DAYS,
            score_threshold=settings.ANOMALY_SCORE_THRESHOLD,
            min_impact=0.0,
            min_impact_percent=0.0,
            month_starts=_month_starts(start, n_days),
        )
        for r, (i, meta) in enumerate(rows):
            cols = day_cols[i] - history
            expected = float(evaluation.expected[r, cols].sum())
            actual = float(evaluation.actual[r, cols].sum())
            contributions[i].append({**meta, "expected": expected, "actual": actual})
    for i, found in _resource_contributions(plans, day_cols, start).items():
        contributions[i].extend(found)

    for i, plan in enumerate(plans):
        impact = sum(float(plan.days[d]["impact"]) for d in plan.days if judged_from <= d <= end)
        plan.root_causes = _ranked(contributions.get(i, []), impact)


def _facts_by_account(names: tuple[str, ...], columns: list[np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Rows of a facts query split per account, each a dict of columns (the per-anomaly filters stay small)."""
    if not columns:
        return {}
    order = np.argsort(columns[names.index("account")].astype(np.int64), kind="stable")
    facts = {name: column[order] for name, column in zip(names, columns, strict=True)}
    accounts, starts = np.unique(facts["account"].astype(np.int64), return_index=True)
    ends = [*starts[1:], len(order)]
    return {
        int(account): {name: column[start:end] for name, column in facts.items()}
        for account, start, end in zip(accounts, starts, ends, strict=True)
    }


def _sums(facts: dict, mine: np.ndarray, names: list[str], n_days: int):
    """The facts selected by `mine`, summed per value of the `names` columns and day."""
    keys = [facts[name][mine] for name in names]
    return _grouped(keys, facts["col"][mine].astype(np.int64), facts["cost"][mine].astype(np.float64), n_days)


def _candidate_series(s: _Series, daily: dict | None, tags: dict | None, n_days: int):
    """(description, daily spend) of each sub-series of `s` that could explain its anomaly (facts: its account's)."""
    dimension = s.monitor.dimension
    if dimension == AnomalyDimension.TAG:
        if tags is None:
            return
        mine = (tags["key"] == s.monitor.tag_key) & (tags["currency"] == s.currency) & (tags["value"] == s.value)
        for name in ("service", "region", "sub_account"):
            keys, matrix = _sums(tags, mine, [name], n_days)
            for (value,), row in zip(keys, matrix, strict=True):
                yield {"dimension": name, "value": value}, row
        return
    by_service = dimension == AnomalyDimension.SERVICE
    if daily is not None:
        mine = daily["currency"] == s.currency
        if by_service:
            mine &= daily["service"] == s.value
        for name in ("region", "sub_account") if by_service else ("service", "region", "sub_account"):
            keys, matrix = _sums(daily, mine, [name], n_days)
            for (value,), row in zip(keys, matrix, strict=True):
                yield {"dimension": name, "value": value}, row
    if tags is not None:
        mine = tags["currency"] == s.currency
        if by_service:
            mine &= tags["service"] == s.value
        keys, matrix = _sums(tags, mine, ["key", "value"], n_days)
        for (key, value), row in zip(keys, matrix, strict=True):
            yield {"dimension": "tag", "key": key, "value": value}, row


_RESOURCES_SQL = """
WITH a AS (
    SELECT * FROM unnest(%s::int[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::date[],
                         %s::date[], %s::int[])
        AS a(idx, account_id, currency, service, tag_key, tag_value, first_day, last_day, n_days)
),
d AS (SELECT * FROM unnest(%s::int[], %s::date[]) AS d(idx, day)),
spend AS (
    SELECT a.idx, l.resource_id, (l.charge_period_start AT TIME ZONE 'UTC')::date AS day,
           SUM(l.effective_cost) AS cost
    FROM a JOIN costs_app_costlineitem l
      ON l.account_id = a.account_id
     AND l.charge_period_start >= ((a.first_day - %s)::timestamp AT TIME ZONE 'UTC')
     AND l.charge_period_start < ((a.last_day + 1)::timestamp AT TIME ZONE 'UTC')
     -- the partition key's bound: billed in the charge's period or later; the reference week is within a month
     AND l.billing_period_start >= (
         SELECT (date_trunc('month', min(first_day)::timestamp) - interval '2 months') AT TIME ZONE 'UTC' FROM a)
    WHERE l.billing_currency = a.currency AND coalesce(l.resource_id, '') <> ''
      AND (a.service IS NULL OR coalesce(l.service_name, '') = a.service)
      AND (a.tag_key IS NULL OR coalesce(l.tags ->> a.tag_key, '') = a.tag_value)
    GROUP BY 1, 2, 3
),
per_resource AS (
    SELECT s.idx, s.resource_id,
           coalesce(SUM(s.cost) FILTER (WHERE d.day IS NOT NULL), 0) AS actual,
           coalesce(SUM(s.cost) FILTER (WHERE s.day < a.first_day), 0) / %s * a.n_days AS expected
    FROM spend s JOIN a USING (idx) LEFT JOIN d ON d.idx = s.idx AND d.day = s.day
    GROUP BY s.idx, s.resource_id, a.n_days
)
SELECT idx, resource_id, expected::float8, actual::float8 FROM (
    SELECT p.*, row_number() OVER (PARTITION BY idx ORDER BY actual - expected DESC) AS rank
    FROM per_resource p
) ranked
WHERE rank <= %s AND actual > expected
"""


def _resource_contributions(plans: list[_Plan], day_cols: list[np.ndarray], start: date) -> dict[int, list[dict]]:
    """Per plan, the resources that grew most on its days against their average day of the week before.

    One query for all anomalies; each reads only its account's lines of its days and the week before
    (the (account, ChargePeriodStart) index), never the whole history.
    """
    args = defaultdict(list)
    for i, (plan, cols) in enumerate(zip(plans, day_cols, strict=True)):
        if not len(cols):
            continue
        days = [start + timedelta(days=int(c)) for c in cols]
        s, monitor = plan.series, plan.series.monitor
        args["idx"].append(i)
        args["account"].append(s.account_id)
        args["currency"].append(s.currency)
        args["service"].append(s.value if monitor.dimension == AnomalyDimension.SERVICE else None)
        args["tag_key"].append(monitor.tag_key if monitor.dimension == AnomalyDimension.TAG else None)
        args["tag_value"].append(s.value if monitor.dimension == AnomalyDimension.TAG else None)
        args["first_day"].append(days[0])
        args["last_day"].append(days[-1])
        args["n_days"].append(len(days))
        args["day_idx"].extend([i] * len(days))
        args["days"].extend(days)
    if not args["idx"]:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            _RESOURCES_SQL,
            [
                args["idx"], args["account"], args["currency"], args["service"], args["tag_key"], args["tag_value"],
                args["first_day"], args["last_day"], args["n_days"], args["day_idx"], args["days"],
                RESOURCE_REFERENCE_DAYS, RESOURCE_REFERENCE_DAYS, ROOT_CAUSES_PER_DIMENSION,
            ],
        )  # fmt: skip
        rows = cursor.fetchall()
    found: dict[int, list[dict]] = defaultdict(list)
    for idx, resource_id, expected, actual in rows:
        found[idx].append({"dimension": "resource", "value": resource_id, "expected": expected, "actual": actual})
    return found


def _ranked(contributions: list[dict], impact: float) -> list[dict]:
    """The largest contributors per dimension (tags per key) that carry a real share of the impact."""
    if impact <= 0:
        return []
    by_dimension: dict[tuple, list[dict]] = defaultdict(list)
    for c in contributions:
        delta = c["actual"] - c["expected"]
        if delta > 0 and delta >= ROOT_CAUSE_MIN_SHARE * impact:
            by_dimension[(c["dimension"], c.get("key"))].append({**c, "impact": delta})
    causes = []
    for found in by_dimension.values():
        causes += sorted(found, key=lambda c: -c["impact"])[:ROOT_CAUSES_PER_DIMENSION]
    order = {"service": 0, "region": 1, "sub_account": 2, "tag": 3, "resource": 4}
    causes.sort(key=lambda c: (-round(c["impact"], 6), order[c["dimension"]], c.get("key") or "", c["value"]))
    return [
        {
            "dimension": c["dimension"],
            **({"key": c["key"]} if c["dimension"] == "tag" else {}),
            "value": c["value"],
            "expected": str(_money(c["expected"])),
            "actual": str(_money(c["actual"])),
            "impact": str(_money(c["impact"])),
            "share": round(c["impact"] / impact, 3),
        }
        for c in causes
    ]


# --- notifications ------------------------------------------------------------------------------------------


def _describe(anomaly: Anomaly) -> tuple[str, str, dict]:
    percent = f" (+{anomaly.impact_percent}%)" if anomaly.impact_percent is not None else ""
    span = (
        str(anomaly.start_day)
        if anomaly.start_day == anomaly.end_day
        else f"{anomaly.start_day} to {anomaly.end_day} ({anomaly.day_count} days)"
    )
    subject = (
        f"[FinOps] cost anomaly: {anomaly.account.name} {anomaly.series_label} "
        f"+{anomaly.impact:.2f} {anomaly.currency}{percent}"
    )
    causes = [
        f"  - {c['dimension']}{'/' + c['key'] if c.get('key') else ''} {c['value'] or '(none)'}: "
        f"+{Decimal(c['impact']):.2f} ({c['share']:.0%})"
        for c in anomaly.root_causes[:5]
    ]
    text = "\n".join(
        [
            f"Monitor: {anomaly.monitor.name} ({anomaly.monitor.dimension_label})",
            f"Account: {anomaly.account.name}",
            f"Series: {anomaly.series_label}",
            f"Days: {span}",
            f"Expected {anomaly.expected:.2f}, actual {anomaly.actual:.2f} {anomaly.currency}: "
            f"impact +{anomaly.impact:.2f}{percent}, score {anomaly.score:.1f}",
            *(["Root causes:", *causes] if causes else []),
        ]
    )
    payload = {
        "event": "cost_anomaly",
        "anomaly_id": anomaly.pk,
        "monitor": anomaly.monitor.name,
        "dimension": anomaly.monitor.dimension,
        "tag_key": anomaly.monitor.tag_key,
        "account": anomaly.account.name,
        "account_id": anomaly.account_id,
        "dimension_value": anomaly.dimension_value,
        "currency": anomaly.currency,
        "start_day": anomaly.start_day,
        "end_day": anomaly.end_day,
        "expected": anomaly.expected,
        "actual": anomaly.actual,
        "impact": anomaly.impact,
        "impact_percent": anomaly.impact_percent,
        "score": anomaly.score,
        "root_causes": anomaly.root_causes,
    }
    return subject, text, payload


def _notify_pending(*, account_id: int | None, now: datetime, result: AnomalyResult) -> None:
    """Send open anomalies not yet delivered to every active channel of their monitor (new ones, retries)."""
    pending = (
        Anomaly.objects.filter(
            status=AnomalyStatus.OPEN,
            notified_at__isnull=True,
            notification_attempts__lt=NOTIFY_MAX_ATTEMPTS,
            # Only recent ones: a channel added to a monitor later is not flooded with its old anomalies.
            detected_at__gte=now - NOTIFY_WITHIN,
            monitor__channels__is_active=True,
        )
        .select_related("monitor", "account")
        .prefetch_related("monitor__channels")
        .distinct()
        .order_by("pk")
    )
    if account_id is not None:
        pending = pending.filter(account_id=account_id)
    for anomaly in pending:
        channels = [c for c in anomaly.monitor.channels.all() if c.is_active and c.pk not in anomaly.notified_channels]
        subject, text, payload = _describe(anomaly)
        errors = []
        delivered = list(anomaly.notified_channels)
        for channel in channels:
            failed = channels_notify(channels=[channel], subject=subject, text=text, payload=payload)
            if failed:
                errors += failed
            else:
                delivered.append(channel.pk)
        changes = {
            "notified_channels": delivered,
            "notification_attempts": anomaly.notification_attempts + 1,
            "notification_errors": [
                *anomaly.notification_errors,
                *({"at": now.isoformat(), "error": error} for error in errors),
            ],
        }
        if not errors:
            changes["notified_at"] = now
            result.notified += 1
        else:
            result.notification_failures += 1
        # Only the delivery columns: a status change made meanwhile is not overwritten.
        Anomaly.objects.filter(pk=anomaly.pk).update(**changes)


# --- status lifecycle --------------------------------------------------------------------------------------


def _history(old: str, new: str, user, now: datetime, note: str) -> dict:
    return {
        "from": str(old),
        "to": str(new),
        "by": user.get_username() if user is not None else None,
        "by_id": user.pk if user is not None else None,
        "at": now.isoformat(),
        "note": note,
    }


def anomaly_status_set(*, anomaly_id: int, status: str, user, note: str = "", now: datetime | None = None) -> Anomaly:
    """Move one anomaly along open → acknowledged → resolved / false positive, recording who, when and why."""
    now = now or timezone.now()
    with transaction.atomic():
        anomaly = Anomaly.objects.select_for_update().get(pk=anomaly_id)
        allowed = TRANSITIONS.get(anomaly.status, set())
        if status not in allowed:
            if anomaly.status in CLOSED:
                raise AnomalyStatusError(
                    f"anomaly {anomaly.pk} is {anomaly.get_status_display().lower()}: a closed anomaly does not "
                    "change again; if the spend comes back, a new anomaly is recorded"
                )
            raise AnomalyStatusError(
                f"anomaly {anomaly.pk} cannot go from {anomaly.status} to {status}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        note = note.strip()
        anomaly.status_history = [*anomaly.status_history, _history(anomaly.status, status, user, now, note)]
        anomaly.status = status
        anomaly.status_note = note
        anomaly.status_changed_at = now
        anomaly.status_changed_by = user
        anomaly.save(
            update_fields=[
                "status", "status_note", "status_changed_at", "status_changed_by", "status_history", "updated_at",
            ]
        )  # fmt: skip
    return anomaly


def anomalies_status_set(*, anomaly_ids: list[int], status: str, user, note: str = "") -> tuple[int, list[str]]:
    """The same for several anomalies (admin action); returns (changed, refusals), each refusal says why."""
    changed, refused = 0, []
    for anomaly_id in anomaly_ids:
        try:
            anomaly_status_set(anomaly_id=anomaly_id, status=status, user=user, note=note)
            changed += 1
        except AnomalyStatusError as exc:
            refused.append(str(exc))
    return changed, refused


# --- monitors ----------------------------------------------------------------------------------------------


def tag_dimension_activate(*, key: str) -> int:
    """Make `key` an active cost allocation tag; a newly active key's rollups are backfilled. Returns rows written."""
    tag, created = CostAllocationTag.objects.get_or_create(key=key, defaults={"is_active": True})
    if not created and tag.is_active:
        return 0
    if not tag.is_active:
        tag.is_active = True
        tag.save(update_fields=["is_active"])
    return tag_rollups_rebuild(keys=[key])


@transaction.atomic
def anomaly_monitor_save(*, monitor: AnomalyMonitor, channels=None) -> AnomalyMonitor:
    """Validate and save a monitor; a tag monitor activates its key and backfills that key's rollups."""
    monitor.tag_key = (monitor.tag_key or "").strip()
    if monitor.dimension == AnomalyDimension.TAG and not monitor.tag_key:
        raise AnomalyMonitorError("a tag monitor needs the tag key whose values are its series")
    if monitor.dimension != AnomalyDimension.TAG and monitor.tag_key:
        raise AnomalyMonitorError(f"a tag key only goes with the tag dimension, not with {monitor.dimension!r}")
    if monitor.min_impact is None or monitor.min_impact < 0:
        raise AnomalyMonitorError("the absolute impact floor is zero or more")
    if monitor.min_impact_percent is None or monitor.min_impact_percent < 0:
        raise AnomalyMonitorError("the percentage impact floor is zero or more")
    monitor.save()
    if channels is not None:
        monitor.channels.set(channels)
    if monitor.dimension == AnomalyDimension.TAG and monitor.is_active:
        written = tag_dimension_activate(key=monitor.tag_key)
        if written:
            logger.info("tag %r activated for monitor %s: %d rollup rows backfilled", monitor.tag_key, monitor, written)
    return monitor
