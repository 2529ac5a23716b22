"""Optimisation recommendations: a catalogue of waste rules over the FOCUS cost lines and the resource inventory.

Each rule is a small class (name, description, the settings that are its thresholds, how it estimates the
saving) that returns findings for every account in scope at once: one SQL query per rule, or one query
plus a pass over its rows in Python — never a query per resource. Inventory rules read Resource rows
exactly as the connectors fill them (providers_app/connectors/base.py: RESOURCE_KINDS and
RESOURCE_ATTRIBUTES). Savings come from the resource's recent cost lines (EffectiveCost, the amortised
cost actually incurred); when the cost data has no line for it, from the small list-price table in
cloud_prices.py, and the recommendation says which (`saving_basis`).

The window of each account is the last OPTIMIZATION_LOOKBACK_DAYS up to its latest day with cost data
(data arrives late, so the wall clock is not the reference); inventory ages (stopped since, created at)
are measured against `now`.

A resource gets at most one recommendation from the rules that share a `group`, the first in catalogue
order (an idle instance is not also a rightsizing candidate). Findings are upserted as one Recommendation
per rule × account × provider_resource_id: open ones are refreshed, ones the rules no longer find are
closed with the reason why; dismissed and done ones keep the user's decision (their numbers are still
refreshed), and a closed one that applies again reopens. Done ones get their realised saving measured
(services/recommendations.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import ClassVar

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from costs_app.models import RecommendationStatus, SavingBasis

from . import cloud_prices as prices

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
# ... and reads the cost lines of each account in its window,
_LINES_IN_WINDOWS = """costs_app_costlineitem c
    JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we"""
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

    def cpu(self, resource: ResourceRow) -> CpuStats | None:
        """CPU statistics of the resource's hourly samples whose hour ends in (now - OPTIMIZATION_CPU_DAYS, now]."""
        if resource.id not in self._cpu:
            self._cpu[resource.id] = cpu_stats(resource.attributes, now=self.now, days=settings.OPTIMIZATION_CPU_DAYS)
        return self._cpu[resource.id]

    @cached_property
    def _cpu(self) -> dict[int, CpuStats | None]:
        return {}


def cpu_stats(attributes: dict, *, now: datetime, days: int) -> CpuStats | None:
    """p95 (linear interpolation, as PostgreSQL's percentile_cont) and max of the in-window samples, with NumPy.

    Sample i of n (oldest first) covers the hour ending at cpu_hourly_end - (n - 1 - i) hours; null or
    non-numeric samples are missing hours.
    """
    values = attributes.get("cpu_hourly")
    end = _parse_time(attributes.get("cpu_hourly_end"))
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


