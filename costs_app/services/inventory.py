"""Resource inventory of an account: listed from the cloud's APIs by its connector, or, for focus accounts,
derived from its cost lines; either way one set-based upsert, and what is no longer there is marked terminated.

Cloud accounts: the connector lists every resource (see providers_app.connectors.base RESOURCE_ATTRIBUTES);
a resource is terminated when a complete listing no longer has it. A listing that fails part-way raises,
so nothing is marked terminated because of an error.

A resource is what the cost data names by ResourceId. Its attributes (type, region, name, service, tags)
come from its latest cost line; last_seen is its latest ChargePeriodEnd. "Recent" is measured against
the account's data horizon (its latest ChargePeriodEnd, capped at now), not the wall clock: cost exports
lag by days, and an account whose export stopped must not see every resource declared terminated.

Derived from cost lines, a run reads only the lines charged in the last max(stale days, 30) + 31 days before the
horizon (the account's newest lines), not the account's history (20 months of a large account are tens of
millions of lines): a resource whose lines all lie before that is stale anyway and, when already in the
inventory, marked terminated by the last step at its recorded last_seen; one never inventoried before is not
created. A new resource's first_seen is its first line within that window (LEAST keeps an earlier one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from costs_app.models import CostLineItem
from finops.errors import PermanentError
from providers_app.connectors import ResourceSource, get_resource_source
from providers_app.connectors.base import RESOURCE_KINDS
from providers_app.models import CloudAccount, Resource

LINES = CostLineItem._meta.db_table
RESOURCES = Resource._meta.db_table


@dataclass
class DiscoveryResult:
    account_id: int
    horizon: datetime | None = None
    resources_seen: int = 0
    created: int = 0
    updated: int = 0
    terminated: int = 0  # newly marked terminated by this run
    reactivated: int = 0  # marked terminated before, billed again now

    def as_dict(self) -> dict:
        return {
            "account_id": self.account_id,
            "horizon": self.horizon.isoformat() if self.horizon else None,
            "resources_seen": self.resources_seen,
            "created": self.created,
            "updated": self.updated,
            "terminated": self.terminated,
            "reactivated": self.reactivated,
        }


# The longest charge period a line is expected to span (monthly fees): the margin of the bounded reads.
LINE_SPAN = timedelta(days=31)


def stale_after() -> timedelta:
    return timedelta(days=settings.OPTIMIZATION_STALE_RESOURCE_DAYS)


@transaction.atomic
def account_resources_discover(*, account_id: int, now: datetime) -> DiscoveryResult:
    account = CloudAccount.objects.select_for_update().filter(id=account_id).first()
    if account is None:
        raise PermanentError(f"cloud account {account_id} does not exist")
    source = get_resource_source(account)
    if source is not None:
        return _resources_from_source(account, source, now)
    return _resources_from_cost_lines(account, now)


FIELDS = ("resource_id", "resource_type", "service_name", "region", "name", "state")
LIMITS = {"resource_id": 1024, "resource_type": 200, "service_name": 200, "region": 100, "name": 500, "state": 50}


def _listed(source: ResourceSource) -> list[dict]:
    """The connector's complete listing, checked against the resource contract; duplicates are one resource."""
    by_id: dict[str, dict] = {}
    for item in source.resources():
        rid = item.get("resource_id")
        if not rid or not isinstance(rid, str):
            raise PermanentError(f"{source.account.provider} connector listed a resource without an id: {item!r}")
        if item.get("resource_type") not in RESOURCE_KINDS:
            raise PermanentError(f"resource {rid}: unknown kind {item.get('resource_type')!r}")
        row = {name: str(item.get(name) or "")[: LIMITS[name]] for name in FIELDS}
        if len(rid) > LIMITS["resource_id"]:
            raise PermanentError(f"resource id longer than {LIMITS['resource_id']} characters: {rid[:80]}…")
        row["tags"] = {str(k): "" if v is None else str(v) for k, v in (item.get("tags") or {}).items()}
        row["attributes"] = item.get("attributes") or {}
        by_id[rid] = row
    return list(by_id.values())


