"""The cost dashboards' reads: spend, budget burn, an anomaly's series and savings, aggregated in SQL from the rollups.

Every query starts from the tenancy selectors (costs_app.selectors), so a user sees only their teams' accounts, and
returns grouped rows (GROUP BY day × top group, top-N tables): the number of rows that reach Python is bounded by
the period's days and the limits, never by the number of rollup or cost-line rows.

- Spend reads CostDailyRollup, or CostTagRollup when a tag filter (key=value) is given: a tag rollup row holds the
  same dimensions (account, day, service, sub-account, region) for one tag value, so the same filters apply.
- A period longer than MONTHLY_AFTER_DAYS days (a year, say) is drawn by month: its whole months read CostMonthRollup
  (the daily rollups summed by account × month × service × region × currency, kept by triggers), only its partial
  first and last months read the daily rollups. A sub-account or tag filter is not in the monthly rollups: those
  periods read the daily (or tag) rollups, still by month.
- Money is FOCUS BilledCost of ONE currency at a time (amounts in two currencies are never added); the currency
  with the most spend is the default and the others are listed.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from costs_app.models import (
    Anomaly,
    AnomalyDimension,
    Budget,
    CostAllocationTag,
    CostDailyRollup,
    CostTagRollup,
    Recommendation,
    RecommendationStatus,
    SavingBasis,
)
from costs_app.selectors import (
    anomalies_for,
    budgets_for,
    daily_rollups_for,
    month_rollups_for,
    recommendations_for,
    tag_rollups_for,
)
from costs_app.services import anomaly_detector as detector
from costs_app.services.budgets import budget_periods, budgets_spend
from costs_app.services.optimization import RULES_BY_NAME
from providers_app.selectors import accounts_for

OTHER = "(other)"
ZERO = Decimal(0)
MONEY_OUT = DecimalField(max_digits=38, decimal_places=6)
# The series of an anomaly drawn: this many days before its first day (its baseline: the band needs it) and after.
ANOMALY_DAYS_BEFORE = 21
ANOMALY_DAYS_AFTER = 7
# Longer periods are drawn month by month (measured: 400 days of daily rollups took ~8 s at 3 M rollup rows).
MONTHLY_AFTER_DAYS = 92


@dataclass(frozen=True)
class SpendFilter:
    date_from: date
    date_to: date
    account: int | None = None
    sub_account: str = ""
    service: str = ""
    region: str = ""
    tag_key: str = ""
    tag_value: str = ""
    currency: str = ""

    def days(self) -> list[date]:
        return [self.date_from + timedelta(days=i) for i in range((self.date_to - self.date_from).days + 1)]

    def monthly(self) -> bool:
        return (self.date_to - self.date_from).days + 1 > MONTHLY_AFTER_DAYS

    def months(self) -> list[date]:
        months, month = [], self.date_from.replace(day=1)
        while month <= self.date_to:
            months.append(month)
            month = _next_month(month)
        return months


def _next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def _rollups(user, f: SpendFilter) -> QuerySet:
    """The user's rollup rows that pass the filters, the period excepted (callers pick their days)."""
    if f.tag_key:
        queryset = tag_rollups_for(user).filter(tag_key=f.tag_key, tag_value=f.tag_value)
    else:
        queryset = daily_rollups_for(user)
    if f.account is not None:
        queryset = queryset.filter(account_id=f.account)
    for field, value in (("sub_account_id", f.sub_account), ("service_name", f.service), ("region_id", f.region)):
        if value:
            queryset = queryset.filter(**{field: value})
    return queryset


def _total(queryset: QuerySet) -> Decimal:
    return queryset.aggregate(total=Coalesce(Sum("billed_cost"), Value(ZERO), output_field=MONEY_OUT))["total"]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(Decimal("0.01")))


def account_names(user, ids) -> dict[int, str]:
    return dict(accounts_for(user).filter(pk__in=list(ids)).values_list("pk", "name"))


