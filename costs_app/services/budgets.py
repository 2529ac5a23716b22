"""Budget monitoring: actual spend per budget period, threshold alerts created once, sent to the budget's channels."""

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction
from django.db.models import Prefetch

from costs_app.models import Budget, BudgetAlert, BudgetPeriod, NotificationChannel

from .notifications import channels_notify

logger = logging.getLogger(__name__)

CENT = Decimal("0.01")
_MONTHS_PER_PERIOD = {BudgetPeriod.MONTHLY: 1, BudgetPeriod.QUARTERLY: 3, BudgetPeriod.ANNUAL: 12}


@dataclass
class BudgetCheckResult:
    budgets_checked: int = 0
    alerts_created: int = 0
    alerts_resolved: int = 0
    notifications_sent: int = 0
    notification_errors: int = 0
    over_budget: int = 0

    def as_dict(self) -> dict:
        return {
            "budgets_checked": self.budgets_checked,
            "alerts_created": self.alerts_created,
            "alerts_resolved": self.alerts_resolved,
            "notifications_sent": self.notifications_sent,
            "notification_errors": self.notification_errors,
            "over_budget": self.over_budget,
        }


def period_bounds(period: str, today: date) -> tuple[date, date]:
    """[start, end) of the calendar month, quarter or year containing `today`."""
    months = _MONTHS_PER_PERIOD[BudgetPeriod(period)]
    start_month = ((today.month - 1) // months) * months + 1
    start = date(today.year, start_month, 1)
    end_month_index = start.month - 1 + months
    end = date(start.year + end_month_index // 12, end_month_index % 12 + 1, 1)
    return start, end


@dataclass
class _BudgetSpend:
    budget: Budget
    period_start: date
    period_end: date
    spend: Decimal
    last_day: date | None

    @property
    def percentage(self) -> Decimal:
        if self.budget.amount <= 0:  # the model forbids it; a raw insert must not crash the whole run
            return Decimal(0)
        return (self.spend * 100 / self.budget.amount).quantize(CENT, rounding=ROUND_HALF_UP)

    @property
    def forecast(self) -> Decimal:
        """Straight-line projection to the period end from the days with data so far."""
        if self.last_day is None:
            return Decimal(0)
        elapsed = (self.last_day - self.period_start).days + 1
        total = (self.period_end - self.period_start).days
        return (self.spend * total / elapsed).quantize(CENT, rounding=ROUND_HALF_UP)


# Rollups are first summed per account × service × currency × month over the span all budgets need
# (every budget period is month-aligned), so the budget join works on that small set, not on days.
_SPEND_SQL = """
WITH b AS (
    SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::date[], %s::date[])
        AS b(budget_id, account_id, service_name, currency, period_start, period_end)
), monthly AS (
    SELECT r.account_id, r.service_name, r.billing_currency, date_trunc('month', r.day)::date AS month,
           SUM(r.billed_cost) AS cost, MAX(r.day) AS last_day
    FROM costs_app_costdailyrollup r
    WHERE r.day >= (SELECT MIN(period_start) FROM b) AND r.day < (SELECT MAX(period_end) FROM b)
      AND r.billing_currency IN (SELECT currency FROM b)
    GROUP BY 1, 2, 3, 4
)
SELECT b.budget_id, COALESCE(SUM(m.cost), 0), MAX(m.last_day)
FROM b
LEFT JOIN monthly m
       ON m.month >= b.period_start AND m.month < b.period_end
      AND m.billing_currency = b.currency
      AND (b.account_id IS NULL OR m.account_id = b.account_id)
      AND (b.service_name = '' OR m.service_name = b.service_name)
GROUP BY b.budget_id
"""

# The unique constraint budget_alert_once decides which run creates an alert: a concurrent run's
# identical INSERT does nothing, and RETURNING tells each run exactly which rows it created.
_INSERT_ALERTS_SQL = """
INSERT INTO costs_app_budgetalert
    (budget_id, period_start, threshold, spend, percentage, created_at, notification_errors)
SELECT a.budget_id, a.period_start, a.threshold, a.spend, a.percentage, %s, '[]'::jsonb
FROM unnest(%s::bigint[], %s::date[], %s::numeric[], %s::numeric[], %s::numeric[])
     AS a(budget_id, period_start, threshold, spend, percentage)
ON CONFLICT (budget_id, period_start, threshold) DO NOTHING
RETURNING id
"""

# Claiming "notified_at IS NULL" atomically means one run sends each alert, and an alert whose
# sender died before sending (created, never claimed) is picked up by the next run.
_CLAIM_SQL = """
UPDATE costs_app_budgetalert a SET notified_at = %s
FROM unnest(%s::bigint[], %s::date[]) AS cur(budget_id, period_start)
WHERE a.budget_id = cur.budget_id AND a.period_start = cur.period_start
  AND a.notified_at IS NULL AND a.resolved_at IS NULL
RETURNING a.id
"""

# An alert is resolved when its period is over: the next period starts with a clean slate.
_RESOLVE_SQL = """
UPDATE costs_app_budgetalert a SET resolved_at = %s
FROM unnest(%s::bigint[], %s::date[]) AS cur(budget_id, period_start)
WHERE a.budget_id = cur.budget_id AND a.period_start < cur.period_start AND a.resolved_at IS NULL
"""


def _spend_of(budgets: list[Budget], *, today: date) -> list[_BudgetSpend]:
    """Spend of every budget's current period in one aggregate query, whatever the number of budgets."""
    bounds = [period_bounds(b.period, today) for b in budgets]
    with connection.cursor() as cursor:
        cursor.execute(
            _SPEND_SQL,
            [
                [b.id for b in budgets],
                [b.account_id for b in budgets],
                [b.service_name for b in budgets],
                [b.currency for b in budgets],
                [start for start, _ in bounds],
                [end for _, end in bounds],
            ],
        )
        spend = {row[0]: (Decimal(row[1]), row[2]) for row in cursor.fetchall()}
    return [
        _BudgetSpend(budget=b, period_start=start, period_end=end, spend=spend[b.id][0], last_day=spend[b.id][1])
        for b, (start, end) in zip(budgets, bounds, strict=True)
    ]


def _thresholds(budget: Budget) -> list[Decimal]:
    values = {Decimal(str(t)).quantize(CENT) for t in budget.thresholds or [] if t is not None}
    return sorted(v for v in values if v > 0)


def _message(state: _BudgetSpend, alerts: list[BudgetAlert]) -> tuple[str, str, dict]:
    budget = state.budget
    top = max(alert.threshold for alert in alerts)
    scope = budget.account.name if budget.account_id else "all accounts"
    if budget.service_name:
        scope += f", service {budget.service_name}"
    subject = f"[FinOps] budget {budget.name} passed {top.normalize():f}% ({state.percentage}%)"
    text = (
        f"Budget {budget.name} ({scope}) has used {state.percentage}% of {budget.amount} {budget.currency} "
        f"for the {budget.period} period starting {state.period_start}.\n"
        f"Spend so far: {state.spend.quantize(CENT)} {budget.currency}; "
        f"straight-line forecast for the period: {state.forecast} {budget.currency}.\n"
        f"Thresholds crossed now: {', '.join(f'{a.threshold.normalize():f}%' for a in alerts)}."
    )
    payload = {
        "event": "budget_threshold",
        "budget_id": budget.id,
        "budget": budget.name,
        "period": budget.period,
        "period_start": state.period_start.isoformat(),
        "amount": str(budget.amount),
        "currency": budget.currency,
        "spend": str(state.spend.quantize(CENT)),
        "percentage": str(state.percentage),
        "forecast": str(state.forecast),
        "thresholds": [str(a.threshold) for a in alerts],
    }
    return subject, text, payload


def budgets_check(*, account_id: int | None = None, budget_id: int | None = None, now: datetime) -> BudgetCheckResult:
    """Evaluate the active budgets (all, one account's, or one) against the actual spend of their current period.

    Spend is FOCUS BilledCost from the daily rollups, in the budget's currency only. Every
    threshold reached creates one BudgetAlert per budget × period × threshold (a database fact,
    safe under concurrent runs); the budget's active channels get one message per budget with
    the thresholds newly crossed. Alerts of periods that have ended are marked resolved.
    """
    result = BudgetCheckResult()
    budgets_qs = Budget.objects.filter(is_active=True).select_related("account")
    if account_id is not None:
        budgets_qs = budgets_qs.filter(account_id=account_id)
    if budget_id is not None:
        budgets_qs = budgets_qs.filter(id=budget_id)
    budgets = list(
        budgets_qs.prefetch_related(
            Prefetch("channels", queryset=NotificationChannel.objects.filter(is_active=True), to_attr="active_channels")
        ).order_by("id")
    )
    result.budgets_checked = len(budgets)
    if not budgets:
        return result

    states = _spend_of(budgets, today=now.date())
    rows = [
        (s.budget.id, s.period_start, threshold, s.spend, s.percentage)
        for s in states
        for threshold in _thresholds(s.budget)
        if s.percentage >= threshold
    ]
    result.over_budget = sum(1 for s in states if s.spend >= s.budget.amount)
    current = ([s.budget.id for s in states], [s.period_start for s in states])

    with transaction.atomic(), connection.cursor() as cursor:
        if rows:
            cursor.execute(_INSERT_ALERTS_SQL, [now, *map(list, zip(*rows, strict=True))])
            result.alerts_created = len(cursor.fetchall())
        cursor.execute(_RESOLVE_SQL, [now, *current])
        result.alerts_resolved = cursor.rowcount
    # Only budgets with somewhere to send: an alert of a budget without channels stays "never notified",
    # and is sent by the first run after a channel is added in the same period.
    reachable = [s for s in states if s.budget.active_channels]
    claimed = []
    if reachable:
        with connection.cursor() as cursor:
            cursor.execute(_CLAIM_SQL, [now, [s.budget.id for s in reachable], [s.period_start for s in reachable]])
            claimed = [row[0] for row in cursor.fetchall()]
    if claimed:
        _notify(claimed, {s.budget.id: s for s in states}, result)
    return result


def _notify(alert_ids: list[int], states: dict[int, _BudgetSpend], result: BudgetCheckResult) -> None:
    """One message per budget (not per threshold), sent outside any transaction: network calls hold no locks."""
    by_budget: dict[int, list[BudgetAlert]] = defaultdict(list)
    for alert in BudgetAlert.objects.filter(id__in=alert_ids).order_by("threshold"):
        by_budget[alert.budget_id].append(alert)
    touched = []
    for budget_id, alerts in by_budget.items():
        state = states[budget_id]
        channels = state.budget.active_channels
        subject, text, payload = _message(state, alerts)
        errors = channels_notify(channels=channels, subject=subject, text=text, payload=payload)
        result.notifications_sent += len(channels) - len(errors)
        result.notification_errors += len(errors)
        if errors:
            for alert in alerts:
                alert.notification_errors = errors
                touched.append(alert)
    if touched:
        BudgetAlert.objects.bulk_update(touched, ["notification_errors"])
