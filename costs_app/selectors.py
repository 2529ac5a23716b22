"""Tenancy-scoped reads of the money's models: every queryset shown to a user comes from here.

Built on providers_app.selectors.visible_to (the Django model permission AND the team scope). Budgets and
channels have their own rule: a budget is a team's when all its accounts are (org-wide budgets, with no account,
are for platform admins); a channel is its team's (org-wide channels, no team, are for platform admins).
"""

from datetime import datetime

from django.db import connection
from django.db.models import QuerySet

from providers_app.models import Role
from providers_app.selectors import accounts_for, is_platform_admin, permitted, teams_for, visible_to

from .models import (
    AlertDelivery,
    Anomaly,
    AnomalyMonitor,
    Budget,
    BudgetAlert,
    CostDailyRollup,
    CostLineItem,
    CostMonthRollup,
    CostTagRollup,
    NotificationChannel,
    Recommendation,
)


def cost_lines_for(user, *, role: Role = Role.VIEWER) -> QuerySet[CostLineItem]:
    return visible_to(CostLineItem.objects.all(), user, role=role)


def billing_periods_for(user, *, limit: int = 36) -> list[datetime]:
    """The billing periods (their first instant, newest first) the user's accounts have cost in.

    Read from the daily rollups' (account, billing_period_start) index by a loose index scan: one probe per
    account and period, not a DISTINCT over every rollup row (millions, at a year of a large organisation).
    """
    account_ids = list(accounts_for(user).values_list("id", flat=True))
    if not account_ids:
        return []
    table = CostDailyRollup._meta.db_table
    sql = f"""
        WITH RECURSIVE periods(account_id, start) AS (
            SELECT a, (SELECT max(r.billing_period_start) FROM {table} r WHERE r.account_id = a)
            FROM unnest(%(accounts)s::bigint[]) AS a
            UNION ALL
            SELECT p.account_id,
                   (SELECT max(r.billing_period_start) FROM {table} r
                    WHERE r.account_id = p.account_id AND r.billing_period_start < p.start)
            FROM periods p WHERE p.start IS NOT NULL
        )
        SELECT DISTINCT start FROM periods WHERE start IS NOT NULL ORDER BY start DESC LIMIT %(limit)s
    """  # noqa: S608  (the table name is the model's)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"accounts": account_ids, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


def daily_rollups_for(user, *, role: Role = Role.VIEWER) -> QuerySet[CostDailyRollup]:
    return visible_to(CostDailyRollup.objects.all(), user, role=role)


def month_rollups_for(user, *, role: Role = Role.VIEWER) -> QuerySet[CostMonthRollup]:
    """The monthly sums of the daily rollups the user may see: the daily rollups' view permission and accounts."""
    if user is None or not user.is_authenticated or not user.has_perm("costs_app.view_costdailyrollup"):
        return CostMonthRollup.objects.none()
    return visible_to(CostMonthRollup.objects.all(), user, role=role, permission=None)


def tag_rollups_for(user, *, role: Role = Role.VIEWER) -> QuerySet[CostTagRollup]:
    return visible_to(CostTagRollup.objects.all(), user, role=role)


def recommendations_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[Recommendation]:
    return visible_to(Recommendation.objects.all(), user, role=role, permission=permission)


def anomalies_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[Anomaly]:
    return visible_to(Anomaly.objects.all(), user, role=role, permission=permission)


def anomaly_monitors_for(
    user, *, role: Role = Role.VIEWER, permission: str | None = "view"
) -> QuerySet[AnomalyMonitor]:
    """A monitor of one account is that account's team's; one watching every account (no account) is org-wide."""
    return visible_to(AnomalyMonitor.objects.all(), user, role=role, permission=permission)


def budget_scope(queryset: QuerySet, user, *, role: Role, path: str = "pk") -> QuerySet:
    """`queryset` (of budgets, or rows reaching a budget's id through `path`) narrowed to budgets all of whose
    accounts are the user's (role at least `role`); a budget with no account is org-wide (platform admins)."""
    if is_platform_admin(user):
        return queryset
    through = Budget.accounts.through
    with_accounts = through.objects.values("budget_id")
    outside = through.objects.exclude(cloudaccount_id__in=accounts_for(user, role=role).values("pk")).values(
        "budget_id"
    )
    return queryset.filter(**{f"{path}__in": with_accounts}).exclude(**{f"{path}__in": outside})


def budgets_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[Budget]:
    """Budgets whose accounts are non-empty and all in the user's scope (every budget for a platform admin)."""
    return budget_scope(permitted(Budget.objects.all(), user, permission), user, role=role, path="pk")


def budget_alerts_for(user, *, role: Role = Role.VIEWER) -> QuerySet[BudgetAlert]:
    return budget_scope(permitted(BudgetAlert.objects.all(), user, "view"), user, role=role, path="budget_id")


def alert_deliveries_for(user, *, role: Role = Role.VIEWER) -> QuerySet[AlertDelivery]:
    return budget_scope(permitted(AlertDelivery.objects.all(), user, "view"), user, role=role, path="alert__budget_id")


def channels_for(user, *, role: Role = Role.VIEWER, permission: str | None = "view") -> QuerySet[NotificationChannel]:
    """Channels of the user's teams (role at least `role`); org-wide channels (no team) for platform admins."""
    return channel_scope(permitted(NotificationChannel.objects.all(), user, permission), user, role=role)


def channel_scope(queryset: QuerySet, user, *, role: Role, path: str = "team") -> QuerySet:
    if is_platform_admin(user):
        return queryset
    return queryset.filter(**{f"{path}__in": teams_for(user, role=role).values("pk")})
