"""Network rules: unassociated public IP addresses, idle load balancers."""

from __future__ import annotations

import logging

from django.conf import settings

from .. import cloud_prices as prices
from .base import (
    Context,
    Finding,
    InventoryRule,
    ResourceRow,
    _number,
    _per_hour,
)

logger = logging.getLogger(__name__)


class UnassociatedIps(InventoryRule):
    name = "unassociated_ips"
    title = "Unassociated public IP addresses"
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
    title = "Idle load balancers"
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