class BilledAfterTermination(Rule):
    name = "billed_after_termination"
    description = (
        "Resources still billed although the inventory marks them terminated, or has not seen them for "
        "OPTIMIZATION_STALE_RESOURCE_DAYS days: forgotten leftovers, or billing for something nobody can find."
    )
    closed_reason = "no longer billed after it left the inventory, or seen in the inventory again"
    saving = "run rate of its cost lines since it left the inventory"
    setting_names = ("OPTIMIZATION_STALE_RESOURCE_DAYS",)

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.resource_id, r.is_terminated, r.terminated_at, r.last_seen,
           MAX(c.resource_name), MAX(c.service_name), c.billing_currency, SUM(c.effective_cost), {_SPAN_DAYS}
    FROM {_LINES_IN_WINDOWS}
    JOIN providers_app_resource r ON r.account_id = c.account_id AND r.resource_id = c.resource_id
    WHERE (r.is_terminated OR r.last_seen < %s)
      AND c.charge_period_start >= COALESCE(r.terminated_at, r.last_seen)
    GROUP BY c.account_id, c.resource_id, r.is_terminated, r.terminated_at, r.last_seen, c.billing_currency
    HAVING SUM(c.effective_cost) > 0
    """

    def findings(self, ctx: Context) -> list[Finding]:
        stale_before = ctx.now - timedelta(days=settings.OPTIMIZATION_STALE_RESOURCE_DAYS)
        out = []
        for acct, rid, terminated, terminated_at, last_seen, rname, service, currency, cost, span in _query(
            self.SQL, [*ctx.windows.params(), stale_before]
        ):
            gone = f"terminated {terminated_at:%Y-%m-%d}" if terminated and terminated_at else "terminated"
            if not terminated:
                gone = f"not seen since {last_seen:%Y-%m-%d}"
            out.append(
                self.run_rate_finding(
                    account_id=acct,
                    provider_resource_id=rid,
                    title=f"{rname or rid} ({service}) is {gone} but still billed",
                    details={
                        "service_name": service,
                        "resource_name": rname or "",
                        "inventory_state": "terminated" if terminated else "not seen",
                        "last_seen": last_seen.isoformat() if last_seen else None,
                        "terminated_at": terminated_at.isoformat() if terminated_at else None,
                        "cost_since": _money(cost),
                        "billed_days": round(float(span), 2),
                        "action": "Find and delete the resource (or what keeps billing for it), or fix the inventory.",
                    },
                    currency=currency,
                    cost=cost,
                    span_days=float(span),
                    cost_scope={"resource_ids": [rid]},
                )
            )
        return out


class IdleInstances(InventoryRule):
    name = "idle_instances"
    description = (
        "Running instances whose hourly CPU p95 stayed below OPTIMIZATION_IDLE_CPU_P95 % over the last "
        "OPTIMIZATION_CPU_DAYS days (judged only with OPTIMIZATION_CPU_MIN_COVERAGE of the hours sampled): "
        "stop or terminate them."
    )
    closed_reason = "its CPU is no longer idle, it stopped running, or its CPU data is too sparse to judge"
    saving = "its whole monthly cost (cost lines, else the instance type's list price)"
    setting_names = ("OPTIMIZATION_IDLE_CPU_P95", "OPTIMIZATION_CPU_DAYS", "OPTIMIZATION_CPU_MIN_COVERAGE")
    kind = "instance"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        stats = _running_cpu(ctx, r)
        if stats is None or stats.p95 >= settings.OPTIMIZATION_IDLE_CPU_P95:
            return None
        itype = _instance_type(r)
        return self.resource_finding(
            ctx,
            r,
            title=f"{r.label} ({r.attributes.get('instance_type') or 'instance'}) is idle: "
            f"CPU p95 {stats.p95:.1f}% over {settings.OPTIMIZATION_CPU_DAYS} days",
            details={
                "instance_type": r.attributes.get("instance_type", ""),
                **stats.as_dict(),
                "action": "Stop or terminate the instance (snapshot its volumes first if they matter).",
            },
            list_monthly=prices.monthly_usd(itype.hourly_usd) if itype else None,
        )


class StoppedInstances(Rule):
    name = "stopped_instances"
    description = (
        "Instances stopped for more than OPTIMIZATION_STOPPED_DAYS days whose disks (or, on Azure, the stopped "
        "but not deallocated VM) are still billed: snapshot and delete them."
    )
    closed_reason = "it was started again or deleted, or nothing of it is billed any more"
    saving = (
        "run rate since it stopped of the instance's and its attached volumes' cost lines, else the volumes' "
        "list price per GB-month"
    )
    setting_names = ("OPTIMIZATION_STOPPED_DAYS",)

    SQL = """
    WITH s AS (
        SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
        AS s(account_id, instance_id, resource_id, since, until)
    )
    SELECT s.account_id, s.instance_id, c.billing_currency, SUM(c.effective_cost)
    FROM s JOIN costs_app_costlineitem c
      ON c.account_id = s.account_id AND c.resource_id = s.resource_id
     AND c.charge_period_start >= s.since AND c.charge_period_start < s.until
    GROUP BY 1, 2, 3
    """

    def findings(self, ctx: Context) -> list[Finding]:
        stopped_before = ctx.now - timedelta(days=settings.OPTIMIZATION_STOPPED_DAYS)
        candidates = []
        for r in ctx.resources("instance"):
            stopped_at = _parse_time(r.attributes.get("stopped_at"))
            if r.state in STOPPED_STATES and stopped_at is not None and stopped_at <= stopped_before:
                volumes = [v for v in r.attributes.get("attached_volume_ids") or [] if isinstance(v, str)]
                # a connector may fill only the volumes' side of the attachment
                volumes += [v for v in ctx.volumes_attached_to(r.account_id, r.resource_id) if v not in volumes]
                since = max(stopped_at, ctx.windows.start(r.account_id))
                candidates.append((r, stopped_at, volumes, since, ctx.windows.end(r.account_id)))
        if not candidates:
            return []
        # The cost of the instance and its volumes since it stopped, all candidates in one query.
        columns: tuple[list, ...] = ([], [], [], [], [])
        for r, _, volumes, since, until in candidates:
            for rid in (r.resource_id, *volumes) if since < until else ():
                for column, value in zip(columns, (r.account_id, r.resource_id, rid, since, until), strict=True):
                    column.append(value)
        billed = {
            (acct, iid): (currency, Decimal(cost)) for acct, iid, currency, cost in _query(self.SQL, list(columns))
        }
        out = []
        for r, stopped_at, volumes, since, until in candidates:
            currency, cost = billed.get((r.account_id, r.resource_id), (None, None))
            span = max((until - since).total_seconds() / 86400, 1.0)
            days = (ctx.now - stopped_at).days
            list_monthly = self._list_monthly(ctx, r, volumes)
            finding = self.estimated_finding(
                r,
                _cost_or_list_price(_monthly(cost, span) if cost else None, currency, list_monthly),
                title=f"{r.label} stopped {days} days ago; its storage is still billed",
                details={
                    "instance_type": r.attributes.get("instance_type", ""),
                    "stopped_at": stopped_at.isoformat(),
                    "stopped_days": days,
                    "attached_volume_ids": volumes,
                    "action": "Snapshot what must be kept, then terminate the instance and delete its volumes.",
                },
                resource_ids=[r.resource_id, *volumes],
            )
            if finding is not None:
                out.append(finding)
        return out

    @staticmethod
    def _list_monthly(ctx: Context, r: ResourceRow, volumes: list[str]) -> Decimal:
        """The volumes' list price, plus the VM's on Azure when it is stopped but not deallocated (still billed)."""
        list_monthly = Decimal(0)
        for vid in volumes:
            volume = ctx.volume(r.account_id, vid)
            if volume is None:
                continue
            rate = prices.volume_gb_month_usd(r.provider, volume.attributes.get("volume_type", ""))
            volume_monthly = _per_gb_month(_number(volume.attributes.get("size_gb")), rate)
            if volume_monthly is not None:
                list_monthly += volume_monthly
        itype = _instance_type(r)
        if r.provider == "azure" and r.state == "stopped" and itype:
            list_monthly += prices.monthly_usd(itype.hourly_usd)
        return list_monthly


def _downsize_target(
    itype: prices.InstanceType, stats: CpuStats, headroom: float
) -> tuple[prices.InstanceType, float, float] | None:
    """The cheapest smaller size of the family that runs the p95 with headroom and fits the peak.

    Among sizes with the same vCPU count the most expensive (most memory) is taken: CPU is measured,
    memory is not, so the target never has less memory per vCPU than the family offers.
    """
    if not itype.rightsizable or itype.burstable or stats.p95 is None or stats.peak is None:
        return None
    by_vcpus: dict[int, prices.InstanceType] = {}
    for t in prices.family_members(itype):
        smaller = t.vcpus < itype.vcpus and t.hourly_usd < itype.hourly_usd
        if smaller and (t.vcpus not in by_vcpus or t.hourly_usd > by_vcpus[t.vcpus].hourly_usd):
            by_vcpus[t.vcpus] = t
    target_util = (1 - headroom) * 100
    fitting = []
    for t in by_vcpus.values():
        scale = itype.vcpus / t.vcpus
        if stats.p95 * scale <= target_util and stats.peak * scale <= 100:
            fitting.append((t, stats.p95 * scale, stats.peak * scale))
    return min(fitting, key=lambda f: f[0].hourly_usd) if fitting else None


class Rightsizing(InventoryRule):
    name = "rightsizing"
    description = (
        "Running instances whose CPU fits a smaller size of the same family: on the smaller size the p95 of "
        "hourly CPU must stay under (1 - OPTIMIZATION_RIGHTSIZING_HEADROOM) × 100 % and the peak under 100 % "
        "(over OPTIMIZATION_CPU_DAYS days, OPTIMIZATION_CPU_MIN_COVERAGE of the hours sampled). Families and "
        "sizes: costs_app/services/cloud_prices.py (AWS, Azure, GCP common families; burstable ones excluded)."
    )
    closed_reason = "its CPU no longer fits a smaller size, it stopped running, or its type changed"
    saving = "its compute cost × (1 − target price / current price) (cost lines, else list prices)"
    setting_names = ("OPTIMIZATION_RIGHTSIZING_HEADROOM", "OPTIMIZATION_CPU_DAYS", "OPTIMIZATION_CPU_MIN_COVERAGE")
    kind = "instance"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        stats = _running_cpu(ctx, r)
        itype = _instance_type(r)
        if stats is None or itype is None:
            return None
        target = _downsize_target(itype, stats, settings.OPTIMIZATION_RIGHTSIZING_HEADROOM)
        if target is None:
            return None
        smaller, projected_p95, projected_peak = target
        return self.type_change_finding(
            ctx,
            r,
            itype,
            smaller,
            title=f"Downsize {r.label} from {itype.name} to {smaller.name}",
            details={
                "vcpus": itype.vcpus,
                "recommended_vcpus": smaller.vcpus,
                **stats.as_dict(),
                "projected_cpu_p95": round(projected_p95, 2),
                "projected_cpu_max": round(projected_peak, 2),
            },
            action=f"Change the instance type to {smaller.name} (a stop/start), then watch its CPU.",
        )


class PreviousGeneration(InventoryRule):
    name = "previous_generation"
    description = (
        "Running instances of a previous-generation type (AWS m3/m4/c3/c4/r3/r4/t2/i2, Azure Dv2/Dv3/Dv4/Ev3, GCP "
        "N1) with a cheaper current-generation equivalent of at least the same size (mapping in cloud_prices.py)."
    )
    closed_reason = "it now runs a current-generation type, or stopped running"
    saving = "its compute cost × (1 − new price / old price) (cost lines, else list prices)"
    kind = "instance"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        itype = _instance_type(r)
        if r.state not in RUNNING_STATES or itype is None:
            return None
        newer = prices.previous_generation_replacement(itype)
        if newer is None or newer.hourly_usd >= itype.hourly_usd:
            return None
        return self.type_change_finding(
            ctx,
            r,
            itype,
            newer,
            title=f"Move {r.label} from previous-generation {itype.name} to {newer.name}",
            details={},
            action=f"Change the instance type to {newer.name}: cheaper and faster "
            "(check AMI and driver support first).",
        )


class UnattachedVolumes(InventoryRule):
    name = "unattached_volumes"
    description = (
        "Block storage volumes attached to no instance, older than OPTIMIZATION_UNATTACHED_VOLUME_DAYS days: "
        "snapshot if needed, then delete."
    )
    closed_reason = "it is attached again, or deleted"
    saving = "its monthly cost (cost lines, else size × the volume type's list price per GB-month)"
    setting_names = ("OPTIMIZATION_UNATTACHED_VOLUME_DAYS",)
    kind = "volume"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        attached = r.attributes.get("attached_to")
        if not isinstance(attached, list) or attached or r.state == "in-use":
            return None
        if r.age_days(ctx.now) < settings.OPTIMIZATION_UNATTACHED_VOLUME_DAYS:
            return None
        size = _number(r.attributes.get("size_gb"))
        rate = prices.volume_gb_month_usd(r.provider, r.attributes.get("volume_type", ""))
        return self.resource_finding(
            ctx,
            r,
            title=f"Volume {r.label} ({size or '?'} GiB) is attached to nothing",
            details={
                "size_gb": size,
                "volume_type": r.attributes.get("volume_type", ""),
                "created_at": r.created_at.isoformat(),
                "action": "Snapshot it if the data matters, then delete the volume.",
            },
            list_monthly=_per_gb_month(size, rate),
        )


def _snapshot_list_monthly(r: ResourceRow) -> Decimal | None:
    return _per_gb_month(_number(r.attributes.get("size_gb")), prices.snapshot_gb_month_usd(r.provider))


class OrphanedSnapshots(Rule):
    name = "orphaned_snapshots"
    description = (
        "Snapshots of volumes that no longer exist (terminated, or absent from an inventory that lists volumes), "
        "older than OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS days: nothing restores from them by habit."
    )
    closed_reason = "its source volume exists again, or the snapshot was deleted"
    saving = (
        "its monthly cost (cost lines, else size × list price per GB-month: an upper bound, snapshots are incremental)"
    )
    setting_names = ("OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS",)

    def findings(self, ctx: Context) -> list[Finding]:
        snapshots = [r for r in ctx.resources("snapshot") if r.attributes.get("source_volume_id")]
        if not snapshots:
            return []
        accounts = sorted({r.account_id for r in snapshots})
        volumes = _query(
            """
            SELECT account_id, resource_id, is_terminated, terminated_at FROM providers_app_resource
            WHERE account_id = ANY(%s) AND resource_type = 'volume'
            """,
            [accounts],
        )
        listed = {acct for acct, *_ in volumes}  # accounts whose inventory lists volumes at all
        state = {(acct, rid): (terminated, at) for acct, rid, terminated, at in volumes}
        out = []
        for r in snapshots:
            source = r.attributes["source_volume_id"]
            if r.account_id not in listed or r.age_days(ctx.now) < settings.OPTIMIZATION_ORPHANED_SNAPSHOT_DAYS:
                continue
            terminated, terminated_at = state.get((r.account_id, source), (True, None))
            if not terminated:
                continue
            gone = f"deleted {terminated_at:%Y-%m-%d}" if terminated_at else "no longer exists"
            finding = self.resource_finding(
                ctx,
                r,
                title=f"Snapshot {r.label} is of volume {source}, which {gone}",
                details={
                    "source_volume_id": source,
                    "source_volume_terminated_at": terminated_at.isoformat() if terminated_at else None,
                    "size_gb": _number(r.attributes.get("size_gb")),
                    "created_at": r.created_at.isoformat(),
                    "action": "Delete the snapshot unless it is a deliberate backup (then tag it so).",
                },
                list_monthly=_snapshot_list_monthly(r),
            )
            if finding is not None:
                out.append(finding)
        return out


class OldSnapshots(InventoryRule):
    name = "old_snapshots"
    description = "Snapshots older than OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS days: review and delete, or archive."
    closed_reason = "the snapshot was deleted"
    saving = "its monthly cost (cost lines, else size × list price per GB-month: an upper bound)"
    setting_names = ("OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS",)
    kind = "snapshot"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        age = r.age_days(ctx.now)
        if age <= settings.OPTIMIZATION_SNAPSHOT_MAX_AGE_DAYS:
            return None
        return self.resource_finding(
            ctx,
            r,
            title=f"Snapshot {r.label} is {int(age)} days old",
            details={
                "source_volume_id": r.attributes.get("source_volume_id", ""),
                "size_gb": _number(r.attributes.get("size_gb")),
                "created_at": r.created_at.isoformat(),
                "age_days": int(age),
                "action": "Delete it, or move it to an archive tier if it must be kept.",
            },
            list_monthly=_snapshot_list_monthly(r),
        )


class UnassociatedIps(InventoryRule):
    name = "unassociated_ips"
    description = (
        "Reserved public IP addresses associated with nothing for at least OPTIMIZATION_UNASSOCIATED_IP_DAYS days "
        "(since created): release them."
    )
    closed_reason = "it is associated again, or released"
    saving = "its monthly cost (cost lines, else the provider's idle-address hourly price × 730.5)"
    setting_names = ("OPTIMIZATION_UNASSOCIATED_IP_DAYS",)
    kind = "ip_address"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        if "associated_with" not in r.attributes or r.attributes["associated_with"]:
            return None
        if r.age_days(ctx.now) < settings.OPTIMIZATION_UNASSOCIATED_IP_DAYS:
            return None
        return self.resource_finding(
            ctx,
            r,
            title=f"Public IP {r.attributes.get('address') or r.label} is not associated with anything",
            details={"address": r.attributes.get("address", ""), "action": "Release the address."},
            list_monthly=_per_hour(prices.idle_ip_hour_usd(r.provider)),
        )


class IdleLoadBalancers(InventoryRule):
    name = "idle_load_balancers"
    description = (
        "Load balancers with no targets, or with no day above OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS requests "
        "over the last OPTIMIZATION_IDLE_LB_DAYS days (and at least that old): delete them."
    )
    closed_reason = "it has targets and traffic again, or was deleted"
    saving = "its monthly cost (cost lines, else the load balancer type's hourly list price × 730.5)"
    setting_names = ("OPTIMIZATION_IDLE_LB_DAYS", "OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS")
    kind = "load_balancer"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        days = settings.OPTIMIZATION_IDLE_LB_DAYS
        if r.age_days(ctx.now) < days:
            return None
        targets = _number(r.attributes.get("target_count"))
        daily = [_number(v) for v in r.attributes.get("request_count_daily") or []]
        recent = daily[-days:] if len(daily) >= days else None
        if targets == 0:
            why = "has no targets"
        elif recent is not None and all(
            v is not None and v <= settings.OPTIMIZATION_IDLE_LB_MAX_DAILY_REQUESTS for v in recent
        ):
            why = f"served at most {int(max(recent))} requests a day for {days} days"
        else:
            return None
        return self.resource_finding(
            ctx,
            r,
            title=f"Load balancer {r.label} {why}",
            details={
                "lb_type": r.attributes.get("lb_type", ""),
                "target_count": targets,
                "requests_in_window": int(sum(recent)) if recent else None,
                "action": "Delete the load balancer (and its listeners, target groups and DNS records).",
            },
            list_monthly=_per_hour(prices.load_balancer_hour_usd(r.provider, r.attributes.get("lb_type", ""))),
        )


class IdleResources(Rule):
    name = "idle_resources"
    description = (
        "Resources with usage charges but zero consumed quantity over the whole window: paying for capacity "
        "nobody uses. Works from the cost data alone (FOCUS files without an inventory); a resource an inventory "
        "rule above already reports is left to that rule."
    )
    closed_reason = "usage is consumed again, or the resource is no longer billed"
    saving = "run rate of its cost lines in the window"
    setting_names = ("OPTIMIZATION_LOOKBACK_DAYS",)

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.resource_id, MAX(c.resource_name), MAX(c.resource_type), MAX(c.service_name),
           MAX(c.consumed_unit), c.billing_currency, SUM(c.effective_cost), {_SPAN_DAYS}
    FROM {_LINES_IN_WINDOWS}
    WHERE c.charge_category = 'Usage' AND COALESCE(c.resource_id, '') <> ''
    GROUP BY c.account_id, c.resource_id, c.billing_currency
    -- at least one line reports a quantity: a provider that reports none is not evidence of idleness
    HAVING SUM(c.effective_cost) > 0 AND COUNT(c.consumed_quantity) > 0 AND SUM(ABS(c.consumed_quantity)) = 0
    """

    def findings(self, ctx: Context) -> list[Finding]:
        return [
            self.run_rate_finding(
                account_id=acct,
                provider_resource_id=rid,
                title=f"{rname or rid} ({service}) costs money but consumed nothing for {ctx.windows.days} days",
                details={
                    "service_name": service,
                    "resource_name": rname or "",
                    "resource_type": rtype or "",
                    "consumed_unit": unit or "",
                    "cost_in_window": _money(cost),
                    "window_days": ctx.windows.days,
                    "action": "Release or delete the idle resource, or scale it to zero.",
                },
                currency=currency,
                cost=cost,
                span_days=float(span),
                cost_scope={"resource_ids": [rid]},
            )
            for acct, rid, rname, rtype, service, unit, currency, cost, span in _query(self.SQL, ctx.windows.params())
        ]