def _resources_from_source(account: CloudAccount, source: ResourceSource, now: datetime) -> DiscoveryResult:
    result = DiscoveryResult(account_id=account.pk, horizon=now)
    listed = _listed(source)  # raises before anything is written when the listing fails
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {RESOURCES} WHERE account_id = %s AND is_terminated", [account.pk])  # noqa: S608
        was_terminated = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            f"""
            INSERT INTO {RESOURCES} AS r (account_id, resource_id, resource_type, service_name, region, name, state,
                                          tags, attributes, first_seen, last_seen, is_terminated, terminated_at)
            SELECT %(account)s, x.resource_id, x.resource_type, x.service_name, x.region, x.name, x.state,
                   x.tags, x.attributes, %(now)s, %(now)s, false, NULL
            FROM jsonb_to_recordset(%(listed)s::jsonb) AS x(resource_id text, resource_type text, service_name text,
                                                           region text, name text, state text, tags jsonb,
                                                           attributes jsonb)
            ON CONFLICT (account_id, resource_id) DO UPDATE SET
                resource_type = EXCLUDED.resource_type, service_name = EXCLUDED.service_name,
                region = EXCLUDED.region, name = EXCLUDED.name, state = EXCLUDED.state, tags = EXCLUDED.tags,
                attributes = EXCLUDED.attributes, last_seen = EXCLUDED.last_seen,
                is_terminated = false, terminated_at = NULL
            RETURNING id, (xmax = 0) AS inserted
            """,  # noqa: S608
            {"account": account.pk, "now": now, "listed": json.dumps(listed)},
        )
        rows = cursor.fetchall()
        seen_ids = [row[0] for row in rows]
        result.resources_seen = len(rows)
        result.created = sum(1 for _, inserted in rows if inserted)
        result.updated = result.resources_seen - result.created
        result.reactivated = sum(1 for rid, _ in rows if rid in was_terminated)
        cursor.execute(
            f"""
            UPDATE {RESOURCES} SET is_terminated = true, state = 'terminated', terminated_at = %s
            WHERE account_id = %s AND NOT is_terminated AND NOT (id = ANY(%s))
            """,  # noqa: S608
            [now, account.pk, seen_ids],
        )
        result.terminated = cursor.rowcount
    return result