# One scan of the period's rows for every figure of the spend page: GROUPING SETS sum them per currency × day × the
# stacking dimension (service or account) and per currency × each other dimension (account or service, region).
# Totals per currency and per stacked group are sums of the first set. What reaches Python is those groups (days ×
# services at most), never the rollup rows; the top N and "(other)" are picked from them. Three sets, not five: each
# set is one more hash of every row, and the hashing, not the reading, is most of the time.
_SPEND_SQL = """
SELECT GROUPING(r.service_name, r.account_id, r.region_id, r.day) AS set_id, r.billing_currency,
       r.service_name, r.account_id, r.region_id, r.day, SUM(r.billed_cost)
FROM ({rows}) r
GROUP BY r.billing_currency, GROUPING SETS ((r.day, r.{stack}), (r.{other}), (r.region_id))
"""
# GROUPING() bits, in the order of its arguments (service, account, region, day): 1 where a column is not grouped.
_SET_SERVICE, _SET_ACCOUNT, _SET_REGION = 0b0111, 0b1011, 0b1101
_SET_DAILY = {"service_name": 0b0110, "account_id": 0b1010}
_COLUMN = {"service_name": 2, "account_id": 3}


def _spend_groups(in_period: QuerySet, stack: str) -> list[tuple]:
    rows_sql, params = (
        in_period.order_by().values("billing_currency", "service_name", "account_id", "region_id", "day", "billed_cost")
    ).query.sql_with_params()
    other = "account_id" if stack == "service_name" else "service_name"
    with connection.cursor() as cursor:
        cursor.execute(_SPEND_SQL.format(rows=rows_sql, stack=stack, other=other), params)
        return cursor.fetchall()


def _spend_groups_by_month(user, f: SpendFilter, scoped: QuerySet, stack: str) -> list[tuple]:
    """_spend_groups of a long period with its days put in their month: the whole months from the monthly rollups
    (when no sub-account or tag filter asks for a dimension they lack), the partial first and last months from the
    daily rollups (at most two months of days). Same rows, same order of columns."""
    whole_from = f.date_from if f.date_from.day == 1 else _next_month(f.date_from)
    after_to = f.date_to + timedelta(days=1)
    whole_to = after_to if after_to.day == 1 else after_to.replace(day=1)  # exclusive
    if f.tag_key or f.sub_account or whole_from >= whole_to:
        parts = [_spend_groups(scoped.filter(day__range=(f.date_from, f.date_to)), stack)]
    else:
        months = month_rollups_for(user).filter(month__gte=whole_from, month__lt=whole_to)
        if f.account is not None:
            months = months.filter(account_id=f.account)
        for field, value in (("service_name", f.service), ("region_id", f.region)):
            if value:
                months = months.filter(**{field: value})
        edges = scoped.filter(Q(day__gte=f.date_from, day__lt=whole_from) | Q(day__gte=whole_to, day__lte=f.date_to))
        parts = [_spend_groups(months.annotate(day=F("month")), stack), _spend_groups(edges, stack)]
    merged: dict[tuple, Decimal] = {}
    for rows in parts:
        for row in rows:
            day = row[5].replace(day=1) if row[5] is not None else None
            key = (*row[:5], day)
            merged[key] = merged.get(key, ZERO) + row[6]
    return [(*key, total) for key, total in merged.items()]


def _ranked(totals: dict, top: int) -> list[tuple]:
    return sorted(totals.items(), key=lambda item: (-item[1], str(item[0])))[:top]


