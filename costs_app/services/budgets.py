"""Budget monitoring: actual and forecasted spend per budget period, alerts created once, delivered with retries.

What one run (`budgets_check`) does, in a fixed number of SQL statements whatever the number of budgets:

1. Loads the active budgets (with their accounts and channels) and makes every tag key a budget filters
   on an active cost allocation tag; a key activated now has its tag rollups backfilled first.
2. Finds the periods to evaluate: the calendar month, quarter or year containing today (UTC), or the
   budget's fixed date range; plus the period that ended fewer than BUDGET_LATE_DATA_DAYS ago, because
   cost data arrives late (only its actual spend counts: it is over, so its forecast is its actual).
3. Sums the spend of every budget × period in ONE aggregate query over the daily rollups
   (CostDailyRollup; CostTagRollup for budgets with a tag filter), never over raw cost lines. A budget's
   scope is expanded to the combinations of its filter values (accounts × sub-accounts × services ×
   regions × tag values; an empty filter is a wildcard) and joined by equality to the rollups grouped by
   exactly the filtered dimensions (GROUPING SETS), so the join is a hash join, not a scan per budget.
   Days far from today are first summed into segments between the period boundaries; the last
   BUDGET_FORECAST_LOOKBACK_DAYS days stay daily for the forecast. A whole month of a segment is read from the
   monthly rollups (CostMonthRollup, CostTagMonthRollup: kept equal to the days by triggers), so a year's
   budget reads its closed months as one row per combination each, not day by day.
4. Forecasts each open period (below) and creates the alerts of the thresholds reached, with one
   `INSERT ... ON CONFLICT DO NOTHING` against the unique constraint budget × period × basis × type ×
   threshold: an alert exists once, however often or concurrently the check runs, and records the
   spend, forecast and percentages of the moment it was created.
5. Creates one AlertDelivery per new alert × active channel of its budget, resolves the alerts of periods
   that are over, and sends what is due (`budget_alerts_deliver`).

Spend is FOCUS BilledCost in the budget's currency (other currencies are not converted, they do not count).

The forecast (the period-end projection, AWS Budgets' FORECASTED spend):

    forecast = actual spend to date + Σ over the days left in the period of  max(0, level × weekday factor)

- actual spend to date = every rollup day of the period (days dated after today included, if any).
- The data day (`as_of`) is the latest day with cost data among the budget's accounts (all accounts for
  a budget without an account filter); normally yesterday or today. Days after it are not known yet, so
  they are projected, even those already past (cost data lags by a day or two).
- weekday factor = the median spend on that weekday ÷ the mean of the seven weekday medians, over the last
  BUDGET_FORECAST_LOOKBACK_DAYS days (28: four of each weekday; medians, so a month-start charge or a refund
  does not bend its weekday). Used only when the data covers at least 14 days (two of each weekday);
  otherwise every factor is 1, a flat run rate. Weekends of a workload that sleeps on Saturday and Sunday
  are then projected low, not at the weekday rate.
- level = the mean of the last 7 days up to `as_of`, each divided by its weekday factor, without the highest
  and the lowest (fewer days, none left out, when there is less data; days of factor 0 say nothing).
- The window may reach back before the period start: on the 2nd of the month the run rate comes from
  last month's days, not from one day of this month.
- Too little data: with fewer than BUDGET_FORECAST_MIN_DAYS days of data (a new account), or no data in
  the lookback window, there is no forecast and FORECASTED thresholds are not evaluated.
- A day of data is a calendar day from the first day the budget's accounts have data in the window to
  `as_of`; a day without rollup rows in between counts as zero spend.

The 80 % prediction interval (`forecast_low`, `forecast_high`; AWS Budgets shows one too) treats the window's
daily spend divided by the weekday factors as a local level: each day is the level plus noise (variance s²),
and the level wanders (variance q a day). The variance of differences y[i + L] − y[i] is 2 s² + L q: a
least-squares line through lags 1 … 14 gives both (each variance without the largest tenth of the squared
differences, so a month-start charge or a refund does not count). The variance of the spend still to come
adds, weighted by the weekday factors of the days left: their noise; the level's error (LEVEL_NOISE_SHARE × s²,
the variance of a trimmed mean of 7 days, and its lag behind the wander); the wander up to each day left; and
a trend the run rate does not follow (the slope between the window's halves, carried from the level's centre
to each day left, counted as one more error of its size). Interval = forecast ± 1.2816 × its standard
deviation (a normal 80 % interval), never below the spend to date. bench/forecast.py measures MAPE and coverage
(README there). FORECASTED thresholds compare the point forecast — the centre of the interval — with the
threshold, as AWS Budgets compares its forecast; the alert records the interval with it.
"""

import itertools
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Count

from costs_app.models import (
    CENT,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    CostAllocationTag,
    CostDailyRollup,
    CostMonthRollup,
    CostTagMonthRollup,
    CostTagRollup,
    DeliveryStatus,
    NotificationChannel,
    SpendBasis,
    Threshold,
    budget_dates_problems,
    plain,
)

from .ingest import cost_allocation_tags_activate
from .notifications import channel_send, error_is_retryable, error_text

logger = logging.getLogger(__name__)

_MONTHS_PER_PERIOD = {BudgetPeriod.MONTHLY: 1, BudgetPeriod.QUARTERLY: 3, BudgetPeriod.ANNUAL: 12}
DIMENSIONS = ("account_id", "sub_account_id", "service_name", "region_id")
ALL_UNFILTERED = (1 << len(DIMENSIONS)) - 1
# Weekday factors need every weekday seen at least twice.
WEEKDAY_PATTERN_MIN_DAYS = 14
# A normal 80 % two-sided interval: ± this many standard deviations.
INTERVAL_Z = 1.2815515655446004
# Share of the largest squared day-to-day differences left out of the variance (one-off charges, refunds), and
# the variance of a normal variable that this trimming keeps (E[z² | |z| < 1.645] × 0.9 ÷ 0.9).
VARIANCE_TRIM = 0.1
TRIMMED_NORMAL_VARIANCE = 0.6231
# Variance of the level (a trimmed mean of the last 7 days) per unit of daily noise variance: 1/7 for a mean of 7.
LEVEL_NOISE_SHARE = 1 / 7
# Lags whose difference variances the noise and the wander are read from.
MAX_LAG = 14
RECENT_DAYS = 7
ONE_DAY = timedelta(days=1)


