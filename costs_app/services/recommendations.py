"""Recommendation lifecycle: users dismiss (with a reason), mark done or reopen; done ones get their realised saving.

The realised saving of a done recommendation compares the monthly run rate of its cost scope (the
resource and, for a stopped instance, its volumes; the compute spend of a service × region for
commitment coverage; the unused part of a commitment) before and after it was marked done:

    before  the OPTIMIZATION_LOOKBACK_DAYS whole days before the day it was marked done
    after   the whole days after that day, up to the account's latest day of cost data, at most
            OPTIMIZATION_LOOKBACK_DAYS (so the figure settles once that much data follows)

and is only stated once OPTIMIZATION_REALISED_MIN_DAYS days of data follow it (until then `realised_note`
says how many there are). The day it was marked done is left out of both: it is half before, half after.
A deleted resource has no cost lines after: its whole baseline is the realised saving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from costs_app.models import RecommendationStatus
from finops.errors import PermanentError

from .optimization import DAYS_PER_MONTH, _cents

OPEN, DISMISSED, DONE, CLOSED = (
    RecommendationStatus.OPEN,
    RecommendationStatus.DISMISSED,
    RecommendationStatus.DONE,
    RecommendationStatus.CLOSED,
)
# Which status each action starts from.
DISMISS_FROM = (OPEN,)
DONE_FROM = (OPEN, CLOSED)  # closed: the user fixed it before telling us, the run saw it first
REOPEN_FROM = (DISMISSED, DONE)
MAX_REASON = 2000


class RecommendationStateError(PermanentError):
    """The action does not apply to the recommendation's current status."""


@dataclass
class TransitionResult:
    changed: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # id -> its current status
    missing: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "refused": self.refused, "missing": self.missing}