def spend_dashboard(user, f: SpendFilter, *, group_by: str, top: int) -> dict:
    """Daily spend stacked by the top `top` services or accounts (the rest as "(other)"), totals, month-to-date
    against the same days of last month, and the top services, accounts, regions and tag values of the period."""
    scoped = _rollups(user, f)
    stack = "account_id" if group_by == "account" else "service_name"
    column = _COLUMN[stack]
    monthly = f.monthly()
    if monthly:
        groups = _spend_groups_by_month(user, f, scoped, stack)
    else:
        groups = _spend_groups(scoped.filter(day__range=(f.date_from, f.date_to)), stack)
    daily = [row for row in groups if row[0] == _SET_DAILY[stack]]
    by_currency: dict[str, Decimal] = {}
    for row in daily:
        by_currency[row[1]] = by_currency.get(row[1], ZERO) + row[6]
    currencies = [c for c, _ in sorted(by_currency.items(), key=lambda item: (-item[1], item[0]))]
    currency = f.currency or (currencies[0] if currencies else "USD")
    mine = [row for row in groups if row[1] == currency]
    per = {
        name: {row[col]: row[6] for row in mine if row[0] == set_id}
        for name, set_id, col in (
            ("services", _SET_SERVICE, 2), ("accounts", _SET_ACCOUNT, 3), ("regions", _SET_REGION, 4),
        )
    }  # fmt: skip
    stacked: dict = {}
    for row in daily:
        if row[1] == currency:
            stacked[row[column]] = stacked.get(row[column], ZERO) + row[6]
    per["accounts" if stack == "account_id" else "services"] = stacked
    stack_totals = per["accounts" if stack == "account_id" else "services"]
    top_keys = [key for key, _ in _ranked(stack_totals, top)]
    days = f.months() if monthly else f.days()
    index = {d: i for i, d in enumerate(days)}
    values = {key: [ZERO] * len(days) for key in [*top_keys, OTHER]}
    for row in daily:
        if row[1] == currency:
            series = values.get(row[column], values[OTHER])
            series[index[row[5]]] += row[6]
    ranked_accounts = _ranked(per["accounts"], top)
    stacked_accounts = top_keys if stack == "account_id" else []
    names = account_names(user, {*stacked_accounts, *(key for key, _ in ranked_accounts)}) if by_currency else {}
    series = [
        {
            "key": str(key),
            "label": _group_label(str(key), group_by, names),
            "values": [_money(v) for v in values[key]],
            "total": _money(sum(values[key], ZERO)),
        }
        for key in [*top_keys, OTHER]
        if key != OTHER or any(values[OTHER])
    ]

    def table(totals: list[tuple], label) -> list[dict]:
        return [{"key": str(key), "label": label(key), "total": _money(total)} for key, total in totals]

    tops = {
        "services": table(_ranked(per["services"], top), lambda key: key or "(no service)"),
        "accounts": table(ranked_accounts, lambda key: names.get(key, f"account {key}")),
        "regions": table(_ranked(per["regions"], top), lambda key: key or "(no region)"),
    }
    return {
        "currency": currency,
        "currencies": currencies,
        "date_from": f.date_from,
        "date_to": f.date_to,
        "group_by": group_by,
        "granularity": "month" if monthly else "day",
        "days": days,
        "series": series,
        "total": _money(by_currency.get(currency, ZERO)),
        "month_to_date": _month_to_date(scoped.filter(billing_currency=currency), f.date_to),
        "top": tops,
    }


def _group_label(key: str, group_by: str, names: dict[int, str]) -> str:
    if key == OTHER:
        return key
    if group_by == "account":
        return names.get(int(key), f"account {key}")
    return key or "(no service)"


def _month_to_date(queryset: QuerySet, today: date) -> dict:
    """Spend from the 1st of `today`'s month to `today`, and over the same days of the month before (its days
    that exist: 1-31 March is compared with 1-28/29 February), in one query."""
    this_start = today.replace(day=1)
    last_end_of_month = this_start - timedelta(days=1)
    last_start = last_end_of_month.replace(day=1)
    last_to = min(last_start.replace(day=min(today.day, last_end_of_month.day)), last_end_of_month)
    sums = queryset.filter(day__range=(last_start, today)).aggregate(
        this=Coalesce(Sum("billed_cost", filter=Q(day__gte=this_start)), Value(ZERO), output_field=MONEY_OUT),
        last=Coalesce(Sum("billed_cost", filter=Q(day__lte=last_to)), Value(ZERO), output_field=MONEY_OUT),
    )
    change = None if not sums["last"] else ((sums["this"] - sums["last"]) * 100 / sums["last"]).quantize(Decimal("0.1"))
    return {
        "this_month": {"date_from": this_start, "date_to": today, "total": _money(sums["this"])},
        "last_month": {"date_from": last_start, "date_to": last_to, "total": _money(sums["last"])},
        "change_percent": None if change is None else str(change),
    }