@dataclass
class BudgetCheckResult:
    budgets_checked: int = 0
    periods_checked: int = 0
    invalid_budgets: int = 0
    invalid_budget_ids: list[int] = field(default_factory=list)  # skipped, named in the log with the reason
    alerts_created: int = 0
    alerts_resolved: int = 0
    over_budget: int = 0
    forecast_over_budget: int = 0
    tag_keys_activated: list[str] = field(default_factory=list)
    notifications_sent: int = 0
    notification_errors: int = 0
    deliveries_failed: int = 0
    deliveries_pending: int = 0
    next_delivery_at: datetime | None = None

    def as_dict(self) -> dict:
        return {
            "budgets_checked": self.budgets_checked,
            "periods_checked": self.periods_checked,
            "invalid_budgets": self.invalid_budgets,
            "invalid_budget_ids": list(self.invalid_budget_ids),
            "alerts_created": self.alerts_created,
            "alerts_resolved": self.alerts_resolved,
            "over_budget": self.over_budget,
            "forecast_over_budget": self.forecast_over_budget,
            "tag_keys_activated": list(self.tag_keys_activated),
            "notifications_sent": self.notifications_sent,
            "notification_errors": self.notification_errors,
            "deliveries_failed": self.deliveries_failed,
            "deliveries_pending": self.deliveries_pending,
            "next_delivery_at": self.next_delivery_at.isoformat() if self.next_delivery_at else None,
        }


# --- Periods ---


