"""Optimisation recommendations: a catalogue of waste rules over FOCUS cost lines and the resource inventory.

Every rule is one set-based SQL query over all accounts in scope and yields findings with an
estimated monthly saving taken from the cost lines (EffectiveCost, the amortised cost actually
incurred). The window of each account is the last OPTIMIZATION_LOOKBACK_DAYS up to its latest
day with cost data (data arrives late, so the wall clock is not the reference).

Findings are upserted as one Recommendation per rule × account × provider_resource_id; a
recommendation the rule no longer finds is closed with the rule's reason; dismissed and done ones
keep their status (their numbers are still refreshed), and a closed one that applies again reopens.
"""

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import ClassVar

from django.conf import settings
from django.db import connection, transaction

from costs_app.models import RecommendationStatus

logger = logging.getLogger(__name__)

DAYS_PER_MONTH = Decimal("30.4375")  # 365.25 / 12
CENT = Decimal("0.01")


@dataclass
class Finding:
    account_id: int
    provider_resource_id: str
    title: str
    details: dict
    estimated_monthly_saving: Decimal
    currency: str


@dataclass
class Windows:
    """Per account: the [start, end) timestamps of the analysed window."""

    account_ids: list[int]
    starts: list[datetime]
    ends: list[datetime]
    days: int

    def params(self) -> list:
        return [self.account_ids, self.starts, self.ends]


# Every rule's query starts from this: the accounts in scope and their windows.
_WINDOWS_CTE = """
w AS (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS w(account_id, ws, we))
"""


def _monthly(cost: Decimal, span_days: float) -> Decimal:
    """Run rate of `cost` incurred over `span_days`, per month."""
    return (Decimal(cost) * DAYS_PER_MONTH / Decimal(str(max(span_days, 1.0)))).quantize(CENT, rounding=ROUND_HALF_UP)


def _money(value) -> str:
    return str(Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP))