class UntaggedSpend(Rule):
    name = "untagged_spend"
    description = (
        "Accounts where more than OPTIMIZATION_UNTAGGED_MAX_SHARE of the spend is on resources lacking one of "
        "OPTIMIZATION_REQUIRED_TAG_KEYS (keys compared case-insensitively; only usage of a resource counts as "
        "untagged, since taxes and fees cannot carry tags): spend nobody can be asked about."
    )
    closed_reason = "the untagged share fell below the threshold"
    saving = "none (governance): monthly_cost is the untagged spend per month"
    setting_names = ("OPTIMIZATION_REQUIRED_TAG_KEYS", "OPTIMIZATION_UNTAGGED_MAX_SHARE")
    group = None
    reports_saving = False

    UNTAGGED = """
        c.charge_category = 'Usage' AND COALESCE(c.resource_id, '') <> ''
        AND (SELECT COUNT(DISTINCT lower(k))
             FROM jsonb_object_keys(CASE WHEN jsonb_typeof(c.tags) = 'object' THEN c.tags ELSE '{}' END) AS k
             WHERE lower(k) = ANY(%(keys)s::text[])) < cardinality(%(keys)s::text[])
    """
    SQL = f"""
    WITH {_NAMED_WINDOWS_CTE}
    SELECT c.account_id, c.billing_currency, SUM(c.effective_cost),
           COALESCE(SUM(c.effective_cost) FILTER (WHERE {UNTAGGED}), 0), {_SPAN_DAYS}
    FROM {_LINES_IN_WINDOWS}
    GROUP BY c.account_id, c.billing_currency
    HAVING SUM(c.effective_cost) > 0
    """
    TOP_SQL = f"""
    WITH {_NAMED_WINDOWS_CTE},
    u AS (
        SELECT c.account_id, c.billing_currency, c.service_name, c.resource_id, SUM(c.effective_cost) AS cost,
               ROW_NUMBER() OVER (PARTITION BY c.account_id, c.billing_currency
                                  ORDER BY SUM(c.effective_cost) DESC) AS n
        FROM {_LINES_IN_WINDOWS}
        WHERE {UNTAGGED}
        GROUP BY 1, 2, 3, 4
    )
    SELECT account_id, billing_currency, service_name, resource_id, cost FROM u WHERE n <= 10 ORDER BY cost DESC
    """

    def findings(self, ctx: Context) -> list[Finding]:
        keys = sorted({k.strip().lower() for k in settings.OPTIMIZATION_REQUIRED_TAG_KEYS if k.strip()})
        if not keys:
            return []
        params = {**ctx.windows.named_params(), "keys": keys}
        ceiling = Decimal(str(settings.OPTIMIZATION_UNTAGGED_MAX_SHARE))
        flagged = {}
        for acct, currency, total, untagged, span in _query(self.SQL, params):
            share = Decimal(untagged) / Decimal(total)
            if share > ceiling:
                flagged[(acct, currency)] = (Decimal(total), Decimal(untagged), share, float(span))
        if not flagged:
            return []
        top = defaultdict(list)
        for acct, currency, service, rid, cost in _query(self.TOP_SQL, params):
            if (acct, currency) in flagged:
                top[(acct, currency)].append({"resource_id": rid, "service_name": service, "cost": _money(cost)})
        out = []
        for (acct, currency), (total, untagged, share, span) in flagged.items():
            monthly = _monthly(untagged, span)
            out.append(
                Finding(
                    account_id=acct,
                    provider_resource_id=f"untagged-spend:{currency}",
                    title=f"{share * 100:.0f}% of spend ({monthly} {currency}/month) lacks tag {' or '.join(keys)}",
                    details={
                        "required_tag_keys": keys,
                        "untagged_share": str(share.quantize(Decimal("0.0001"))),
                        "untagged_in_window": _money(untagged),
                        "total_in_window": _money(total),
                        "top_untagged_resources": top[(acct, currency)],
                        "action": "Tag these resources (or enforce tags with a policy) so their spend has an owner.",
                        "thresholds": self.thresholds(),
                    },
                    estimated_monthly_saving=Decimal("0.00"),
                    currency=currency,
                    monthly_cost=monthly,
                    saving_basis=SavingBasis.NONE,
                    cost_scope=None,
                )
            )
        return out