def _resources_from_cost_lines(account: CloudAccount, now: datetime) -> DiscoveryResult:
    result = DiscoveryResult(account_id=account.pk)
    with connection.cursor() as cursor:
        # Bounded reads: the account's newest charge start is one backwards step of each month's
        # (account_id, charge_period_start) index, and every statement below reads only the lines charged from
        # `since` on (the same index; older months' leaves answer with nothing), never the whole history.
        cursor.execute(f"SELECT max(charge_period_start) FROM {LINES} WHERE account_id = %s", [account.pk])  # noqa: S608
        newest_start = cursor.fetchone()[0]
        latest = None
        if newest_start is not None:
            cursor.execute(
                f"SELECT max(charge_period_end) FROM {LINES} WHERE account_id = %s AND charge_period_start >= %s",  # noqa: S608
                [account.pk, newest_start - LINE_SPAN],
            )
            latest = cursor.fetchone()[0]
        result.horizon = min(latest, now) if latest else now
        cutoff = result.horizon - stale_after()
        since = min(result.horizon, newest_start or now) - max(stale_after(), timedelta(days=30)) - LINE_SPAN
        cursor.execute(f"SELECT id FROM {RESOURCES} WHERE account_id = %s AND is_terminated", [account.pk])  # noqa: S608
        was_terminated = {row[0] for row in cursor.fetchall()}
        cursor.execute(
            f"""
            WITH seen AS (
                SELECT resource_id,
                       min(charge_period_start) AS first_seen,
                       max(charge_period_end) AS last_seen,
                       sum(billed_cost) FILTER (WHERE charge_period_start >= %(month_ago)s) AS billed_30d
                FROM {LINES}
                WHERE account_id = %(account)s AND resource_id IS NOT NULL AND charge_period_start >= %(since)s
                GROUP BY resource_id
            ),
            latest AS (
                SELECT DISTINCT ON (resource_id) *
                FROM {LINES}
                WHERE account_id = %(account)s AND resource_id IS NOT NULL AND charge_period_start >= %(since)s
                ORDER BY resource_id, charge_period_end DESC, id DESC
            )
            INSERT INTO {RESOURCES} AS r (account_id, resource_id, resource_type, service_name, region, name, state,
                                          tags, attributes, first_seen, last_seen, is_terminated, terminated_at)
            SELECT %(account)s, l.resource_id, left(coalesce(l.resource_type, ''), 200),
                   left(coalesce(l.service_name, ''), 200), left(coalesce(l.region_id, l.region_name, ''), 100),
                   left(coalesce(l.resource_name, ''), 500),
                   CASE WHEN s.last_seen < %(cutoff)s THEN 'terminated' ELSE 'active' END,
                   CASE WHEN jsonb_typeof(l.tags) = 'object' THEN l.tags ELSE '{{}}'::jsonb END,
                   jsonb_strip_nulls(jsonb_build_object(
                       'service_category', l.service_category, 'sub_account_id', l.sub_account_id,
                       'sub_account_name', l.sub_account_name, 'availability_zone', l.availability_zone,
                       'region_name', l.region_name, 'sku_id', l.sku_id, 'provider_name', l.provider_name,
                       'billing_currency', l.billing_currency, 'billed_cost_30d', trim_scale(s.billed_30d)::text)),
                   s.first_seen, s.last_seen, s.last_seen < %(cutoff)s,
                   CASE WHEN s.last_seen < %(cutoff)s THEN s.last_seen END
            FROM latest l JOIN seen s USING (resource_id)
            ON CONFLICT (account_id, resource_id) DO UPDATE SET
                resource_type = EXCLUDED.resource_type, service_name = EXCLUDED.service_name,
                region = EXCLUDED.region, name = EXCLUDED.name, state = EXCLUDED.state, tags = EXCLUDED.tags,
                attributes = r.attributes || EXCLUDED.attributes,
                first_seen = LEAST(r.first_seen, EXCLUDED.first_seen), last_seen = EXCLUDED.last_seen,
                is_terminated = EXCLUDED.is_terminated,
                terminated_at = CASE WHEN EXCLUDED.is_terminated THEN coalesce(r.terminated_at, EXCLUDED.terminated_at)
                                END
            RETURNING id, (xmax = 0) AS inserted, is_terminated
            """,  # noqa: S608
            {"account": account.pk, "cutoff": cutoff, "month_ago": result.horizon - timedelta(days=30), "since": since},
        )
        rows = cursor.fetchall()
        seen_ids = [row[0] for row in rows]
        result.resources_seen = len(rows)
        result.created = sum(1 for _, inserted, _ in rows if inserted)
        result.updated = result.resources_seen - result.created
        result.terminated = sum(1 for rid, _, terminated in rows if terminated and rid not in was_terminated)
        result.reactivated = sum(1 for rid, _, terminated in rows if not terminated and rid in was_terminated)
        # In the inventory but in no cost line any more (its period was replaced without it): gone.
        cursor.execute(
            f"""
            UPDATE {RESOURCES}
            SET is_terminated = true, state = 'terminated', terminated_at = coalesce(last_seen, %s)
            WHERE account_id = %s AND NOT is_terminated AND NOT (id = ANY(%s))
            """,  # noqa: S608
            [result.horizon, account.pk, seen_ids],
        )
        result.terminated += cursor.rowcount
    return result