def _query(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


class Rule:
    name: ClassVar[str]
    description: ClassVar[str]
    # Why an open recommendation of this rule is closed when the rule stops finding it.
    closed_reason: ClassVar[str]

    def findings(self, *, windows: Windows, now: datetime) -> list[Finding]:
        raise NotImplementedError


class BilledAfterTermination(Rule):
    name = "billed_after_termination"
    description = (
        "Resources still billed although the inventory marks them terminated, or has not seen them for "
        "OPTIMIZATION_STALE_RESOURCE_DAYS days: forgotten leftovers, or billing for something nobody can find."
    )
    closed_reason = "no longer billed after it left the inventory, or seen in the inventory again"

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.resource_id, r.is_terminated, r.terminated_at, r.last_seen,
           MAX(c.resource_name), MAX(c.service_name), c.billing_currency, SUM(c.effective_cost),
           EXTRACT(EPOCH FROM MAX(c.charge_period_end) - MIN(c.charge_period_start)) / 86400
    FROM costs_app_costlineitem c
    JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we
    JOIN providers_app_resource r ON r.account_id = c.account_id AND r.resource_id = c.resource_id
    WHERE (r.is_terminated OR r.last_seen < %s)
      AND c.charge_period_start >= COALESCE(r.terminated_at, r.last_seen)
    GROUP BY c.account_id, c.resource_id, r.is_terminated, r.terminated_at, r.last_seen, c.billing_currency
    HAVING SUM(c.effective_cost) > 0
    """

    def findings(self, *, windows: Windows, now: datetime) -> list[Finding]:
        stale_before = now - timedelta(days=settings.OPTIMIZATION_STALE_RESOURCE_DAYS)
        out = []
        for acct, rid, terminated, terminated_at, last_seen, rname, service, currency, cost, span in _query(
            self.SQL, [*windows.params(), stale_before]
        ):
            gone = f"terminated {terminated_at:%Y-%m-%d}" if terminated and terminated_at else "terminated"
            if not terminated:
                gone = f"not seen since {last_seen:%Y-%m-%d}"
            out.append(
                Finding(
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
                    estimated_monthly_saving=_monthly(cost, float(span)),
                    currency=currency,
                )
            )
        return out


class IdleResources(Rule):
    name = "idle_resources"
    description = (
        "Resources with usage charges but zero consumed quantity over the whole window: paying for "
        "capacity nobody uses (idle IPs, unattached volumes, provisioned but unused throughput)."
    )
    closed_reason = "usage is consumed again, or the resource is no longer billed"

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.resource_id, MAX(c.resource_name), MAX(c.resource_type), MAX(c.service_name),
           MAX(c.consumed_unit), c.billing_currency, SUM(c.effective_cost),
           EXTRACT(EPOCH FROM MAX(c.charge_period_end) - MIN(c.charge_period_start)) / 86400
    FROM costs_app_costlineitem c
    JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we
    WHERE c.charge_category = 'Usage' AND COALESCE(c.resource_id, '') <> ''
    GROUP BY c.account_id, c.resource_id, c.billing_currency
    -- at least one line reports a quantity: a provider that reports none is not evidence of idleness
    HAVING SUM(c.effective_cost) > 0 AND COUNT(c.consumed_quantity) > 0 AND SUM(ABS(c.consumed_quantity)) = 0
    """

    def findings(self, *, windows: Windows, now: datetime) -> list[Finding]:
        return [
            Finding(
                account_id=acct,
                provider_resource_id=rid,
                title=f"{rname or rid} ({service}) costs money but consumed nothing for {windows.days} days",
                details={
                    "service_name": service,
                    "resource_name": rname or "",
                    "resource_type": rtype or "",
                    "consumed_unit": unit or "",
                    "cost_in_window": _money(cost),
                    "window_days": windows.days,
                    "action": "Release or delete the idle resource, or scale it to zero.",
                },
                estimated_monthly_saving=_monthly(cost, float(span)),
                currency=currency,
            )
            for acct, rid, rname, rtype, service, unit, currency, cost, span in _query(self.SQL, windows.params())
        ]


class CommitmentCoverage(Rule):
    name = "commitment_coverage"
    description = (
        "Steady on-demand compute spend with no commitment discount: the lowest daily on-demand spend of the "
        "window runs every day, so committing to it (savings plan / reservation / CUD) saves the assumed "
        "OPTIMIZATION_COMMITMENT_DISCOUNT_RATE on that floor without risk of paying for unused commitment."
    )
    closed_reason = "on-demand compute is no longer steady (or is now covered by a commitment)"

    # Daily on-demand compute spend per account × service × region; the floor counts only when every
    # day of the window had some (a missing day means the floor is zero: nothing to commit to).
    SQL = f"""
    WITH {_WINDOWS_CTE},
    daily AS (
        SELECT c.account_id, c.service_name, COALESCE(c.region_id, '') AS region, c.billing_currency,
               date_trunc('day', c.charge_period_start) AS day, SUM(c.effective_cost) AS cost
        FROM costs_app_costlineitem c
        JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we
        WHERE c.charge_category = 'Usage' AND c.service_category = 'Compute'
          AND COALESCE(c.pricing_category, 'Standard') = 'Standard' AND COALESCE(c.commitment_discount_id, '') = ''
        GROUP BY 1, 2, 3, 4, 5
    )
    SELECT account_id, service_name, region, billing_currency, MIN(cost), SUM(cost), COUNT(*)
    FROM daily GROUP BY account_id, service_name, region, billing_currency
    HAVING COUNT(*) >= %s AND MIN(cost) > 0
    """

    def findings(self, *, windows: Windows, now: datetime) -> list[Finding]:
        rate = Decimal(str(settings.OPTIMIZATION_COMMITMENT_DISCOUNT_RATE))
        out = []
        for acct, service, region, currency, floor, total, days in _query(self.SQL, [*windows.params(), windows.days]):
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
                    },
                    estimated_monthly_saving=(monthly_floor * rate).quantize(CENT, rounding=ROUND_HALF_UP),
                    currency=currency,
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

    SQL = f"""
    WITH {_WINDOWS_CTE}
    SELECT c.account_id, c.commitment_discount_id, MAX(c.commitment_discount_name), MAX(c.commitment_discount_type),
           MAX(c.service_name), c.billing_currency, SUM(c.effective_cost),
           EXTRACT(EPOCH FROM MAX(c.charge_period_end) - MIN(c.charge_period_start)) / 86400
    FROM costs_app_costlineitem c
    JOIN w ON c.account_id = w.account_id AND c.charge_period_start >= w.ws AND c.charge_period_start < w.we
    WHERE c.commitment_discount_status = 'Unused' AND COALESCE(c.commitment_discount_id, '') <> ''
    GROUP BY c.account_id, c.commitment_discount_id, c.billing_currency
    HAVING SUM(c.effective_cost) > 0
    """

    def findings(self, *, windows: Windows, now: datetime) -> list[Finding]:
        return [
            Finding(
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
                estimated_monthly_saving=_monthly(cost, float(span)),
                currency=currency,
            )
            for acct, cid, cname, ctype, service, currency, cost, span in _query(self.SQL, windows.params())
        ]


RULES: tuple[Rule, ...] = (BilledAfterTermination(), IdleResources(), CommitmentCoverage(), UnusedCommitment())


@dataclass
class OptimizationResult:
    accounts: int = 0
    found: dict[str, int] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    closed: int = 0
    monthly_saving: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def as_dict(self) -> dict:
        return {
            "accounts": self.accounts,
            "found": dict(self.found),
            "created": self.created,
            "updated": self.updated,
            "closed": self.closed,
            "monthly_saving": {currency: str(amount) for currency, amount in sorted(self.monthly_saving.items())},
        }