class CommitmentCoverage(Rule):
    name = "commitment_coverage"
    description = (
        "Steady on-demand compute spend with no commitment discount: the lowest daily on-demand spend of the "
        "window runs every day, so committing to it (savings plan / reservation / CUD) saves the assumed "
        "OPTIMIZATION_COMMITMENT_DISCOUNT_RATE on that floor without risk of paying for unused commitment."
    )
    closed_reason = "on-demand compute is no longer steady (or is now covered by a commitment)"
    saving = "daily on-demand floor × 30.4375 × OPTIMIZATION_COMMITMENT_DISCOUNT_RATE"
    setting_names = ("OPTIMIZATION_COMMITMENT_DISCOUNT_RATE", "OPTIMIZATION_LOOKBACK_DAYS")
    group = None

    # Daily on-demand compute spend per account × service × region; the floor counts only when every
    # day of the window had some (a missing day means the floor is zero: nothing to commit to).
    SQL = f"""
    WITH {_WINDOWS_CTE},
    daily AS (
        SELECT c.account_id, c.service_name, COALESCE(c.region_id, '') AS region, c.billing_currency,
               date_trunc('day', c.charge_period_start) AS day, SUM(c.effective_cost) AS cost
        FROM {_LINES_IN_WINDOWS}
        WHERE c.charge_category = 'Usage' AND c.service_category = 'Compute'
          AND COALESCE(c.pricing_category, 'Standard') = 'Standard' AND COALESCE(c.commitment_discount_id, '') = ''
        GROUP BY 1, 2, 3, 4, 5
    )
    SELECT account_id, service_name, region, billing_currency, MIN(cost), SUM(cost), COUNT(*)
    FROM daily GROUP BY account_id, service_name, region, billing_currency
    HAVING COUNT(*) >= %s AND MIN(cost) > 0
    """

    def findings(self, ctx: Context) -> list[Finding]:
        rate = Decimal(str(settings.OPTIMIZATION_COMMITMENT_DISCOUNT_RATE))
        out = []
        for acct, service, region, currency, floor, total, days in _query(
            self.SQL, [*ctx.windows.params(), ctx.windows.days]
        ):
            monthly_floor = Decimal(floor) * DAYS_PER_MONTH
            out.append(
                Finding(
                    account_id=acct,
                    provider_resource_id=f"commitment:{service}:{region}",
                    title=f"Commit to {_money(Decimal(floor) / 24)}/h of {service} in {region or 'all regions'}",
                    details={
                        "service_name": service,
                        "region_id": region,
                        "daily_on_demand_floor": _money(floor),
                        "on_demand_in_window": _money(total),
                        "days_with_on_demand": days,
                        "suggested_hourly_commitment": _money(Decimal(floor) / 24),
                        "assumed_discount_rate": str(rate),
                        "action": "Buy a savings plan / reservation / committed-use discount covering the floor.",
                        "thresholds": self.thresholds(),
                    },
                    estimated_monthly_saving=_cents(monthly_floor * rate),
                    currency=currency,
                    monthly_cost=_monthly(total, ctx.windows.days),
                    cost_scope={"service_name": service, "region_id": region},
                )
            )
        return out


