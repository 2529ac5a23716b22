"""The run: every rule over the accounts in scope, findings filtered and grouped, recommendations upserted
and closed."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction

from costs_app.models import RecommendationStatus, SavingBasis

from .base import (
    Context,
    Finding,
    Rule,
    Windows,
    _cents,
    _query,
)
from .catalogue import RULES, RULES_BY_NAME

logger = logging.getLogger(__name__)


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
    from ..recommendations import realised_savings_measure

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
            # Nothing to gain is nothing to say: a saving (or, for governance rules, the spend concerned) that
            # rounds to 0.00 is never raised, whatever OPTIMIZATION_MIN_MONTHLY_SAVING says.
            amount = finding.estimated_monthly_saving if rule.reports_saving else (finding.monthly_cost or 0)
            if _cents(Decimal(amount)) <= 0:
                why_not[key] = f"it concerns {_cents(Decimal(amount))} {finding.currency}/month: nothing to gain"
                continue
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
            finding.details = {"summary": _summary(rule, finding), **finding.details}
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


_BASIS = {
    SavingBasis.COST_DATA: "from its cost lines",
    SavingBasis.LIST_PRICE: "from list prices: no cost line names it",
}


def _summary(rule: Rule, finding: Finding) -> str:
    """One paragraph a person can act on: what was found, what it is worth, what to do (details hold the evidence)."""
    if rule.reports_saving:
        worth = (
            f"Estimated saving {_cents(finding.estimated_monthly_saving)} {finding.currency} a month "
            f"({_BASIS.get(finding.saving_basis, 'estimated')})."
        )
    else:
        worth = f"It concerns {_cents(Decimal(finding.monthly_cost or 0))} {finding.currency} of spend a month."
    action = finding.details.get("action")
    return " ".join(part for part in (f"{rule.title}: {finding.title}.", worth, action) if part)


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