def spend_top_tags(user, f: SpendFilter, *, top: int) -> dict:
    """The period's largest tag values (the filtered one, else those of every active cost allocation tag) in the given
    currency, else in the one with the most tagged spend; the untagged "" rows are left out (each key's remainder,
    not a value). Apart from spend_dashboard: the tag rollups are the largest table, the chart need not wait."""
    rows = tag_rollups_for(user).filter(day__range=(f.date_from, f.date_to)).exclude(tag_value="")
    # By key (the index leads with tag_key, then day): the filtered key, else the active cost allocation tags.
    active = CostAllocationTag.objects.filter(is_active=True).values_list("key", flat=True)
    rows = rows.filter(tag_key__in=[f.tag_key] if f.tag_key else list(active))
    if f.tag_key:  # the spend of one tag value: that value's total
        rows = rows.filter(tag_value=f.tag_value)
    if f.currency:
        rows = rows.filter(billing_currency=f.currency)
    if f.account is not None:
        rows = rows.filter(account_id=f.account)
    for field, value in (("sub_account_id", f.sub_account), ("service_name", f.service), ("region_id", f.region)):
        if value:
            rows = rows.filter(**{field: value})
    groups = list(
        rows.values_list("billing_currency", "tag_key", "tag_value").annotate(total=Sum("billed_cost")).order_by()
    )
    by_currency: dict[str, Decimal] = {}
    for currency, _, _, total in groups:
        by_currency[currency] = by_currency.get(currency, ZERO) + total
    currency = f.currency or min(by_currency, key=lambda c: (-by_currency[c], c), default="USD")
    ranked = sorted((g for g in groups if g[0] == currency), key=lambda g: (-g[3], g[1], g[2]))[:top]
    return {
        "currency": currency,
        "tags": [
            {"key": f"{key}={value}", "label": f"{key} = {value}", "total": _money(total)}
            for _, key, value, total in ranked
        ],
    }


# --- budgets ---------------------------------------------------------------------------------------------------


def budgets_dashboard(user, *, today: date, limit: int) -> dict:
    """Each active budget's current period: actual, forecast with its 80 % interval, thresholds (budgets_spend:
    a fixed number of queries whatever the number of budgets)."""
    budgets = list(budgets_for(user).filter(is_active=True).order_by("name")[:limit])
    current = {}
    for spend in budgets_spend(budgets, today=today):
        if spend.period_start <= today < spend.period_end or spend.budget.id not in current:
            current[spend.budget.id] = spend
    rows = []
    for budget in budgets:
        spend = current.get(budget.id)
        rows.append(_budget_row(budget, spend))
    return {"today": today, "budgets": rows}


def _thresholds(budget: Budget) -> list[dict]:
    try:
        thresholds = budget.threshold_list()
    except Exception:  # noqa: BLE001 - a stored row that no longer validates shows no lines rather than failing
        return []
    return [
        {"label": t.label(budget.currency), "basis": t.basis, "amount": _money(t.limit(budget.amount))}
        for t in thresholds
    ]


def _budget_row(budget: Budget, spend) -> dict:
    row = {
        "id": budget.id,
        "name": budget.name,
        "currency": budget.currency,
        "amount": _money(budget.amount),
        "period": budget.period,
        "thresholds": _thresholds(budget),
        "period_start": None,
        "period_end": None,
        "actual": None,
        "forecast": None,
        "forecast_low": None,
        "forecast_high": None,
        "percent_used": None,
        "forecast_percent": None,
        "as_of": None,
    }
    if spend is not None:
        row.update(
            period_start=spend.period_start,
            period_end=spend.last_day,
            actual=_money(spend.actual),
            forecast=_money(spend.forecast),
            forecast_low=_money(spend.forecast_low),
            forecast_high=_money(spend.forecast_high),
            percent_used=str(spend.percentage),
            forecast_percent=None if spend.forecast is None else str(spend.percent_of_budget(spend.forecast)),
            as_of=spend.as_of,
        )
    return row