def _windows(*, account_id: int | None, now: datetime) -> Windows:
    days = settings.OPTIMIZATION_LOOKBACK_DAYS
    rows = _query(
        """
        SELECT r.account_id, MAX(r.day) FROM costs_app_costdailyrollup r
        JOIN providers_app_cloudaccount a ON a.id = r.account_id
        WHERE a.is_active AND r.day <= %s AND (%s::bigint IS NULL OR r.account_id = %s)
        GROUP BY r.account_id ORDER BY r.account_id
        """,
        [now.date(), account_id, account_id],
    )

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time.min, tzinfo=now.tzinfo)

    return Windows(
        account_ids=[acct for acct, _ in rows],
        starts=[midnight(latest - timedelta(days=days - 1)) for _, latest in rows],
        ends=[midnight(latest + timedelta(days=1)) for _, latest in rows],
        days=days,
    )


_UPSERT_SQL = f"""
INSERT INTO costs_app_recommendation AS r
    (account_id, rule, provider_resource_id, resource_id, title, details, estimated_monthly_saving, currency,
     status, status_reason, created_at, updated_at)
SELECT f.account_id, f.rule, f.provider_resource_id,
       (SELECT res.id FROM providers_app_resource res
        WHERE res.account_id = f.account_id AND res.resource_id = f.provider_resource_id),
       f.title, f.details, f.saving, f.currency, '{RecommendationStatus.OPEN}', '', %s, %s
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::jsonb[], %s::numeric[], %s::text[])
     AS f(account_id, rule, provider_resource_id, title, details, saving, currency)
ON CONFLICT (rule, account_id, provider_resource_id) DO UPDATE SET
    resource_id = EXCLUDED.resource_id, title = EXCLUDED.title, details = EXCLUDED.details,
    estimated_monthly_saving = EXCLUDED.estimated_monthly_saving, currency = EXCLUDED.currency,
    updated_at = EXCLUDED.updated_at,
    status = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN '{RecommendationStatus.OPEN}' ELSE r.status END,
    status_reason = CASE WHEN r.status = '{RecommendationStatus.CLOSED}' THEN '' ELSE r.status_reason END
RETURNING (xmax = 0)
"""

_CLOSE_SQL = f"""
UPDATE costs_app_recommendation r
SET status = '{RecommendationStatus.CLOSED}', status_reason = %s, updated_at = %s
WHERE r.rule = %s AND r.account_id = ANY(%s) AND r.status = '{RecommendationStatus.OPEN}'
  AND r.provider_resource_id <> ALL(
      SELECT f.provider_resource_id FROM unnest(%s::bigint[], %s::text[]) AS f(account_id, provider_resource_id)
      WHERE f.account_id = r.account_id
  )
"""


def recommendations_refresh(*, account_id: int | None = None, now: datetime) -> OptimizationResult:
    """Run every rule over the accounts in scope (all active ones, or one) and bring the recommendations up to date."""
    result = OptimizationResult()
    windows = _windows(account_id=account_id, now=now)
    result.accounts = len(windows.account_ids)
    if not windows.account_ids:
        return result
    minimum = Decimal(str(settings.OPTIMIZATION_MIN_MONTHLY_SAVING))
    per_rule = {}
    for rule in RULES:
        per_rule[rule.name] = [
            f for f in rule.findings(windows=windows, now=now) if f.estimated_monthly_saving >= minimum
        ]
        result.found[rule.name] = len(per_rule[rule.name])
        for finding in per_rule[rule.name]:
            result.monthly_saving[finding.currency] += finding.estimated_monthly_saving
    _store(per_rule, windows, now, result)
    return result


@transaction.atomic
def _store(per_rule: dict[str, list[Finding]], windows: Windows, now: datetime, result: OptimizationResult) -> None:
    findings = [(name, f) for name, found in per_rule.items() for f in found]
    with connection.cursor() as cursor:
        if findings:
            cursor.execute(
                _UPSERT_SQL,
                [
                    now,
                    now,
                    [f.account_id for _, f in findings],
                    [name for name, _ in findings],
                    [f.provider_resource_id for _, f in findings],
                    [f.title[:300] for _, f in findings],
                    [json.dumps(f.details) for _, f in findings],
                    [f.estimated_monthly_saving for _, f in findings],
                    [f.currency for _, f in findings],
                ],
            )
            inserted = [row[0] for row in cursor.fetchall()]
            result.created = sum(inserted)
            result.updated = len(inserted) - result.created
        # One statement per rule (a fixed, small number), never one per recommendation.
        for rule in RULES:
            found = per_rule[rule.name]
            cursor.execute(
                _CLOSE_SQL,
                [
                    f"No longer applies ({now:%Y-%m-%d}): {rule.closed_reason}.",
                    now,
                    rule.name,
                    windows.account_ids,
                    [f.account_id for f in found],
                    [f.provider_resource_id for f in found],
                ],
            )
            result.closed += cursor.rowcount