def _transition(*, ids: list[int], allowed: tuple, assignments: str, params: list) -> TransitionResult:
    result = TransitionResult()
    ids = sorted(set(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE costs_app_recommendation SET {assignments} "  # noqa: S608 (assignments are ours)
            "WHERE id = ANY(%s) AND status = ANY(%s) RETURNING id",
            [*params, ids, [str(s) for s in allowed]],
        )
        result.changed = sorted(row[0] for row in cursor.fetchall())
        rest = [i for i in ids if i not in set(result.changed)]
        if rest:
            cursor.execute("SELECT id, status FROM costs_app_recommendation WHERE id = ANY(%s)", [rest])
            result.refused = dict(cursor.fetchall())
            result.missing = [i for i in rest if i not in result.refused]
    return result


def _clean_text(text: str, what: str, *, required: bool) -> str:
    text = (text or "").strip()
    if required and not text:
        raise RecommendationStateError(f"a {what} is required")
    if len(text) > MAX_REASON:
        raise RecommendationStateError(f"the {what} is longer than {MAX_REASON} characters")
    return text


@transaction.atomic
def recommendations_dismiss(*, ids: list[int], reason: str, user=None, now: datetime) -> TransitionResult:
    """Open -> dismissed, with the user's reason; later runs keep it dismissed while the rule still finds it."""
    reason = _clean_text(reason, "reason for dismissing", required=True)
    return _transition(
        ids=ids,
        allowed=DISMISS_FROM,
        assignments="status = %s, status_reason = %s, status_changed_at = %s, status_changed_by_id = %s, "
        "updated_at = %s",
        params=[str(DISMISSED), reason, now, getattr(user, "pk", None), now],
    )


@transaction.atomic
def recommendations_mark_done(*, ids: list[int], note: str = "", user=None, now: datetime) -> TransitionResult:
    """Open (or closed) -> done at `now`; the baseline is measured at once, the realised saving as data follows."""
    note = _clean_text(note, "note", required=False)
    result = _transition(
        ids=ids,
        allowed=DONE_FROM,
        assignments="status = %s, status_reason = %s, status_changed_at = %s, status_changed_by_id = %s, "
        "updated_at = %s, done_at = %s, baseline_monthly_cost = NULL, realised_monthly_saving = NULL, "
        "realised_days = NULL, realised_measured_at = NULL, realised_note = ''",
        params=[str(DONE), note, now, getattr(user, "pk", None), now, now],
    )
    if result.changed:
        realised_savings_measure(ids=result.changed, now=now)
    return result


@transaction.atomic
def recommendations_reopen(*, ids: list[int], user=None, now: datetime) -> TransitionResult:
    """Dismissed or done -> open again (the next run closes it if it no longer applies)."""
    return _transition(
        ids=ids,
        allowed=REOPEN_FROM,
        assignments="status = %s, status_reason = '', status_changed_at = %s, status_changed_by_id = %s, "
        "updated_at = %s, done_at = NULL, baseline_monthly_cost = NULL, realised_monthly_saving = NULL, "
        "realised_days = NULL, realised_measured_at = NULL, realised_note = ''",
        params=[str(OPEN), now, getattr(user, "pk", None), now],
    )


def recommendation_transition_one(*, action: str, recommendation_id: int, user, now: datetime, text: str = ""):
    """One recommendation (the API); RecommendationStateError names its status when the action does not apply."""
    if action == "dismiss":
        result = recommendations_dismiss(ids=[recommendation_id], reason=text, user=user, now=now)
        allowed = DISMISS_FROM
    elif action == "done":
        result = recommendations_mark_done(ids=[recommendation_id], note=text, user=user, now=now)
        allowed = DONE_FROM
    elif action == "reopen":
        result = recommendations_reopen(ids=[recommendation_id], user=user, now=now)
        allowed = REOPEN_FROM
    else:  # pragma: no cover - the callers pass one of the three
        raise ValueError(action)
    if result.refused:
        status = result.refused[recommendation_id]
        raise RecommendationStateError(
            f"recommendation {recommendation_id} is {status}; '{action}' applies to "
            f"{' or '.join(str(s) for s in allowed)} recommendations only"
        )
    return result


# --- Realised savings ---------------------------------------------------------------------------------------

# How each kind of cost scope joins the cost lines (d.key is one key of the scope).
_SCOPE_CONDITIONS = {
    "resource_ids": "c.resource_id = d.key",
    "service_name": (
        "c.service_category = 'Compute' AND c.charge_category = 'Usage' "
        "AND c.service_name || '|' || COALESCE(c.region_id, '') = d.key"
    ),
    "commitment_discount_id": "c.commitment_discount_id = d.key AND c.commitment_discount_status = 'Unused'",
}
_MEASURE_SQL = """
WITH d AS (
    SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                         %s::timestamptz[])
    AS d(rec_id, account_id, key, bs, dd, ae)
)
SELECT d.rec_id,
       COALESCE(SUM(c.effective_cost) FILTER (WHERE c.charge_period_start < d.dd), 0),
       MIN(c.charge_period_start) FILTER (WHERE c.charge_period_start < d.dd),
       COALESCE(SUM(c.effective_cost) FILTER (WHERE c.charge_period_start >= d.dd + interval '1 day'), 0)
FROM d JOIN costs_app_costlineitem c
  ON c.account_id = d.account_id AND {condition}
 AND c.charge_period_start >= d.bs AND c.charge_period_start < d.ae
 -- the partition key's bound: billed in the charge's period or later (see optimization.base)
 AND c.billing_period_start >= (SELECT date_trunc('month', min(bs)) - interval '1 month' FROM d)
GROUP BY d.rec_id
"""


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _scope_keys(scope) -> tuple[str, list[str]] | None:
    if isinstance(scope, str):  # jsonb from a raw cursor is text
        scope = json.loads(scope)
    if not isinstance(scope, dict):
        return None
    if scope.get("resource_ids"):
        return "resource_ids", [str(r) for r in scope["resource_ids"]]
    if "service_name" in scope:
        return "service_name", [f"{scope['service_name']}|{scope.get('region_id') or ''}"]
    if scope.get("commitment_discount_id"):
        return "commitment_discount_id", [str(scope["commitment_discount_id"])]
    return None


def realised_savings_measure(
    *, now: datetime, account_ids: list[int] | None = None, ids: list[int] | None = None
) -> int:
    """Measure baseline and realised saving of the done recommendations in scope; returns how many were measured."""
    lookback = settings.OPTIMIZATION_LOOKBACK_DAYS
    min_days = settings.OPTIMIZATION_REALISED_MIN_DAYS
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT r.id, r.account_id, r.details -> 'cost_scope', r.done_at,
                   (SELECT MAX(day) FROM costs_app_costdailyrollup x WHERE x.account_id = r.account_id AND x.day <= %s)
            FROM costs_app_recommendation r
            WHERE r.status = '{DONE}' AND r.done_at IS NOT NULL
              AND (%s::bigint[] IS NULL OR r.account_id = ANY(%s)) AND (%s::bigint[] IS NULL OR r.id = ANY(%s))
            """,
            [now.date(), account_ids, account_ids, ids, ids],
        )
        recs = cursor.fetchall()
    if not recs:
        return 0
    plans = {}  # rec id -> (scope kind, keys, before start, done day, after end, days after)
    for rec_id, account_id, scope, done_at, latest_day in recs:
        done_day = _midnight(done_at.astimezone(UTC).date())
        after_start = done_day + timedelta(days=1)
        data_end = _midnight(latest_day + timedelta(days=1)) if latest_day else after_start
        after_end = max(min(data_end, after_start + timedelta(days=lookback)), after_start)
        scope_keys = _scope_keys(scope)
        plans[rec_id] = (
            account_id,
            scope_keys,
            done_day - timedelta(days=lookback),
            done_day,
            after_end,
            (after_end - after_start).days,
        )
    sums: dict[int, tuple[Decimal, datetime | None, Decimal]] = {}
    with connection.cursor() as cursor:
        for kind, condition in _SCOPE_CONDITIONS.items():
            rows = [
                (rec_id, account_id, key, bs, dd, ae)
                for rec_id, (account_id, scope_keys, bs, dd, ae, _) in plans.items()
                if scope_keys and scope_keys[0] == kind
                for key in scope_keys[1]
            ]
            if not rows:
                continue
            cursor.execute(
                _MEASURE_SQL.format(condition=condition),
                [list(column) for column in zip(*rows, strict=True)],
            )
            for rec_id, before, first, after in cursor.fetchall():
                sums[rec_id] = (Decimal(before), first, Decimal(after))
    updates = []
    for rec_id, (_, scope_keys, bs, dd, _, days_after) in plans.items():
        baseline = realised = None
        if scope_keys is None:
            note = "not a cost saving: nothing to measure"
        elif rec_id not in sums or sums[rec_id][1] is None:
            note = "no cost lines for it in the days before it was done: nothing to compare with"
        else:
            before, first, after = sums[rec_id]
            before_days = max((dd - max(bs, _midnight(first.astimezone(UTC).date()))).days, 1)
            baseline = _cents(before * DAYS_PER_MONTH / before_days)
            if days_after < min_days:
                note = f"measuring: {days_after} of {min_days} days of cost data after it was done"
            else:
                realised = _cents(baseline - after * DAYS_PER_MONTH / days_after)
                note = f"before: {before_days} days, after: {days_after} days of cost data"
        updates.append((rec_id, baseline, realised, days_after, note))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE costs_app_recommendation r
            SET baseline_monthly_cost = u.baseline, realised_monthly_saving = u.realised, realised_days = u.days,
                realised_note = u.note, realised_measured_at = %s
            FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::int[], %s::text[])
                 AS u(id, baseline, realised, days, note)
            WHERE r.id = u.id
            """,
            [now, *[list(column) for column in zip(*updates, strict=True)]],
        )
    return len(updates)
