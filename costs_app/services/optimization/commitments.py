"""Commitment rules: on-demand spend a commitment would cover, unused commitments."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings

from .base import (
    _LINES_IN_WINDOWS,
    _SPAN_DAYS,
    _WINDOWS_CTE,
    DAYS_PER_MONTH,
    Context,
    Finding,
    Rule,
    _cents,
    _money,
    _monthly,
    _query,
)

logger = logging.getLogger(__name__)


class CommitmentCoverage(Rule):
    name = "commitment_coverage"
    title = "On-demand spend a commitment would cover"
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
    title = "Unused commitments"
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