class UnusedCommitment(Rule):
    name = "unused_commitment"
    description = (
        "Commitment discounts (reservations, savings plans) whose FOCUS CommitmentDiscountStatus is 'Unused': "
        "paid-for commitment nothing ran on."
    )
    closed_reason = "the commitment is fully used again, or has expired"
    saving = "run rate of the unused part of the commitment"
    group = None

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.commitment_discount_id, MAX(c.commitment_discount_name), MAX(c.commitment_discount_type),
           MAX(c.service_name), c.billing_currency, SUM(c.effective_cost), {_SPAN_DAYS}
    FROM {_LINES_IN_WINDOWS}
    WHERE c.commitment_discount_status = 'Unused' AND COALESCE(c.commitment_discount_id, '') <> ''
    GROUP BY c.account_id, c.commitment_discount_id, c.billing_currency
    HAVING SUM(c.effective_cost) > 0
    """

    def findings(self, ctx: Context) -> list[Finding]:
        return [
            self.run_rate_finding(
                account_id=acct,
                provider_resource_id=cid,
                title=f"Unused commitment {cname or cid} ({service})",
                details={
                    "service_name": service,
                    "commitment_discount_name": cname or "",
                    "commitment_discount_type": ctype or "",
                    "unused_cost_in_window": _money(cost),
                    "action": "Move matching workloads onto it, exchange or resell it, and size renewals to real use.",
                },
                currency=currency,
                cost=cost,
                span_days=float(span),
                cost_scope={"commitment_discount_id": cid},
            )
            for acct, cid, cname, ctype, service, currency, cost, span in _query(self.SQL, ctx.windows.params())
        ]


# Catalogue order is priority order within a group.
RULES: tuple[Rule, ...] = (
    BilledAfterTermination(),
    IdleInstances(),
    StoppedInstances(),
    Rightsizing(),
    PreviousGeneration(),
    UnattachedVolumes(),
    OrphanedSnapshots(),
    OldSnapshots(),
    UnassociatedIps(),
    IdleLoadBalancers(),
    IdleResources(),
    UntaggedSpend(),
    CommitmentCoverage(),
    UnusedCommitment(),
)
RULES_BY_NAME = {rule.name: rule for rule in RULES}


def rules_catalogue() -> list[dict]:
    """The rules with their descriptions and current thresholds (API, admin, README)."""
    return [
        {
            "name": rule.name,
            "description": rule.description,
            "saving_estimate": rule.saving,
            "thresholds": rule.thresholds(),
            "group": rule.group,
        }
        for rule in RULES
    ]


# --- The run ------------------------------------------------------------------------------------------------


@dataclass
class OptimizationResult:
    accounts: int = 0
    found: dict[str, int] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    closed: int = 0
    superseded: int = 0
    realised_measured: int = 0
    monthly_saving: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def as_dict(self) -> dict:
        return {
            "accounts": self.accounts,
            "found": dict(self.found),
            "created": self.created,
            "updated": self.updated,
            "closed": self.closed,
            "superseded": self.superseded,
            "realised_measured": self.realised_measured,
            "monthly_saving": {currency: str(amount) for currency, amount in sorted(self.monthly_saving.items())},
        }


def analysis_windows(*, account_id: int | None, now: datetime) -> Windows:
    """Every active account in scope; its window ends with its latest day of cost data (today when it has none)."""
    days = settings.OPTIMIZATION_LOOKBACK_DAYS
    rows = _query(
        """
        SELECT a.id, a.provider,
               (SELECT MAX(r.day) FROM costs_app_costdailyrollup r WHERE r.account_id = a.id AND r.day <= %s)
        FROM providers_app_cloudaccount a
        WHERE a.is_active AND (%s::bigint IS NULL OR a.id = %s)
        ORDER BY a.id
        """,
        [now.date(), account_id, account_id],
    )

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time.min, tzinfo=UTC)

    latest = {acct: day or now.date() for acct, _, day in rows}
    return Windows(
        account_ids=[acct for acct, _, _ in rows],
        starts=[midnight(latest[acct] - timedelta(days=days - 1)) for acct, _, _ in rows],
        ends=[midnight(latest[acct] + timedelta(days=1)) for acct, _, _ in rows],
        days=days,
        providers={acct: provider for acct, provider, _ in rows},
    )


def recommendations_refresh(*, account_id: int | None = None, now: datetime) -> OptimizationResult:
    """Run every rule over the accounts in scope (all active ones, or one) and bring the recommendations up to date."""
    from .recommendations import realised_savings_measure

    result = OptimizationResult()
    windows = analysis_windows(account_id=account_id, now=now)
    result.accounts = len(windows.account_ids)
    if not windows.account_ids:
        return result
    ctx = Context(windows, now)
    minimum = Decimal(str(settings.OPTIMIZATION_MIN_MONTHLY_SAVING))
    per_rule: dict[str, list[Finding]] = {}
    claimed: dict[tuple[str, int, str], str] = {}  # (group, account, resource) -> the rule that reports it
    why_not: dict[tuple[str, int, str], str] = {}  # (rule, account, resource) -> why it is not reported
    for rule in RULES:
        kept = []
        for finding in rule.findings(ctx):
            key = (rule.name, finding.account_id, finding.provider_resource_id)
            if rule.reports_saving and finding.estimated_monthly_saving < minimum:
                why_not[key] = (
                    f"its estimated saving ({finding.estimated_monthly_saving} {finding.currency}/month) is below "
                    f"OPTIMIZATION_MIN_MONTHLY_SAVING ({minimum})"
                )
                continue
            if rule.group is not None:
                group_key = (rule.group, finding.account_id, finding.provider_resource_id)
                if group_key in claimed:
                    why_not[key] = f"superseded by the {claimed[group_key]} recommendation on the same resource"
                    result.superseded += 1
                    continue
                claimed[group_key] = rule.name
            kept.append(finding)
        per_rule[rule.name] = kept
        result.found[rule.name] = len(kept)
        for finding in kept:
            result.monthly_saving[finding.currency] += finding.estimated_monthly_saving
    _store(per_rule, why_not, windows, now, result)
    result.realised_measured = realised_savings_measure(account_ids=windows.account_ids, now=now)
    logger.info(
        "optimisation: %d accounts, %d found, %d created, %d closed",
        result.accounts,
        sum(result.found.values()),
        result.created,
        result.closed,
    )
    return result


_UPSERT_SQL = f"""
INSERT INTO costs_app_recommendation AS r
    (account_id, rule, provider_resource_id, resource_id, title, details, estimated_monthly_saving, currency,
     monthly_cost, saving_basis, status, status_reason, status_changed_at, created_at, updated_at, last_found_at,
     realised_note)
