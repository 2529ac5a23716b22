"""Compute rules: idle, stopped, oversized and previous-generation instances, idle databases."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from django.conf import settings

from .. import cloud_prices as prices
from .base import (
    BILLING_PERIOD_FLOOR,
    RUNNING_STATES,
    STOPPED_STATES,
    Context,
    CpuStats,
    Finding,
    InventoryRule,
    MemoryStats,
    ResourceRow,
    Rule,
    _cost_or_list_price,
    _instance_type,
    _monthly,
    _number,
    _parse_time,
    _per_gb_month,
    _query,
    _running_cpu,
)

logger = logging.getLogger(__name__)


class IdleInstances(InventoryRule):
    name = "idle_instances"
    title = "Idle instances"
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
    title = "Stopped instances still billed"
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
     AND c.billing_period_start >= {floor}
    GROUP BY 1, 2, 3
    """.format(floor=BILLING_PERIOD_FLOOR.format(column="since", cte="s"))

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
    itype: prices.InstanceType, stats: CpuStats, headroom: float, memory: MemoryStats | None = None
) -> tuple[prices.InstanceType, float, float, float | None] | None:
    """The cheapest smaller size of the family that runs the p95 with headroom and fits the peak, and the
    projected CPU p95, CPU peak and memory p95 (percent) on it.

    Among sizes with the same vCPU count the most expensive (most memory) is taken: where memory is not measured,
    the target never has less memory per vCPU than the family offers. Where it is (`memory`), the memory used at
    p95 must also stay at most OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT of the target's memory: a smaller size of
    the family has proportionally less, so a low CPU does not make a memory-bound instance oversized.
    """
    if not itype.rightsizable or itype.burstable or stats.p95 is None or stats.peak is None:
        return None
    max_memory = settings.OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT
    if memory is not None and (memory.used.p95 is None or memory.used.p95 > max_memory):
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
        if stats.p95 * scale > target_util or stats.peak * scale > 100:
            continue
        projected_memory = None
        if memory is not None:
            if not t.memory_gib:
                continue  # its memory is unknown: it cannot be shown to fit
            projected_memory = memory.used.p95 * float(memory.memory_gib / t.memory_gib)
            if projected_memory > max_memory:
                continue
        fitting.append((t, stats.p95 * scale, stats.peak * scale, projected_memory))
    return min(fitting, key=lambda f: f[0].hourly_usd) if fitting else None


class Rightsizing(InventoryRule):
    name = "rightsizing"
    title = "Oversized instances"
    description = (
        "Running instances whose CPU fits a smaller size of the same family: on the smaller size the p95 of "
        "hourly CPU must stay under (1 - OPTIMIZATION_RIGHTSIZING_HEADROOM) × 100 % and the peak under 100 % "
        "(over OPTIMIZATION_CPU_DAYS days, OPTIMIZATION_CPU_MIN_COVERAGE of the hours sampled). Where memory use is "
        "measured (Azure VMs), its p95 must also stay at most OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT % of the "
        "smaller size's memory. Families and sizes: costs_app/services/cloud_prices.py (AWS, Azure, GCP common "
        "families; burstable ones excluded)."
    )
    closed_reason = (
        "its CPU (or measured memory) no longer fits a smaller size, it stopped running, or its type changed"
    )
    saving = "its compute cost × (1 − target price / current price) (cost lines, else list prices)"
    setting_names = (
        "OPTIMIZATION_RIGHTSIZING_HEADROOM",
        "OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT",
        "OPTIMIZATION_CPU_DAYS",
        "OPTIMIZATION_CPU_MIN_COVERAGE",
    )
    kind = "instance"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        stats = _running_cpu(ctx, r)
        itype = _instance_type(r)
        if stats is None or itype is None:
            return None
        # Memory use counts only with as many samples as CPU needs; without them the rule judges by CPU alone.
        memory = ctx.memory(r, itype.memory_gib)
        memory = memory if memory is not None and memory.sufficient else None
        target = _downsize_target(itype, stats, settings.OPTIMIZATION_RIGHTSIZING_HEADROOM, memory)
        if target is None:
            return None
        smaller, projected_p95, projected_peak, projected_memory = target
        details = {
            "vcpus": itype.vcpus,
            "recommended_vcpus": smaller.vcpus,
            **stats.as_dict(),
            "projected_cpu_p95": round(projected_p95, 2),
            "projected_cpu_max": round(projected_peak, 2),
        }
        action = f"Change the instance type to {smaller.name} (a stop/start), then watch its CPU."
        if memory is not None and projected_memory is not None:
            details |= {
                **memory.as_dict(),
                "recommended_memory_gib": str(smaller.memory_gib),
                "projected_memory_used_p95_pct": round(projected_memory, 2),
            }
            action = (
                f"Change the instance type to {smaller.name} (a stop/start), then watch its CPU and memory: "
                f"memory use p95 was {memory.used.p95:.0f}% of {memory.memory_gib} GiB, about {projected_memory:.0f}% "
                f"of the {smaller.memory_gib} GiB of {smaller.name}."
            )
        return self.type_change_finding(
            ctx,
            r,
            itype,
            smaller,
            title=f"Downsize {r.label} from {itype.name} to {smaller.name}",
            details=details,
            action=action,
        )


class PreviousGeneration(InventoryRule):
    name = "previous_generation"
    title = "Previous-generation instance types"
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


# RDS "available", Azure SQL "online", Cloud SQL "runnable"; connectors lower-case the provider's state.
DATABASE_UP_STATES = frozenset({"available", "online", "ready", "runnable", "running"})


class IdleDatabases(InventoryRule):
    name = "idle_databases"
    title = "Idle databases"
    description = (
        "Managed databases (RDS, Azure SQL, Cloud SQL) that are up but whose hourly CPU p95 stayed below "
        "OPTIMIZATION_IDLE_CPU_P95 % over the last OPTIMIZATION_CPU_DAYS days (judged only with "
        "OPTIMIZATION_CPU_MIN_COVERAGE of the hours sampled): nobody is querying them."
    )
    closed_reason = "its CPU is no longer idle, it is no longer up, or its CPU data is too sparse to judge"
    saving = "its whole monthly cost (its cost lines; there is no list price for database classes here)"
    setting_names = ("OPTIMIZATION_IDLE_CPU_P95", "OPTIMIZATION_CPU_DAYS", "OPTIMIZATION_CPU_MIN_COVERAGE")
    kind = "database"

    def finding(self, ctx: Context, r: ResourceRow) -> Finding | None:
        if r.state not in DATABASE_UP_STATES:
            return None
        stats = ctx.cpu(r)
        if stats is None or not stats.sufficient or stats.p95 >= settings.OPTIMIZATION_IDLE_CPU_P95:
            return None
        engine = r.attributes.get("engine") or "database"
        instance_class = r.attributes.get("instance_class") or ""
        return self.resource_finding(
            ctx,
            r,
            title=f"Database {r.label} ({engine}{', ' + instance_class if instance_class else ''}) looks unused: "
            f"CPU p95 {stats.p95:.1f}% over {settings.OPTIMIZATION_CPU_DAYS} days",
            details={
                "engine": engine,
                "instance_class": instance_class,
                **stats.as_dict(),
                "action": "Take a final snapshot and delete it, or stop it if it is only needed now and then.",
            },
            list_monthly=None,
        )