def budget_burn(user, *, budget_id: int, today: date) -> dict | None:
    """One budget's current period day by day: cumulative actual spend, the forecast with its interval from the data
    day to the period's end, and the thresholds — one aggregate query for the days, budgets_spend for the forecast."""
    budget = budgets_for(user).filter(pk=budget_id).first()
    if budget is None:
        return None
    periods = budget_periods(budget, today, late_days=0) or budget_periods(budget, today, late_days=10**4)
    spend = next(iter(s for s in budgets_spend([budget], today=today) if s.period_start <= today < s.period_end), None)
    if spend is not None:
        start, end = spend.period_start, spend.period_end
    elif periods:
        start, end = periods[-1]
    else:
        row = _budget_row(budget, None)
        return {**row, "days": [], "cumulative": [], "forecast_line": [], "low_line": [], "high_line": []}
    account_ids = list(budget.accounts.values_list("pk", flat=True))
    if budget.tag_key:
        queryset = CostTagRollup.objects.filter(tag_key=budget.tag_key, tag_value__in=budget.tag_values)
    else:
        queryset = CostDailyRollup.objects
    queryset = queryset.filter(day__gte=start, day__lt=end, billing_currency=budget.currency)
    if account_ids:
        queryset = queryset.filter(account_id__in=account_ids)
    for field, values in (
        ("sub_account_id", budget.sub_account_ids),
        ("service_name", budget.service_names),
        ("region_id", budget.region_ids),
    ):
        if values:
            queryset = queryset.filter(**{f"{field}__in": values})
    daily = dict(queryset.values("day").annotate(total=Sum("billed_cost")).order_by().values_list("day", "total"))
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    last_data = spend.as_of if spend is not None and spend.as_of else max(daily, default=None)
    cumulative, running = [], ZERO
    for day in days:
        running += daily.get(day, ZERO)
        cumulative.append(_money(running) if last_data is not None and day <= last_data else None)
    row = _budget_row(budget, spend)
    forecast_line, low_line, high_line = [None] * len(days), [None] * len(days), [None] * len(days)
    if spend is not None and spend.forecast is not None and last_data is not None and last_data >= start:
        # A straight line from the spend at the data day to the forecast (and its interval) at the period's end.
        at = (last_data - start).days
        base = Decimal(cumulative[at]) if at < len(days) else running
        span = max(1, len(days) - 1 - at)
        for i in range(at, len(days)):
            share = Decimal(i - at) / span
            forecast_line[i] = _money(base + (spend.forecast - base) * share)
            low_line[i] = _money(base + (spend.forecast_low - base) * share)
            high_line[i] = _money(base + (spend.forecast_high - base) * share)
    return {
        **row,
        "period_start": start,
        "period_end": end - timedelta(days=1),
        "days": days,
        "cumulative": cumulative,
        "forecast_line": forecast_line,
        "low_line": low_line,
        "high_line": high_line,
    }


# --- anomalies ------------------------------------------------------------------------------------------------


def anomalies_recent(user, *, account: int | None, limit: int) -> QuerySet[Anomaly]:
    queryset = anomalies_for(user).select_related("monitor", "account")
    if account is not None:
        queryset = queryset.filter(account_id=account)
    return queryset.order_by("-end_day", "-impact", "id")[:limit]


def anomaly_series(user, *, anomaly_id: int, today: date) -> dict | None:
    """An anomaly's daily series (EffectiveCost, as the detector reads it) from ANOMALY_DAYS_BEFORE days before it
    to ANOMALY_DAYS_AFTER days after, with the detector's expected value and band for every day (recomputed by
    anomaly_detector.series_evaluate on this one series) and its anomalous days marked."""
    anomaly = anomalies_for(user).select_related("monitor", "account").filter(pk=anomaly_id).first()
    if anomaly is None:
        return None
    monitor = anomaly.monitor
    baseline = settings.ANOMALY_BASELINE_DAYS
    history = detector.history_days(baseline)
    shown_from = anomaly.start_day - timedelta(days=ANOMALY_DAYS_BEFORE)
    shown_to = min(anomaly.end_day + timedelta(days=ANOMALY_DAYS_AFTER), max(today, anomaly.end_day))
    load_from = shown_from - timedelta(days=history)
    if monitor.dimension == AnomalyDimension.TAG:
        queryset = CostTagRollup.objects.filter(tag_key=monitor.tag_key, tag_value=anomaly.dimension_value)
    else:
        queryset = CostDailyRollup.objects.all()
        if monitor.dimension == AnomalyDimension.SERVICE:
            queryset = queryset.filter(service_name=anomaly.dimension_value)
    daily = dict(
        queryset.filter(account_id=anomaly.account_id, billing_currency=anomaly.currency)
        .filter(day__range=(load_from, shown_to))
        .values("day")
        .annotate(total=Sum("effective_cost"))
        .order_by()
        .values_list("day", "total")
    )
    # Not past the series' latest day with data (today's is not in yet): a missing day is not a drop to zero.
    shown_to = max(anomaly.end_day, min(shown_to, max(daily, default=shown_to)))
    n_days = (shown_to - load_from).days + 1
    all_days = [load_from + timedelta(days=i) for i in range(n_days)]
    costs = np.array([[float(daily.get(d, 0)) for d in all_days]])
    evaluation = detector.series_evaluate(
        costs,
        first_column=history,
        baseline_days=baseline,
        score_threshold=settings.ANOMALY_SCORE_THRESHOLD,
        min_impact=float(monitor.min_impact),
        min_impact_percent=float(monitor.min_impact_percent),
        month_starts=np.array([d.day == 1 for d in all_days]),
    )
    stored = {d["day"]: d for d in anomaly.days if isinstance(d, dict) and "day" in d}
    days = all_days[history:]
    out = {
        "id": anomaly.id,
        "account": anomaly.account_id,
        "account_name": anomaly.account.name,
        "monitor": monitor.name,
        "series": anomaly.series_label,
        "currency": anomaly.currency,
        "status": anomaly.status,
        "start_day": anomaly.start_day,
        "end_day": anomaly.end_day,
        "impact": _money(anomaly.impact),
        "impact_percent": None if anomaly.impact_percent is None else str(anomaly.impact_percent),
        "days": days,
        "actual": [], "expected": [], "lower": [], "upper": [], "anomalous": [],
        "root_causes": anomaly.root_causes or [],
    }  # fmt: skip
    computed = {"actual": evaluation.actual, "expected": evaluation.expected, "lower": evaluation.lower,
                "upper": evaluation.upper}  # fmt: skip
    for i, day in enumerate(days):
        # The anomaly's own days show what the detector saw then (the data may have been replaced since).
        own = stored.get(day.isoformat())
        for name, array in computed.items():
            value = Decimal(own[name]) if own else Decimal(f"{float(array[0, i]):.6f}")
            out[name].append(_money(max(value, ZERO) if name == "lower" else value))
        out["anomalous"].append(bool(own) and anomaly.start_day <= day <= anomaly.end_day)
    return out