SELECT f.account_id, f.rule, f.provider_resource_id,
       (SELECT res.id FROM providers_app_resource res
        WHERE res.account_id = f.account_id AND res.resource_id = f.provider_resource_id),
       f.title, f.details, f.saving, f.currency, f.monthly_cost, f.basis, '{RecommendationStatus.OPEN}', '', %(now)s,
       %(now)s, %(now)s, %(now)s, ''
FROM unnest(%(accounts)s::bigint[], %(rules)s::text[], %(rids)s::text[], %(titles)s::text[], %(details)s::jsonb[],
            %(savings)s::numeric[], %(currencies)s::text[], %(costs)s::numeric[], %(bases)s::text[])
     AS f(account_id, rule, provider_resource_id, title, details, saving, currency, monthly_cost, basis)
ON CONFLICT (rule, account_id, provider_resource_id) DO UPDATE SET
    resource_id = EXCLUDED.resource_id, title = EXCLUDED.title, details = EXCLUDED.details,
    estimated_monthly_saving = EXCLUDED.estimated_monthly_saving, currency = EXCLUDED.currency,
    monthly_cost = EXCLUDED.monthly_cost, saving_basis = EXCLUDED.saving_basis,
    updated_at = EXCLUDED.updated_at, last_found_at = EXCLUDED.last_found_at,
    status = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN '{RecommendationStatus.OPEN}' ELSE r.status END,
    status_reason = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN '' ELSE r.status_reason END,
    status_changed_by_id = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN NULL
                                ELSE r.status_changed_by_id END,
    status_changed_at = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN EXCLUDED.status_changed_at
                             ELSE r.status_changed_at END
