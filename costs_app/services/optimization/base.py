"""Shared parts of the optimisation rules: findings, analysis windows, the inventory and cost context, the Rule
base classes and their helpers (the rules themselves are in the family modules)."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import ClassVar

import numpy as np
from django.conf import settings
from django.db import connection

from costs_app.models import SavingBasis

from .. import cloud_prices as prices

logger = logging.getLogger(__name__)

DAYS_PER_MONTH = Decimal("30.4375")  # 365.25 / 12
CENT = Decimal("0.01")
RUNNING_STATES = frozenset({"running"})
# AWS "stopped", Azure "stopped" (still billed for compute) / "deallocated", GCP "terminated" (= stopped).
STOPPED_STATES = frozenset({"stopped", "deallocated", "terminated", "suspended"})
RESOURCE_GROUP = "resource"


@dataclass
class Finding:
    account_id: int
    provider_resource_id: str
    title: str
    details: dict
    estimated_monthly_saving: Decimal
    currency: str
    monthly_cost: Decimal | None = None
    saving_basis: str = SavingBasis.COST_DATA
    # What realised savings measure once it is done: {"resource_ids": [...]}, {"service_name": ..., "region_id":
    # ...} (compute spend) or {"commitment_discount_id": ...} (its unused part); None: not measurable.
    cost_scope: dict | None = None


@dataclass
class Windows:
    """Per account: the [start, end) timestamps of the analysed window."""

    account_ids: list[int]
    starts: list[datetime]
    ends: list[datetime]
    days: int
    providers: dict[int, str] = field(default_factory=dict)

    def params(self) -> list:
        return [self.account_ids, self.starts, self.ends]

    def named_params(self) -> dict:
        return {"accounts": self.account_ids, "starts": self.starts, "ends": self.ends}

    @cached_property
    def _by_account(self) -> dict[int, tuple[datetime, datetime]]:
        return {acct: (ws, we) for acct, ws, we in zip(self.account_ids, self.starts, self.ends, strict=True)}

    def start(self, account_id: int) -> datetime:
        return self._by_account[account_id][0]

    def end(self, account_id: int) -> datetime:
        return self._by_account[account_id][1]


def _windows_cte(accounts: str, starts: str, ends: str) -> str:
    return (
        f"w AS (SELECT * FROM unnest({accounts}::bigint[], {starts}::timestamptz[], {ends}::timestamptz[])"
        " AS w(account_id, ws, we))"
    )


# Every cost-line query starts from this: the accounts in scope and their windows (Windows.params()) ...
_WINDOWS_CTE = _windows_cte("%s", "%s", "%s")
_NAMED_WINDOWS_CTE = _windows_cte("%(accounts)s", "%(starts)s", "%(ends)s")  # (Windows.named_params())
# ... and reads the cost lines of each account in its window. A line is billed in the period of its charge or a later
# one (corrections), so the billing periods before the earliest window's (less one month of slack) cannot hold
# them: that bound on the partition key lets PostgreSQL skip the older periods (pruned at execution time, the
# subquery's value being known once the query starts).
BILLING_PERIOD_FLOOR = "(SELECT date_trunc('month', min({column})) - interval '1 month' FROM {cte})"
_LINES_IN_WINDOWS = f"""costs_app_costlineitem c
    JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we
     AND c.billing_period_start >= {BILLING_PERIOD_FLOOR.format(column="ws", cte="w")}"""
# often with the days they span.
_SPAN_DAYS = "EXTRACT(EPOCH FROM MAX(c.charge_period_end) - MIN(c.charge_period_start)) / 86400"


def _monthly(cost: Decimal, span_days: float) -> Decimal:
    """Run rate of `cost` incurred over `span_days`, per month."""
    return (Decimal(cost) * DAYS_PER_MONTH / Decimal(str(max(span_days, 1.0)))).quantize(CENT, rounding=ROUND_HALF_UP)


def _cents(value: Decimal) -> Decimal:
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def _money(value) -> str:
    return str(_cents(Decimal(value)))


def _query(sql: str, params: list | dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _parse_time(value) -> datetime | None:
    """An ISO-8601 attribute (connectors write UTC); None when absent or unreadable."""
    if not isinstance(value, str) or not _ISO_RE.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_object(value) -> dict:
    """A jsonb column read by a raw cursor (Django's psycopg setup returns it as text)."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


# --- What the rules read -----------------------------------------------------------------------------------


@dataclass
class ResourceRow:
    id: int
    account_id: int
    provider: str
    resource_id: str
    resource_type: str
    name: str
    region: str
    state: str
    attributes: dict
    first_seen: datetime

    @property
    def label(self) -> str:
        return self.name or self.resource_id

    @property
    def created_at(self) -> datetime:
        return _parse_time(self.attributes.get("created_at")) or self.first_seen

    def age_days(self, now: datetime) -> float:
        return (now - self.created_at).total_seconds() / 86400


@dataclass
class ResourceCost:
    """A resource's cost lines in the window."""

    currency: str
    total: Decimal
    compute: Decimal  # its Compute usage lines: what a size or generation change scales
    span_days: float

    @property
    def monthly(self) -> Decimal:
        return _monthly(self.total, self.span_days)

    @property
    def monthly_compute(self) -> Decimal:
        return _monthly(self.compute, self.span_days)


@dataclass
class CpuStats:
    samples: int
    expected: int
    p95: float | None
    peak: float | None

    @property
    def coverage(self) -> float:
        return self.samples / self.expected if self.expected else 0.0

    @property
    def sufficient(self) -> bool:
        return self.samples > 0 and self.coverage >= settings.OPTIMIZATION_CPU_MIN_COVERAGE

    def as_dict(self) -> dict:
        return {
            "cpu_p95": round(self.p95, 2) if self.p95 is not None else None,
            "cpu_max": round(self.peak, 2) if self.peak is not None else None,
            "cpu_samples": self.samples,
            "cpu_hours_expected": self.expected,
        }


class Context:
    """One optimisation run: its windows and what several rules read, each fetched once."""

    def __init__(self, windows: Windows, now: datetime):
        self.windows = windows
        self.now = now
        self._resources: dict[str, list[ResourceRow]] = {}

    def resources(self, kind: str) -> list[ResourceRow]:
        """Live (not terminated) inventory rows of one RESOURCE_KINDS kind in the accounts in scope."""
        if kind not in self._resources:
            rows = _query(
                """
                SELECT r.id, r.account_id, a.provider, r.resource_id, r.resource_type, r.name, r.region,
                       lower(r.state), r.attributes, r.first_seen
                FROM providers_app_resource r JOIN providers_app_cloudaccount a ON a.id = r.account_id
                WHERE r.account_id = ANY(%s) AND NOT r.is_terminated AND r.resource_type = %s
                ORDER BY r.account_id, r.resource_id
                """,
                [self.windows.account_ids, kind],
            )
            self._resources[kind] = [
                ResourceRow(*row[:8], attributes=_json_object(row[8]), first_seen=row[9]) for row in rows
            ]
        return self._resources[kind]

    def volumes_attached_to(self, account_id: int, instance_id: str) -> list[str]:
        return self._attachments.get((account_id, instance_id), [])

    @cached_property
    def _attachments(self) -> dict[tuple[int, str], list[str]]:
        found = defaultdict(list)
        for v in self.resources("volume"):
            for instance_id in v.attributes.get("attached_to") or []:
                if isinstance(instance_id, str):
                    found[(v.account_id, instance_id)].append(v.resource_id)
        return found

    def volume(self, account_id: int, resource_id: str) -> ResourceRow | None:
        return self._volumes.get((account_id, resource_id))

    @cached_property
    def _volumes(self) -> dict[tuple[int, str], ResourceRow]:
        return {(r.account_id, r.resource_id): r for r in self.resources("volume")}

    @cached_property
    def _costs(self) -> dict[tuple[int, str], ResourceCost]:
        rows = _query(
            f"""
            WITH {_WINDOWS_CTE}
            SELECT c.account_id, c.resource_id, c.billing_currency, SUM(c.effective_cost),
                   COALESCE(SUM(c.effective_cost) FILTER (
                       WHERE c.service_category = 'Compute' AND c.charge_category = 'Usage'), 0),
                   {_SPAN_DAYS}
            FROM {_LINES_IN_WINDOWS}
            WHERE EXISTS (SELECT 1 FROM providers_app_resource r
                          WHERE r.account_id = c.account_id AND r.resource_id = c.resource_id AND NOT r.is_terminated)
            GROUP BY c.account_id, c.resource_id, c.billing_currency
            ORDER BY SUM(c.effective_cost)
            """,
            self.windows.params(),
        )
        # A resource billed in two currencies (rare): the larger one wins (rows come smallest first).
        return {
            (acct, rid): ResourceCost(currency, Decimal(total), Decimal(compute), float(span))
            for acct, rid, currency, total, compute, span in rows
        }

    def cost(self, account_id: int, resource_id: str) -> ResourceCost | None:
        found = self._costs.get((account_id, resource_id))
        return found if found is not None and found.total > 0 else None

    def memory(self, resource: ResourceRow, memory_gib: Decimal | None) -> MemoryStats | None:
        """Memory use over the same hours as cpu(), when the connector reports it and the size's memory is known."""
        return memory_stats(resource.attributes, memory_gib, now=self.now, days=settings.OPTIMIZATION_CPU_DAYS)

    def cpu(self, resource: ResourceRow) -> CpuStats | None:
        """CPU statistics of the resource's hourly samples whose hour ends in (now - OPTIMIZATION_CPU_DAYS, now]."""
        if resource.id not in self._cpu:
            self._cpu[resource.id] = cpu_stats(resource.attributes, now=self.now, days=settings.OPTIMIZATION_CPU_DAYS)
        return self._cpu[resource.id]

    @cached_property
    def _cpu(self) -> dict[int, CpuStats | None]:
        return {}


@dataclass
class MemoryStats:
    """Memory use of an instance in percent of its size's memory: the same statistics as CPU's."""

    used: CpuStats
    memory_gib: Decimal

    @property
    def sufficient(self) -> bool:
        return self.used.sufficient

    def as_dict(self) -> dict:
        return {
            "memory_gib": str(self.memory_gib),
            "memory_used_p95_pct": round(self.used.p95, 2) if self.used.p95 is not None else None,
            "memory_used_max_pct": round(self.used.peak, 2) if self.used.peak is not None else None,
            "memory_samples": self.used.samples,
        }


def cpu_stats(attributes: dict, *, now: datetime, days: int) -> CpuStats | None:
    """p95 (linear interpolation, as PostgreSQL's percentile_cont) and max of the in-window samples, with NumPy.

    Sample i of n (oldest first) covers the hour ending at cpu_hourly_end - (n - 1 - i) hours; null or
    non-numeric samples are missing hours.
    """
    return _hourly_stats(attributes.get("cpu_hourly"), attributes.get("cpu_hourly_end"), now=now, days=days)


def memory_stats(attributes: dict, memory_gib: Decimal | None, *, now: datetime, days: int) -> MemoryStats | None:
    """Memory used in percent (100 × (1 − available / the size's memory)), from memory_available_hourly (bytes, as
    Azure Monitor's "Available Memory Bytes"); None when the connector reports no memory or the size's is unknown."""
    values = attributes.get("memory_available_hourly")
    if not memory_gib or not isinstance(values, list):
        return None
    total = float(memory_gib) * 2**30
    used = [
        min(max(100.0 * (1 - v / total), 0.0), 100.0)
        if isinstance(v, int | float) and not isinstance(v, bool)
        else None
        for v in values
    ]
    stats = _hourly_stats(used, attributes.get("memory_hourly_end"), now=now, days=days)
    return MemoryStats(stats, memory_gib) if stats is not None else None


def _hourly_stats(values, end_value, *, now: datetime, days: int) -> CpuStats | None:
    end = _parse_time(end_value)
    if not isinstance(values, list) or end is None:
        return None
    try:
        samples = np.array(values, dtype=float)  # nulls become NaN
    except (TypeError, ValueError):  # something not a number in the list: keep the numbers only
        samples = np.array([v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan for v in values])
    if samples.ndim != 1:
        return None
    hours_before_end = np.arange(len(samples) - 1, -1, -1, dtype=float)
    hour = 3600.0
    newest = (end - now).total_seconds() / hour  # samples ending after now are ignored (clock skew)
    oldest = (end - (now - timedelta(days=days))).total_seconds() / hour
    kept = samples[(hours_before_end >= newest) & (hours_before_end < oldest) & ~np.isnan(samples)]
    if kept.size == 0:
        return CpuStats(0, days * 24, None, None)
    ordered = np.sort(kept)
    position = 0.95 * (ordered.size - 1)  # linear interpolation between the closest ranks, as percentile_cont
    below = int(position)
    above = min(below + 1, ordered.size - 1)
    p95 = ordered[below] + (ordered[above] - ordered[below]) * (position - below)
    return CpuStats(int(kept.size), days * 24, float(p95), float(ordered[-1]))


def _cost_or_list_price(
    cost: Decimal | None, currency: str | None, list_monthly: Decimal | None
) -> tuple[Decimal, str, str] | None:
    """(monthly amount, currency, basis) from the cost data, else from list prices (USD), else None."""
    if cost is not None and cost > 0:
        return _cents(cost), currency or "USD", SavingBasis.COST_DATA
    if list_monthly is not None and list_monthly > 0:
        return _cents(list_monthly), "USD", SavingBasis.LIST_PRICE
    return None


# --- The catalogue ------------------------------------------------------------------------------------------


def _instance_type(r: ResourceRow) -> prices.InstanceType | None:
    return prices.instance_type(r.provider, r.attributes.get("instance_type", ""))


def _running_cpu(ctx: Context, r: ResourceRow) -> CpuStats | None:
    """The CPU statistics of a running instance, when they have enough samples to judge it by."""
    if r.state not in RUNNING_STATES:
        return None
    stats = ctx.cpu(r)
    return stats if stats is not None and stats.sufficient else None


def _per_gb_month(size: float | None, rate: Decimal | None) -> Decimal | None:
    """A list price per month from a size in GB and a price per GB-month; None when either is unknown."""
    return Decimal(str(size)) * rate if size and rate else None


def _per_hour(hourly: Decimal | None) -> Decimal | None:
    """A list price per month from an hourly one; None when it is unknown."""
    return prices.monthly_usd(hourly) if hourly else None


def _price_ratio(new: prices.InstanceType, old: prices.InstanceType) -> str:
    return str((new.hourly_usd / old.hourly_usd).quantize(Decimal("0.0001")))


class Rule:
    name: ClassVar[str]
    # What people read (lists, admin, API): the name is the stable key.
    title: ClassVar[str]
    description: ClassVar[str]
    # Why an open recommendation of this rule is closed when the rule stops finding it.
    closed_reason: ClassVar[str]
    # How the saving is estimated (the README's table).
    saving: ClassVar[str]
    # The settings that are its thresholds.
    setting_names: ClassVar[tuple[str, ...]] = ()
    # A resource gets one recommendation among the rules of a group: the first in catalogue order.
    group: ClassVar[str | None] = RESOURCE_GROUP
    # False for governance rules: no saving, so OPTIMIZATION_MIN_MONTHLY_SAVING does not filter them.
    reports_saving: ClassVar[bool] = True

    def findings(self, ctx: Context) -> list[Finding]:
        raise NotImplementedError

    def thresholds(self) -> dict:
        return {name: getattr(settings, name) for name in self.setting_names}

    def resource_finding(
        self,
        ctx: Context,
        resource: ResourceRow,
        *,
        title: str,
        details: dict,
        list_monthly: Decimal | None,
        saving_share: Decimal = Decimal(1),
        compute_only: bool = False,
    ) -> Finding | None:
        """A finding on one inventory resource: its monthly cost (cost lines, else list price) × saving_share."""
        cost = ctx.cost(resource.account_id, resource.resource_id)
        amount = (cost.monthly_compute if compute_only else cost.monthly) if cost else None
        return self.estimated_finding(
            resource,
            _cost_or_list_price(amount, cost.currency if cost else None, list_monthly),
            title=title,
            details=details,
            saving_share=saving_share,
        )

    def estimated_finding(
        self,
        resource: ResourceRow,
        estimate: tuple[Decimal, str, str] | None,
        *,
        title: str,
        details: dict,
        saving_share: Decimal = Decimal(1),
        resource_ids: list[str] | None = None,
    ) -> Finding | None:
        """A finding on one inventory resource from its (monthly cost, currency, basis); None without one.

        `resource_ids`: whose cost lines measure the realised saving (default: the resource's own).
        """
        if estimate is None:
            return None
        monthly, currency, basis = estimate
        return Finding(
            account_id=resource.account_id,
            provider_resource_id=resource.resource_id,
            title=title,
            details={
                "resource_type": resource.resource_type,
                "resource_name": resource.name,
                "region": resource.region,
                "state": resource.state,
                **details,
                "thresholds": self.thresholds(),
            },
            estimated_monthly_saving=_cents(monthly * saving_share),
            currency=currency,
            monthly_cost=monthly,
            saving_basis=basis,
            cost_scope={"resource_ids": resource_ids or [resource.resource_id]},
        )

    def run_rate_finding(
        self,
        *,
        account_id: int,
        provider_resource_id: str,
        title: str,
        details: dict,
        currency: str,
        cost: Decimal,
        span_days: float,
        cost_scope: dict,
    ) -> Finding:
        """A finding from cost lines alone: what it saves is the run rate of `cost`, incurred over `span_days`.

        Its details end with the rule's thresholds, when it has any.
        """
        monthly = _monthly(cost, span_days)
        return Finding(
            account_id=account_id,
            provider_resource_id=provider_resource_id,
            title=title,
            details={**details, "thresholds": self.thresholds()} if self.setting_names else details,
            estimated_monthly_saving=monthly,
            currency=currency,
            monthly_cost=monthly,
            cost_scope=cost_scope,
        )


class InventoryRule(Rule):
    """A rule that judges the live inventory resources of one kind one at a time."""

    kind: ClassVar[str]

    def findings(self, ctx: Context) -> list[Finding]:
        return [f for r in ctx.resources(self.kind) if (f := self.finding(ctx, r)) is not None]

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        raise NotImplementedError

    def type_change_finding(
        self,
        ctx: Context,
        r: ResourceRow,
        current: prices.InstanceType,
        target: prices.InstanceType,
        *,
        title: str,
        details: dict,
        action: str,
    ) -> Finding | None:
        """Moving an instance to a cheaper type: its compute cost × (1 − target price / current price)."""
        return self.resource_finding(
            ctx,
            r,
            title=title,
            details={
                "instance_type": current.name,
                "recommended_type": target.name,
                **details,
                "list_price_ratio": _price_ratio(target, current),
                "action": action,
            },
            list_monthly=prices.monthly_usd(current.hourly_usd),
            saving_share=1 - target.hourly_usd / current.hourly_usd,
            compute_only=True,
        )
