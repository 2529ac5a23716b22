"""Tenancy, read side: which accounts (and so which derived rows) a user may see or act on. Scoping lives here ONCE.

The rule, for the API, the admin and anything else that shows data to a user:
- every queryset of an account-derived model goes through `visible_to(queryset, user, ...)` (or one of the
  app selectors built on it: costs_app.selectors, tasks_app.selectors), never `Model.objects` directly;
- a user's effective right on an object = the Django model permission (`view_*` for reads, `change_*` … for
  writes) AND the team scope: the object's account belongs to a team where the user's role is at least `role`;
- organisation-wide rows (no account: fan-out parents, retention runs, org-wide budgets, monitors and channels)
  are for platform admins only (`is_platform_admin`: a superuser or the providers_app.platform_admin permission).
"""

from django.contrib.auth.models import AnonymousUser
from django.db.models import Model, Q, QuerySet

from .models import CloudAccount, Role, Team
from .roles import PLATFORM_ADMIN_PERMISSION

User = Model  # any auth user model instance (or AnonymousUser)


def is_platform_admin(user: User | AnonymousUser | None) -> bool:
    return bool(user is not None and user.is_authenticated and user.has_perm(PLATFORM_ADMIN_PERMISSION))


def teams_for(user: User | AnonymousUser | None, *, role: Role = Role.VIEWER) -> QuerySet[Team]:
    """Teams where the user's role is at least `role` (every team for a platform admin)."""
    if is_platform_admin(user):
        return Team.objects.all()
    if user is None or not user.is_authenticated or not user.is_active:
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user, memberships__role__in=Role(role).at_least())


def accounts_for(user: User | AnonymousUser | None, *, role: Role = Role.VIEWER) -> QuerySet[CloudAccount]:
    """The accounts of the teams where the user's role is at least `role` (scope only; see visible_to for perms)."""
    if is_platform_admin(user):
        return CloudAccount.objects.all()
    if user is None or not user.is_authenticated or not user.is_active:
        return CloudAccount.objects.none()
    return CloudAccount.objects.filter(
        team__memberships__user=user, team__memberships__role__in=Role(role).at_least()
    ).distinct()


def permitted(queryset: QuerySet, user: User | AnonymousUser | None, permission: str | None = "view") -> QuerySet:
    """`queryset`, or none of it when the user lacks the model permission `<app>.<permission>_<model>`."""
    if user is None or not user.is_authenticated:
        return queryset.none()
    if permission:
        opts = queryset.model._meta
        if not user.has_perm(f"{opts.app_label}.{permission}_{opts.model_name}"):
            return queryset.none()
    return queryset


def visibility_key(
    user: User | AnonymousUser | None, model: type[Model], *, role: Role = Role.VIEWER, permission: str | None = "view"
) -> tuple:
    """A hashable summary of what `visible_to(model.objects.all(), user, role=role, permission=permission)` keeps
    (account-scoped models): users with equal keys see exactly the same rows. For caching an answer per scope, never
    for "anyone": ("none",), ("all",) for platform admins, or ("accounts", the visible account ids)."""
    if user is None or not user.is_authenticated:
        return ("none",)
    opts = model._meta
    if permission and not user.has_perm(f"{opts.app_label}.{permission}_{opts.model_name}"):
        return ("none",)
    if is_platform_admin(user):
        return ("all",)
    return ("accounts", tuple(sorted(accounts_for(user, role=role).values_list("pk", flat=True))))


def visible_for_key(queryset: QuerySet, key: tuple, *, account_path: str = "account") -> QuerySet:
    """The rows a visibility_key() stands for: what visible_to() kept for the user the key was computed for. An answer
    cached under a key is computed from the key itself, so it holds that scope's rows even if the user's memberships
    change in between."""
    if key[0] == "all":
        return queryset
    if key[0] == "accounts":
        return queryset.filter(**{f"{account_path}__in": list(key[1])})
    return queryset.none()


def visible_to(
    queryset: QuerySet,
    user: User | AnonymousUser | None,
    *,
    account_path: str | None = "account",
    role: Role = Role.VIEWER,
    permission: str | None = "view",
) -> QuerySet:
    """`queryset` narrowed to what `user` may see (or act on, with a higher `role` / another `permission`).

    account_path: the lookup from the model to its CloudAccount ("account", "run__account", "" for CloudAccount
    itself); None for organisation-wide models (platform admins only). A row whose account is NULL is
    organisation-wide too. permission: the model permission action required too ("view", "change", ...), or
    None when the caller checked it already (e.g. the admin's own has_*_permission).
    """
    queryset = permitted(queryset, user, permission)
    if user is None or not user.is_authenticated or is_platform_admin(user):
        return queryset
    if account_path is None:
        return queryset.none()
    lookup = f"{account_path}__in" if account_path else "pk__in"
    return queryset.filter(Q(**{lookup: accounts_for(user, role=role).values("pk")}))