RETURNING (xmax = 0)
"""

_CLOSE_SQL = f"""
UPDATE costs_app_recommendation r
SET status = '{RecommendationStatus.CLOSED}', status_reason = c.reason, status_changed_at = %s,
    status_changed_by_id = NULL, updated_at = %s
FROM unnest(%s::bigint[], %s::text[]) AS c(id, reason)
WHERE r.id = c.id AND r.status = '{RecommendationStatus.OPEN}'
"""


def _close_reason(rule_name: str, resource_state: tuple | None, why_not: str | None, now: datetime) -> str:
    prefix = f"No longer applies ({now:%Y-%m-%d}): "
    rule = RULES_BY_NAME.get(rule_name)
    if rule is None:
        return f"{prefix}the rule {rule_name} is no longer in the catalogue."
    if why_not:
        return f"{prefix}{why_not}."
    if resource_state is not None and resource_state[0]:
        terminated_at = resource_state[1]
        when = f" on {terminated_at:%Y-%m-%d}" if terminated_at else ""
        return f"{prefix}the resource was deleted{when}."
    return f"{prefix}{rule.closed_reason}."


@transaction.atomic
def _store(
    per_rule: dict[str, list[Finding]],
    why_not: dict[tuple[str, int, str], str],
    windows: Windows,
    now: datetime,
    result: OptimizationResult,
) -> None:
    findings = [(name, f) for name, found in per_rule.items() for f in found]
    with connection.cursor() as cursor:
        if findings:
            cursor.execute(
                _UPSERT_SQL,
                {
                    "now": now,
                    "accounts": [f.account_id for _, f in findings],
                    "rules": [name for name, _ in findings],
                    "rids": [f.provider_resource_id for _, f in findings],
                    "titles": [f.title[:300] for _, f in findings],
                    "details": [
                        json.dumps({**f.details, "cost_scope": f.cost_scope}, default=str) for _, f in findings
                    ],
                    "savings": [f.estimated_monthly_saving for _, f in findings],
                    "currencies": [f.currency for _, f in findings],
                    "costs": [f.monthly_cost for _, f in findings],
                    "bases": [str(f.saving_basis) for _, f in findings],
                },
            )
            inserted = [row[0] for row in cursor.fetchall()]
            result.created = sum(inserted)
            result.updated = len(inserted) - result.created
        # Open recommendations in scope the rules did not find this time: closed, each with its reason.
        found = {(name, f.account_id, f.provider_resource_id) for name, f in findings}
        cursor.execute(
            f"""
            SELECT r.id, r.rule, r.account_id, r.provider_resource_id, res.is_terminated, res.terminated_at
            FROM costs_app_recommendation r LEFT JOIN providers_app_resource res ON res.id = r.resource_id
            WHERE r.account_id = ANY(%s) AND r.status = '{RecommendationStatus.OPEN}'
            """,
            [windows.account_ids],
        )
        to_close = [
            (rec_id, _close_reason(rule, (terminated, at) if terminated is not None else None,
                                   why_not.get((rule, acct, rid)), now))
            for rec_id, rule, acct, rid, terminated, at in cursor.fetchall()
            if (rule, acct, rid) not in found
        ]  # fmt: skip
        if to_close:
            cursor.execute(_CLOSE_SQL, [now, now, [c[0] for c in to_close], [c[1] for c in to_close]])
            result.closed = cursor.rowcount
