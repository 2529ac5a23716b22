"""Hygiene rules: resources billed after termination, idle billed resources, untagged spend."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.conf import settings

from costs_app.models import SavingBasis

from .base import (
    _LINES_IN_WINDOWS,
    _NAMED_WINDOWS_CTE,
    _SPAN_DAYS,
    _WINDOWS_CTE,
    Context,
    Finding,
    Rule,
    _money,
    _monthly,
    _query,
)

logger = logging.getLogger(__name__)


class BilledAfterTermination(Rule):
    name = "billed_after_termination"
    title = "Billed after termination"
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


class IdleResources(Rule):
    name = "idle_resources"
    title = "Billed resources with no usage"
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
    title = "Spend without an owner tag"
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