def period_bounds(period: str, today: date) -> tuple[date, date]:
    """[start, end) of the calendar month, quarter or year containing `today`."""
    months = _MONTHS_PER_PERIOD[BudgetPeriod(period)]
    start_month = ((today.month - 1) // months) * months + 1
    start = date(today.year, start_month, 1)
    end_month_index = start.month - 1 + months
    end = date(start.year + end_month_index // 12, end_month_index % 12 + 1, 1)
    return start, end


def budget_periods(budget: Budget, today: date, *, late_days: int) -> list[tuple[date, date]]:
    """The [start, end) periods of `budget` checked today: the current one, and the previous one while late
    data may still arrive for it (it ended fewer than `late_days` days ago)."""
    if budget.period == BudgetPeriod.CUSTOM:
        if budget.start_date is None or budget.end_date is None:
            return []
        start, end = budget.start_date, budget.end_date + ONE_DAY
        return [(start, end)] if start <= today < end + timedelta(days=late_days) else []
    current = period_bounds(budget.period, today)
    previous = period_bounds(budget.period, current[0] - ONE_DAY)
    return [previous, current] if today < previous[1] + timedelta(days=late_days) else [current]


def _days_per_weekday(first: date, last: date) -> list[int]:
    """How many Mondays, Tuesdays, ... Sundays [first, last] holds (index 0 = Monday)."""
    days = (last - first).days + 1
    if days <= 0:
        return [0] * 7
    counts = [days // 7] * 7
    for offset in range(days % 7):
        counts[(first.weekday() + offset) % 7] += 1
    return counts


# --- Spend and forecast ---


@dataclass
class PeriodSpend:
    """One budget × period: its actual spend so far and its forecast (None: not enough data)."""

    budget: Budget
    period_start: date
    period_end: date  # exclusive
    actual: Decimal = Decimal(0)
    forecast: Decimal | None = None
    forecast_low: Decimal | None = None  # the 80 % prediction interval of the forecast
    forecast_high: Decimal | None = None
    as_of: date | None = None
    window_start: date | None = None
    daily: list[Decimal] = field(default_factory=list)  # spend of each day window_start .. as_of

    @property
    def last_day(self) -> date:
        return self.period_end - ONE_DAY

    def percent_of_budget(self, value: Decimal | None) -> Decimal | None:
        if value is None or self.budget.amount <= 0:  # the model forbids 0; a raw insert must not crash the run
            return None
        return (value * 100 / self.budget.amount).quantize(CENT, rounding=ROUND_HALF_UP)

    @property
    def percentage(self) -> Decimal:
        return self.percent_of_budget(self.actual) or Decimal(0)


@dataclass(frozen=True)
class Forecast:
    """The period-end projection and its 80 % prediction interval."""

    point: Decimal
    low: Decimal
    high: Decimal


def period_forecast(
    *,
    actual: Decimal,
    daily: list[Decimal],
    window_start: date,
    period_start: date,
    period_end: date,
    min_days: int,
) -> Forecast | None:
    """The projection described in the module docstring from the daily spend window_start .. as_of; None with
    too little data. period_end is exclusive."""
    observed = len(daily)
    if observed < min_days or not observed:
        return None
    as_of = window_start + timedelta(days=observed - 1)
    first_left = max(as_of + ONE_DAY, period_start)
    last_day = period_end - ONE_DAY
    if first_left > last_day:
        return Forecast(actual, actual, actual)  # the period is over (for its data): nothing left to project
    factors = [Decimal(1)] * 7
    if observed >= WEEKDAY_PATTERN_MIN_DAYS:
        by_weekday = [[] for _ in range(7)]
        for offset, value in enumerate(daily):
            by_weekday[(window_start.weekday() + offset) % 7].append(value)
        means = [_median(values) for values in by_weekday]
        mean_of_means = sum(means) / 7
        if mean_of_means > 0:
            factors = [mean / mean_of_means for mean in means]
    recent = daily[-RECENT_DAYS:]
    level = _level(recent, factors, as_of)
    left = _days_per_weekday(first_left, last_day)
    projected = sum((max(level * factor, Decimal(0)) * days for factor, days in zip(factors, left, strict=True)),
                    Decimal(0))  # fmt: skip
    point = actual + projected
    ahead = [
        float(factors[(first_left + timedelta(days=h)).weekday()]) for h in range((last_day - first_left).days + 1)
    ]
    sd = _remaining_sd(daily, [float(f) for f in factors], window_start, ahead, len(recent))
    half = Decimal(repr(INTERVAL_Z * sd))
    return Forecast(point, max(actual, point - half), point + half)


def _median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


def _level(recent: list[Decimal], factors: list[Decimal], as_of: date) -> Decimal:
    """Mean spend of a day of weekday factor 1 over the recent days: each day divided by its weekday's factor,
    the highest and the lowest left out (a month-start charge or a refund is not a run rate) once there are
    seven. Days of factor 0 (a weekday without spend) say nothing of the level."""
    first = as_of - timedelta(days=len(recent) - 1)
    values = sorted(
        value / factors[(first + timedelta(days=i)).weekday()]
        for i, value in enumerate(recent)
        if factors[(first + timedelta(days=i)).weekday()] > 0
    )
    if len(values) >= RECENT_DAYS:
        values = values[1:-1]
    return sum(values, Decimal(0)) / len(values) if values else Decimal(0)


def _trimmed_variance(differences: list[float]) -> float:
    if not differences:
        return 0.0
    squares = sorted(d * d for d in differences)
    keep = squares[: max(1, len(squares) - max(1, round(VARIANCE_TRIM * len(squares))))]
    return sum(keep) / len(keep) / TRIMMED_NORMAL_VARIANCE


def _remaining_sd(
    daily: list[Decimal], factors: list[float], window_start: date, ahead: list[float], recent: int
) -> float:
    """Standard deviation of the spend of the days left (their weekday factors `ahead`), local-level model."""
    start = window_start.weekday()
    level = [
        float(value) / factors[(start + i) % 7] if factors[(start + i) % 7] > 0 else None
        for i, value in enumerate(daily)
    ]

    def lagged(lag: int) -> list[float]:
        return [b - a for a, b in zip(level, level[lag:], strict=False) if a is not None and b is not None]

    # Var(y[i + L] − y[i]) = 2 s² + L q: a least-squares line through the lags 1 .. 14 (those the window has).
    lags = [lag for lag in range(1, MAX_LAG + 1) if len(lagged(lag)) >= 5]
    if len(lags) >= 2:
        variances = [_trimmed_variance(lagged(lag)) for lag in lags]
        mean_lag, mean_var = sum(lags) / len(lags), sum(variances) / len(variances)
        slope = sum((x - mean_lag) * (v - mean_var) for x, v in zip(lags, variances, strict=True)) / sum(
            (x - mean_lag) ** 2 for x in lags
        )
        wander = max(0.0, slope)
        noise = max(0.0, (mean_var - slope * mean_lag) / 2) if slope > 0 else mean_var / 2
    else:
        wander, noise = 0.0, _trimmed_variance(lagged(1)) / 2
    total = sum(ahead)
    variance = noise * sum(g * g for g in ahead)
    # The level is a mean of `recent` days: their noise, and their lag behind a wandering level.
    variance += (noise * LEVEL_NOISE_SHARE + wander * (recent - 1) * (2 * recent - 1) / (6 * recent)) * total * total
    # A trend the point forecast does not follow: the slope between the window's two halves, carried from the
    # level's centre (about recent / 2 days back) to each day left, counts as one more error of its size.
    known = [y for y in level if y is not None]
    half = len(known) // 2
    if half >= RECENT_DAYS:
        slope = (sum(known[-half:]) / half - sum(known[:half]) / half) / (len(known) - half)
        drift = slope * sum((recent / 2 + h + 1) * g for h, g in enumerate(ahead))
        variance += drift * drift
    remaining = total
    for g in ahead:  # the level wanders from as_of up to each day left
        variance += wander * remaining * remaining
        remaining -= g
    return variance**0.5


def spend_forecast(spend: PeriodSpend, *, min_days: int) -> Forecast | None:
    """The forecast of one budget period from its loaded spend; None with too little data."""
    if spend.as_of is None or spend.window_start is None:
        return None
    return period_forecast(
        actual=spend.actual,
        daily=spend.daily,
        window_start=spend.window_start,
        period_start=spend.period_start,
        period_end=spend.period_end,
        min_days=min_days,
    )


# The spend of every budget × period in one statement. `ev` holds the periods, `tu` the budgets' scopes
# expanded to equality tuples (0 / '' where a dimension is not filtered: `mask` has a 1 bit for each such
# dimension, in GROUPING()'s order), `buckets` maps each day to its bucket: itself in the daily zone (the
# forecast window), else the start of the segment between period boundaries that holds it.
_SPEND_SQL = """
WITH ev AS (
    SELECT * FROM jsonb_to_recordset(%(ev)s::jsonb)
        AS ev(eval_id int, budget_id bigint, currency text, lo date, actual_from date, actual_to date,
              window_from date, as_of date)
), tu AS (
    SELECT * FROM jsonb_to_recordset(%(tu)s::jsonb)
        AS tu(budget_id bigint, mask int, account_id bigint, sub_account_id text, service_name text, region_id text,
              tag_key text, tag_value text)
), buckets AS (
    SELECT d::date AS day,
           CASE WHEN d BETWEEN %(daily_from)s::date AND %(daily_to)s::date THEN d::date
                ELSE (SELECT max(p) FROM unnest(%(breaks)s::date[]) AS p WHERE p <= d) END AS bucket
    FROM generate_series(%(span_from)s::date, %(span_to)s::date, interval '1 day') AS d
), data AS (
    {data}
)
SELECT e.eval_id,
       SUM(d.cost) FILTER (WHERE d.bucket BETWEEN e.actual_from AND e.actual_to),
       {days}
FROM ev e
JOIN tu t ON t.budget_id = e.budget_id
LEFT JOIN data d
       ON d.mask = t.mask AND d.currency = e.currency AND d.account_id = t.account_id
      AND d.sub_account_id = t.sub_account_id AND d.service_name = t.service_name AND d.region_id = t.region_id
      AND d.tag_key = t.tag_key AND d.tag_value = t.tag_value
      AND d.bucket >= e.lo AND d.bucket <= e.actual_to
GROUP BY e.eval_id
"""

# A whole month outside the forecast window with no period boundary inside it falls in one bucket: its rows come
# from the monthly rollups (dated on the month's first day, which maps to that bucket), the other days from the daily
# ones. A year's budget reads 12 rows per combination for its closed months, not 365.
_DATA_SQL = """
    SELECT {mask} AS mask, {columns}, {tag_columns}, r.billing_currency AS currency, b.bucket,
           SUM(r.billed_cost) AS cost
    FROM (
        SELECT {source_columns}, r.day FROM {table} r
        WHERE ({daily_days}) AND r.billing_currency = ANY(%(currencies)s) {tag_filter}
        UNION ALL
        SELECT {source_columns}, r.month AS day FROM {month_table} r
        WHERE r.month = ANY(%(months)s::date[]) AND r.billing_currency = ANY(%(currencies)s) {tag_filter}
    ) r JOIN buckets b ON b.day = r.day
    GROUP BY r.billing_currency, b.bucket, {tag_select} GROUPING SETS ({sets})
"""

# The spend of the n-th day before as_of, inside the forecast window (one column per day of the lookback).
_DAY_SQL = "SUM(d.cost) FILTER (WHERE d.bucket = e.as_of - {n} AND d.bucket >= e.window_from)"


def _bit(index: int) -> int:
    return 1 << (len(DIMENSIONS) - 1 - index)


def _source_sql(masks: set[int], *, tags: bool, daily_days: str) -> str:
    """The rollups of one table grouped by exactly the dimensions each budget shape filters on."""
    sets = []
    for mask in sorted(masks):
        columns = [f"r.{dim}" for i, dim in enumerate(DIMENSIONS) if not mask & _bit(i)]
        sets.append(f"({', '.join(columns)})")
    # GROUPING() and the column itself are only allowed for columns some set groups by; the others are
    # constant: never grouped (bit 1) and the wildcard value.
    used = [any(not mask & _bit(i) for mask in masks) for i in range(len(DIMENSIONS))]
    mask_sql = " + ".join(
        f"GROUPING(r.{dim}) * {_bit(i)}" if used[i] else str(_bit(i)) for i, dim in enumerate(DIMENSIONS)
    )
    wildcards = [("0" if dim == "account_id" else "''") for dim in DIMENSIONS]
    columns = ", ".join(
        f"COALESCE(r.{dim}, {wildcards[i]}) AS {dim}" if used[i] else f"{wildcards[i]} AS {dim}"
        for i, dim in enumerate(DIMENSIONS)
    )
    return _DATA_SQL.format(
        mask=mask_sql,
        columns=columns,
        tag_columns="r.tag_key, r.tag_value" if tags else "''::text AS tag_key, ''::text AS tag_value",
        table=(CostTagRollup if tags else CostDailyRollup)._meta.db_table,
        month_table=(CostTagMonthRollup if tags else CostMonthRollup)._meta.db_table,
        source_columns=", ".join(
            f"r.{column}"
            for column in (*DIMENSIONS, "billing_currency", "billed_cost", *(("tag_key", "tag_value") if tags else ()))
        ),
        daily_days=daily_days,
        tag_filter="AND r.tag_key = ANY(%(tag_keys)s) AND r.tag_value = ANY(%(tag_values)s)" if tags else "",
        tag_select="r.tag_key, r.tag_value," if tags else "",
        sets=", ".join(sets),
    )


def _data_sql(plain_masks: set[int], tag_masks: set[int], *, daily_days: str) -> str:
    parts = []
    if plain_masks:
        parts.append(_source_sql(plain_masks, tags=False, daily_days=daily_days))
    if tag_masks:
        parts.append(_source_sql(tag_masks, tags=True, daily_days=daily_days))
    return "\n    UNION ALL\n".join(parts)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def whole_months(
    span_from: date, span_to: date, *, daily_from: date, daily_to: date, breaks: list[date]
) -> tuple[list[date], list[tuple[date, date]]]:
    """The months of [span_from, span_to] read from the monthly rollups, and the day ranges read from the daily ones.

    A month is read whole when it lies inside the span, outside the daily zone [daily_from, daily_to] (the forecast
    windows, summed day by day), and no bucket starts inside it (a period boundary on its first day is fine): its
    days would all be summed into one bucket anyway. Every other day of the span is read day by day.
    """
    months: list[date] = []
    month = span_from.replace(day=1)
    while month <= span_to:
        last = _next_month(month) - ONE_DAY
        inside = span_from <= month and last <= span_to
        outside_daily = last < daily_from or month > daily_to
        if inside and outside_daily and not any(month < b <= last for b in breaks):
            months.append(month)
        month = _next_month(month)
    ranges: list[tuple[date, date]] = []
    start = span_from
    for month in months:
        if start < month:
            ranges.append((start, month - ONE_DAY))
        start = _next_month(month)
    if start <= span_to:
        ranges.append((start, span_to))
    return months, ranges


def _scope_tuples(budget: Budget, account_ids: list[int]) -> tuple[int, list[tuple]]:
    """The budget's scope as (mask, [(account, sub-account, service, region, tag key, tag value)]).

    Values of one filter are OR-ed and filters AND-ed, so the scope is the cross product of the filter
    values; the combinations are disjoint, so summing their spend counts every cost once.
    """
    filters = (account_ids, budget.sub_account_ids, budget.service_names, budget.region_ids)
    mask = sum(1 << (len(DIMENSIONS) - 1 - i) for i, values in enumerate(filters) if not values)
    tag_values = budget.tag_values if budget.tag_key else [""]
    product = itertools.product(
        account_ids or [0],
        budget.sub_account_ids or [""],
        budget.service_names or [""],
        budget.region_ids or [""],
        tag_values,
    )
    return mask, [(*combo[:4], budget.tag_key, combo[4]) for combo in product]


def _data_days(today: date, lookback: int) -> tuple[dict, tuple | None]:
    """Per account, and for all accounts together: (first, last) day with cost data around today.

    Days up to `lookback` ahead count too: data dated a little in the future (a recurring fee posted for the
    month, the demo moved to this month) is data the forecast must not project a second time; a stray row
    dated years ahead does not stop the forecast.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT account_id, MIN(day), MAX(day) FROM {CostDailyRollup._meta.db_table} "  # noqa: S608
            "WHERE day BETWEEN %s AND %s GROUP BY account_id",
            [today - timedelta(days=2 * lookback), today + timedelta(days=lookback)],
        )
        per_account = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    overall = (
        (min(first for first, _ in per_account.values()), max(last for _, last in per_account.values()))
        if per_account
        else None
    )
    return per_account, overall


def budget_accounts(budget_ids: list[int], *, field: str) -> dict[int, list]:
    """Per budget, its accounts' ids (field="cloudaccount_id") or names ("cloudaccount__name"), sorted; one query.

    Plain values, not CloudAccount objects: thousands of budgets need no model instances for this.
    """
    scoped: dict[int, list] = {budget_id: [] for budget_id in budget_ids}
    rows = Budget.accounts.through.objects.filter(budget_id__in=budget_ids).values_list("budget_id", field)
    for budget_id, value in rows.order_by(field):
        scoped[budget_id].append(value)
    return scoped


def budgets_spend(budgets: list[Budget], *, today: date) -> list[PeriodSpend]:
    """Actual spend and forecast of every budget's periods checked today, in two queries whatever their number."""
    lookback = settings.BUDGET_FORECAST_LOOKBACK_DAYS
    periods = [
        PeriodSpend(budget=budget, period_start=start, period_end=end)
        for budget in budgets
        for start, end in budget_periods(budget, today, late_days=settings.BUDGET_LATE_DATA_DAYS)
    ]
    if not periods:
        return []
    per_account, overall = _data_days(today, lookback)
    accounts = budget_accounts([budget.id for budget in budgets], field="cloudaccount_id")
    for spend in periods:
        scoped = accounts[spend.budget.id]
        days = [per_account[a] for a in scoped if a in per_account] if scoped else [overall] if overall else []
        as_of = max((last for _, last in days), default=None)
        if as_of is None or as_of < today - timedelta(days=lookback - 1):
            continue  # no recent data: no forecast
        spend.as_of = as_of
        spend.window_start = max(as_of - timedelta(days=lookback - 1), min(first for first, _ in days))
    _spend_sum(periods, accounts, lookback=lookback)
    for spend in periods:
        forecast = spend_forecast(spend, min_days=settings.BUDGET_FORECAST_MIN_DAYS)
        if forecast is not None:
            spend.forecast, spend.forecast_low, spend.forecast_high = forecast.point, forecast.low, forecast.high
    return periods


def _json(rows: list[dict]) -> str:
    """Rows for jsonb_to_recordset: one parameter, however many rows (Decimals as exact strings, dates ISO)."""
    return json.dumps(rows, cls=DjangoJSONEncoder, separators=(",", ":"))


def _spend_sum(periods: list[PeriodSpend], accounts: dict[int, list[int]], *, lookback: int) -> None:
    """Fill the actual spend and the daily spend of the forecast window of `periods` from the rollups, in one
    statement."""
    ev = [
        {
            "eval_id": index,
            "budget_id": spend.budget.id,
            "currency": spend.budget.currency,
            "lo": min(spend.period_start, spend.window_start or spend.period_start),
            "actual_from": spend.period_start,
            "actual_to": spend.last_day,
            "window_from": spend.window_start,
            "as_of": spend.as_of,
        }
        for index, spend in enumerate(periods)
    ]
    tu = []
    plain_masks, tag_masks, tag_keys, tag_values = set(), set(), set(), set()
    for budget in {spend.budget.id: spend.budget for spend in periods}.values():
        mask, tuples = _scope_tuples(budget, accounts[budget.id])
        (tag_masks if budget.tag_key else plain_masks).add(mask)
        if budget.tag_key:
            tag_keys.add(budget.tag_key)
            tag_values.update(budget.tag_values)
        tu.extend(
            {
                "budget_id": budget.id,
                "mask": mask,
                "account_id": account,
                "sub_account_id": sub,
                "service_name": service,
                "region_id": region,
                "tag_key": tag_key,
                "tag_value": tag_value,
            }
            for account, sub, service, region, tag_key, tag_value in tuples
        )
    span_from = min(row["lo"] for row in ev)
    span_to = max(spend.last_day for spend in periods)
    windows = [spend.window_start for spend in periods if spend.window_start is not None]
    daily_from = min(windows) if windows else span_to + ONE_DAY
    daily_to = max((spend.as_of for spend in periods if spend.as_of is not None), default=span_to)
    breaks = {span_from, daily_to + ONE_DAY}
    for spend in periods:
        breaks.update((spend.period_start, spend.period_end))
    breaks = sorted(b for b in breaks if b <= span_to)
    months, ranges = whole_months(span_from, span_to, daily_from=daily_from, daily_to=daily_to, breaks=breaks)
    # One index range per stretch of days, OR-ed: the daily rollups of the whole months are never read.
    daily_days = " OR ".join(f"r.day BETWEEN %(lo_{i})s AND %(hi_{i})s" for i in range(len(ranges))) or "false"
    sql = _SPEND_SQL.format(
        data=_data_sql(plain_masks, tag_masks, daily_days=daily_days),
        days=",\n       ".join(_DAY_SQL.format(n=n) for n in range(lookback)),
    )
    params = {
        **{f"lo_{i}": lo for i, (lo, _) in enumerate(ranges)},
        **{f"hi_{i}": hi for i, (_, hi) in enumerate(ranges)},
        "months": months,
        "ev": _json(ev),
        "tu": _json(tu),
        "daily_from": daily_from,
        "daily_to": daily_to,
        "breaks": breaks,
        "span_from": span_from,
        "span_to": span_to,
        "currencies": sorted({spend.budget.currency for spend in periods}),
        "tag_keys": sorted(tag_keys),
        "tag_values": sorted(tag_values),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        # One big analytical statement an hour: memory to sort and hash in RAM, and no JIT (its compile time
        # is seconds, more than the query itself takes; the planner's row estimates for unnest() trigger it).
        cursor.execute("SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                       [settings.BUDGET_CHECK_WORK_MEM])  # fmt: skip
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for eval_id, actual, *days in rows:
        spend = periods[eval_id]
        spend.actual = actual or Decimal(0)
        if spend.as_of is not None:
            observed = (spend.as_of - spend.window_start).days + 1
            spend.daily = [value or Decimal(0) for value in reversed(days[:observed])]


# --- The check ---

_INSERT_ALERTS_SQL = """
INSERT INTO costs_app_budgetalert
    (budget_id, period_start, period_end, threshold_type, basis, threshold, threshold_amount, budget_amount,
     currency, spend, forecast, forecast_low, forecast_high, percentage, forecast_percentage, created_at)
SELECT a.*, %(now)s
FROM jsonb_to_recordset(%(rows)s::jsonb)
     AS a(budget_id bigint, period_start date, period_end date, threshold_type text, basis text, threshold numeric,
          threshold_amount numeric, budget_amount numeric, currency text, spend numeric, forecast numeric,
          forecast_low numeric, forecast_high numeric, percentage numeric, forecast_percentage numeric)
-- Skips the alerts that exist (every hourly run after the first) without a speculative insert each;
-- ON CONFLICT settles the race with a concurrent run.
WHERE NOT EXISTS (
    SELECT 1 FROM costs_app_budgetalert x
    WHERE x.budget_id = a.budget_id AND x.period_start = a.period_start AND x.basis = a.basis
      AND x.threshold_type = a.threshold_type AND x.threshold = a.threshold)
ON CONFLICT (budget_id, period_start, basis, threshold_type, threshold) DO NOTHING
RETURNING id
"""

# Alerts without any delivery yet (just created, or created while their budget had no active channel) get
# one per active channel of their budget. A channel added later does not receive alerts already delivered.
_INSERT_DELIVERIES_SQL = """
INSERT INTO costs_app_alertdelivery
    (alert_id, channel_id, status, attempts, next_attempt_at, last_error, attempt_log, created_at)
SELECT a.id, c.id, 'pending', 0, %(now)s, '', '[]'::jsonb, %(now)s
FROM costs_app_budgetalert a
JOIN costs_app_budget_channels bc ON bc.budget_id = a.budget_id
JOIN costs_app_notificationchannel c ON c.id = bc.notificationchannel_id AND c.is_active
WHERE a.budget_id = ANY(%(budgets)s) AND a.resolved_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM costs_app_alertdelivery d WHERE d.alert_id = a.id)
ON CONFLICT (alert_id, channel_id) DO NOTHING
"""

# An alert is resolved once its period is no longer checked (over, and past the late-data days).
_RESOLVE_SQL = """
UPDATE costs_app_budgetalert a SET resolved_at = %(now)s
WHERE a.budget_id = ANY(%(budgets)s) AND a.resolved_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM unnest(%(cur_budget)s::bigint[], %(cur_start)s::date[]) AS cur(budget_id, period_start)
      WHERE cur.budget_id = a.budget_id AND cur.period_start = a.period_start)
"""


def _active_budgets(*, account_id: int | None, budget_id: int | None) -> list[Budget]:
    budgets = Budget.objects.filter(is_active=True)
    if account_id is not None:
        budgets = budgets.filter(accounts__id=account_id)
    if budget_id is not None:
        budgets = budgets.filter(id=budget_id)
    if account_id is not None:
        budgets = budgets.distinct()  # the account filter joins the many-to-many table
    return list(budgets.order_by("id"))


def _valid(budgets: list[Budget], result: BudgetCheckResult) -> list[tuple[Budget, list[Threshold]]]:
    checked = []
    for budget in budgets:
        # Saved around the validation (a raw insert, an old row, an older rule): skip it, loudly, and check the
        # others. Dates first: 0001-01-01 .. 9999-12-31 would overflow the period arithmetic for every budget.
        problems = budget_dates_problems(period=budget.period, start=budget.start_date, end=budget.end_date)
        try:
            thresholds = budget.threshold_list()
        except ValidationError as exc:
            problems.setdefault("thresholds", []).extend(exc.messages)
        if problems:
            result.invalid_budgets += 1
            result.invalid_budget_ids.append(budget.id)
            described = "; ".join(f"{name}: {', '.join(messages)}" for name, messages in problems.items())
            logger.warning("budget %s (%s) skipped, invalid: %s", budget.id, budget.name, described)
            continue
        checked.append((budget, thresholds))
    return checked


def _alert_rows(spends: list[PeriodSpend], thresholds: dict[int, list[Threshold]]) -> list[dict]:
    rows = []
    for spend in spends:
        budget = spend.budget
        for threshold in thresholds[budget.id]:
            limit = threshold.limit(budget.amount)
            value = spend.actual if threshold.basis == SpendBasis.ACTUAL else spend.forecast
            if value is None or value < limit:
                continue
            rows.append(
                {
                    "budget_id": budget.id,
                    "period_start": spend.period_start,
                    "period_end": spend.last_day,
                    "threshold_type": threshold.type,
                    "basis": threshold.basis,
                    "threshold": threshold.value,
                    "threshold_amount": limit,
                    "budget_amount": budget.amount,
                    "currency": budget.currency,
                    "spend": spend.actual,
                    "forecast": spend.forecast,
                    "forecast_low": _cents(spend.forecast_low),
                    "forecast_high": _cents(spend.forecast_high),
                    "percentage": spend.percentage,
                    "forecast_percentage": spend.percent_of_budget(spend.forecast),
                }
            )
    return rows


def budgets_check(*, account_id: int | None = None, budget_id: int | None = None, now: datetime) -> BudgetCheckResult:
    """Evaluate the active budgets (all, those scoped to one account, or one) and alert on the thresholds reached.

    See the module docstring for what is computed and how; then sends the deliveries that are due.
    """
    result = BudgetCheckResult()
    today = now.date()
    budgets = _active_budgets(account_id=account_id, budget_id=budget_id)
    checked = _valid(budgets, result)
    result.budgets_checked = len(checked)
    if checked:
        tag_keys = {budget.tag_key for budget, _ in checked if budget.tag_key}
        if tag_keys - set(CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True)):
            result.tag_keys_activated = cost_allocation_tags_activate(keys=tag_keys)
        spends = budgets_spend([budget for budget, _ in checked], today=today)
        result.periods_checked = len(spends)
        result.over_budget = sum(1 for s in spends if s.actual >= s.budget.amount)
        result.forecast_over_budget = sum(1 for s in spends if s.forecast is not None and s.forecast >= s.budget.amount)
        rows = _alert_rows(spends, {budget.id: thresholds for budget, thresholds in checked})
        budget_ids = [budget.id for budget, _ in checked]
        with transaction.atomic(), connection.cursor() as cursor:
            if rows:
                cursor.execute(_INSERT_ALERTS_SQL, {"now": now, "rows": _json(rows)})
                result.alerts_created = len(cursor.fetchall())
            cursor.execute(_INSERT_DELIVERIES_SQL, {"now": now, "budgets": budget_ids})
            cursor.execute(
                _RESOLVE_SQL,
                {
                    "now": now,
                    "budgets": budget_ids,
                    "cur_budget": [s.budget.id for s in spends],
                    "cur_start": [s.period_start for s in spends],
                },
            )
            result.alerts_resolved = cursor.rowcount
    budget_alerts_deliver(now=now, result=result)
    return result


def budgets_account_deleted(*, instance, **_) -> int:
    """Deactivate the budgets scoped to `instance` alone (pre_delete of CloudAccount): without it they would
    cover every account. Returns how many; they stay visible, with their alerts, for someone to re-scope."""
    only_this = (
        Budget.objects.filter(id__in=Budget.objects.filter(accounts=instance).values("id"))
        .annotate(scoped=Count("accounts"))
        .filter(scoped=1)
        .values_list("id", flat=True)
    )
    ids = list(only_this)
    if ids:
        Budget.objects.filter(id__in=ids, is_active=True).update(is_active=False)
        logger.warning("account %s deleted: budgets %s, scoped to it alone, deactivated", instance.name, ids)
    return len(ids)


# --- Delivery ---

# Claimed deliveries get next_attempt_at = the lease's end, committed at once: a concurrent run skips them
# (SKIP LOCKED while the claim runs, not due afterwards), and a sender that dies mid-way leaves them to be
# claimed again when the lease ends. So a message is sent once, or at worst twice after a crash.
_CLAIM_SQL = """
WITH due AS (
    SELECT id FROM costs_app_alertdelivery
    WHERE status = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE costs_app_alertdelivery d
SET attempts = d.attempts + 1, last_attempt_at = %(now)s, next_attempt_at = %(lease_end)s
FROM due WHERE d.id = due.id
RETURNING d.id, d.alert_id, d.channel_id, d.attempts
"""

_RECORD_SQL = """
UPDATE costs_app_alertdelivery d
SET status = o.status, attempts = o.attempts, next_attempt_at = o.next_attempt_at,
    -- a delivery only put off (its channel failed earlier in the run) keeps its last real error
    last_error = CASE WHEN o.logged OR o.status <> 'pending' THEN o.error ELSE d.last_error END,
    sent_at = CASE WHEN o.status = 'sent' THEN %(now)s ELSE d.sent_at END,
    attempt_log = CASE WHEN o.logged THEN d.attempt_log || jsonb_build_array(
                           jsonb_build_object('at', %(now)s::timestamptz, 'error', o.error))
                       ELSE d.attempt_log END
FROM unnest(%(id)s::bigint[], %(status)s::text[], %(attempts)s::int[], %(next)s::timestamptz[], %(error)s::text[],
            %(logged)s::bool[]) AS o(id, status, attempts, next_attempt_at, error, logged)
WHERE d.id = o.id
"""

_NOTIFIED_SQL = """
UPDATE costs_app_budgetalert SET notified_at = %(now)s WHERE id = ANY(%(ids)s) AND notified_at IS NULL
"""

_NEXT_DUE_SQL = """
SELECT MIN(next_attempt_at), COUNT(*) FROM costs_app_alertdelivery WHERE status = 'pending'
"""


def retry_delay(attempts: int) -> timedelta:
    """Backoff after the `attempts`-th failed attempt: base, 2 × base, 4 × base, ..."""
    return timedelta(seconds=settings.BUDGET_NOTIFY_RETRY_BASE * 2 ** (attempts - 1))


@dataclass
class _Outcome:
    status: str
    attempts: int
    next_attempt_at: datetime | None
    error: str = ""
    logged: bool = False  # a real attempt that failed: appended to attempt_log


def budget_alerts_deliver(*, now: datetime, result: BudgetCheckResult | None = None) -> BudgetCheckResult:
    """Send the due deliveries: one message per budget period × channel naming every threshold it reports.

    A failing channel does not stop the others: its error is recorded on the delivery, which is retried
    after a growing delay (BUDGET_NOTIFY_RETRY_BASE × 2^(n-1)) until BUDGET_NOTIFY_MAX_ATTEMPTS, then marked
    failed; an error that a retry cannot fix (HTTP 404, a bad address) fails it at once. Once a channel
    has failed in this run, its other deliveries wait for its next attempt instead of timing out one by one.
    Messages are sent outside any transaction: network calls hold no locks.
    """
    result = result or BudgetCheckResult()
    lease = timedelta(seconds=max(300, 4 * settings.NOTIFICATION_TIMEOUT))
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"now": now, "limit": settings.BUDGET_DELIVERY_BATCH, "lease_end": now + lease})
        claimed = cursor.fetchall()
    if claimed:
        _send_claimed(claimed, now=now, result=result)
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_DUE_SQL)
        result.next_delivery_at, result.deliveries_pending = cursor.fetchone()
    return result


def _send_claimed(claimed: list[tuple], *, now: datetime, result: BudgetCheckResult) -> None:
    alerts = {
        alert.id: alert
        for alert in BudgetAlert.objects.filter(id__in={row[1] for row in claimed}).select_related("budget")
    }
    names = budget_accounts(list({alert.budget_id for alert in alerts.values()}), field="cloudaccount__name")
    channels = NotificationChannel.objects.in_bulk({row[2] for row in claimed})
    groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # (budget, period, channel) -> [(delivery, try)]
    for delivery_id, alert_id, channel_id, attempts in claimed:
        alert = alerts[alert_id]
        groups[(alert.budget_id, alert.period_start, channel_id)].append((delivery_id, attempts, alert))
    outcomes: dict[int, _Outcome] = {}
    sent_alerts: set[int] = set()
    broken: dict[int, datetime] = {}  # channel id -> its next attempt, once it failed in this run
    max_attempts = settings.BUDGET_NOTIFY_MAX_ATTEMPTS
    for (_, _, channel_id), deliveries in groups.items():
        channel = channels.get(channel_id)
        if channel is None or not channel.is_active:
            for delivery_id, attempts, _ in deliveries:
                outcomes[delivery_id] = _Outcome(DeliveryStatus.FAILED, attempts - 1, None, "the channel is inactive")
            continue
        if channel_id in broken:
            for delivery_id, attempts, _ in deliveries:
                outcomes[delivery_id] = _Outcome(DeliveryStatus.PENDING, attempts - 1, broken[channel_id], "")
            continue
        group_alerts = sorted((alert for _, _, alert in deliveries), key=lambda a: (a.basis, a.threshold_amount or 0))
        subject, text, payload = budget_message(group_alerts, account_names=names[group_alerts[0].budget_id])
        try:
            channel_send(channel=channel, subject=subject, text=text, payload=payload)
        except Exception as exc:
            message = error_text(channel, exc)
            logger.warning("budget alert delivery failed: %s", message)
            result.notification_errors += 1
            retryable = error_is_retryable(exc)
            for delivery_id, attempts, _ in deliveries:
                if retryable and attempts < max_attempts:
                    next_at = now + retry_delay(attempts)
                    outcomes[delivery_id] = _Outcome(DeliveryStatus.PENDING, attempts, next_at, message, True)
                else:
                    result.deliveries_failed += 1
                    outcomes[delivery_id] = _Outcome(DeliveryStatus.FAILED, attempts, None, message, True)
            if retryable:
                # Unreachable or overloaded: its other messages of this run wait, rather than time out one by one.
                broken[channel_id] = now + retry_delay(1)
            continue
        result.notifications_sent += 1
        for delivery_id, attempts, alert in deliveries:
            outcomes[delivery_id] = _Outcome(DeliveryStatus.SENT, attempts, None)
            sent_alerts.add(alert.id)
    with transaction.atomic(), connection.cursor() as cursor:
        ids = list(outcomes)
        cursor.execute(
            _RECORD_SQL,
            {
                "now": now,
                "id": ids,
                "status": [outcomes[i].status for i in ids],
                "attempts": [outcomes[i].attempts for i in ids],
                "next": [outcomes[i].next_attempt_at for i in ids],
                "error": [outcomes[i].error for i in ids],
                "logged": [outcomes[i].logged for i in ids],
            },
        )
        if sent_alerts:
            cursor.execute(_NOTIFIED_SQL, {"now": now, "ids": sorted(sent_alerts)})


def budget_message(alerts: list[BudgetAlert], *, account_names: list[str]) -> tuple[str, str, dict]:
    """Subject, text and webhook payload for alerts of one budget period (the same run's figures)."""
    budget = alerts[0].budget
    latest = max(alerts, key=lambda a: (a.created_at, a.id))
    currency = latest.currency or budget.currency
    amount = latest.budget_amount if latest.budget_amount is not None else budget.amount
    labels = [alert.threshold_spec.label(currency) for alert in alerts]
    scope = budget.scope_label(account_names)
    period = f"{latest.period_start} to {latest.period_end}" if latest.period_end else f"starting {latest.period_start}"
    interval = (
        f", 80 % interval {_money(latest.forecast_low)} to {_money(latest.forecast_high)}"
        if latest.forecast_low is not None and latest.forecast_high is not None
        else ""
    )
    forecast_line = (
        f"Forecast for the period: {_money(latest.forecast)} {currency} ({latest.forecast_percentage}% of the budget"
        f"{interval})."
        if latest.forecast is not None
        else "Forecast for the period: not enough cost data yet."
    )
    reached = "; ".join(
        f"{label} ({_money(alert.threshold_amount)} {currency})" if alert.threshold_amount is not None else label
        for label, alert in zip(labels, alerts, strict=True)
    )
    figures = f"{latest.percentage}% spent" + (
        f", {latest.forecast_percentage}% forecast" if latest.forecast_percentage is not None else ""
    )
    subject = f"[FinOps] budget {budget.name}: {', '.join(labels)} reached ({figures})"
    text = (
        f"Budget {budget.name} ({scope}): {plain(amount)} {currency}, {budget.get_period_display().lower()} "
        f"period {period}.\n"
        f"Actual spend so far: {_money(latest.spend)} {currency} ({latest.percentage}% of the budget).\n"
        f"{forecast_line}\n"
        f"Thresholds reached: {reached}."
    )
    payload = {
        "event": "budget_threshold",
        "budget_id": budget.id,
        "budget": budget.name,
        "period": budget.period,
        "period_start": latest.period_start.isoformat(),
        "period_end": latest.period_end.isoformat() if latest.period_end else None,
        "amount": str(amount),
        "currency": currency,
        "spend": _money(latest.spend),
        "percentage": str(latest.percentage),
        "forecast": _money(latest.forecast) if latest.forecast is not None else None,
        "forecast_low": _money(latest.forecast_low) if latest.forecast_low is not None else None,
        "forecast_high": _money(latest.forecast_high) if latest.forecast_high is not None else None,
        "forecast_percentage": str(latest.forecast_percentage) if latest.forecast_percentage is not None else None,
        "thresholds": [
            {
                "type": alert.threshold_type,
                "value": plain(alert.threshold),
                "basis": alert.basis,
                "amount": _money(alert.threshold_amount) if alert.threshold_amount is not None else None,
            }
            for alert in alerts
        ],
        "alert_ids": [alert.id for alert in alerts],
    }
    return subject, text, payload


def _cents(value: Decimal | None) -> Decimal | None:
    return value.quantize(CENT, rounding=ROUND_HALF_UP) if value is not None else None


def _money(value: Decimal | None) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP)) if value is not None else ""