# --- savings --------------------------------------------------------------------------------------------------


def rule_title(rule: str) -> str:
    found = RULES_BY_NAME.get(rule)
    return found.title if found else rule.replace("_", " ").capitalize()


def savings_dashboard(user, *, account: int | None, limit: int) -> dict:
    """Open recommendations' estimated monthly saving by rule and by account (per currency), the totals, and the
    largest open ones."""
    queryset = recommendations_for(user).filter(status=RecommendationStatus.OPEN)
    if account is not None:
        queryset = queryset.filter(account_id=account)
    saving = queryset.exclude(saving_basis=SavingBasis.NONE)
    by_rule = list(
        saving.values("rule", "currency").annotate(total=Sum("estimated_monthly_saving"), count=Count("id"))
        .order_by("-total", "rule")
    )  # fmt: skip
    by_account = list(
        saving.values("account_id", "account__name", "currency")
        .annotate(total=Sum("estimated_monthly_saving"), count=Count("id"))
        .order_by("-total", "account_id")[:limit]
    )
    totals = list(
        saving.values("currency").annotate(total=Sum("estimated_monthly_saving"), count=Count("id")).order_by("-total")
    )
    done = (
        recommendations_for(user)
        .filter(status=RecommendationStatus.DONE, **({"account_id": account} if account is not None else {}))
        .values("currency")
        .annotate(total=Sum(Coalesce("realised_monthly_saving", "estimated_monthly_saving")), count=Count("id"))
        .order_by("-total")
    )
    return {
        "totals": [{"currency": r["currency"], "total": _money(r["total"]), "count": r["count"]} for r in totals],
        "by_rule": [
            {
                "rule": r["rule"],
                "label": rule_title(r["rule"]),
                "currency": r["currency"],
                "total": _money(r["total"]),
                "count": r["count"],
            }
            for r in by_rule
        ],  # fmt: skip
        "by_account": [
            {
                "account": r["account_id"],
                "label": r["account__name"],
                "currency": r["currency"],
                "total": _money(r["total"]),
                "count": r["count"],
            }
            for r in by_account
        ],  # fmt: skip
        "done": [{"currency": r["currency"], "total": _money(r["total"]), "count": r["count"]} for r in done],
    }


def open_recommendations(user, *, account: int | None, limit: int) -> QuerySet[Recommendation]:
    queryset = recommendations_for(user).filter(status=RecommendationStatus.OPEN).select_related("account")
    if account is not None:
        queryset = queryset.filter(account_id=account)
    return queryset.order_by("-estimated_monthly_saving", "id")[:limit]
