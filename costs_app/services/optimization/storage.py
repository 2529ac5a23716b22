"""Storage rules: unattached volumes, orphaned and old snapshots."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings

from .. import cloud_prices as prices
from .base import (
    Context,
    Finding,
    InventoryRule,
    ResourceRow,
    Rule,
    _number,
    _per_gb_month,
    _query,
)

logger = logging.getLogger(__name__)


class UnattachedVolumes(InventoryRule):
    name = "unattached_volumes"
    title = "Unattached volumes"
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
    title = "Orphaned snapshots"
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
    title = "Old snapshots"
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
