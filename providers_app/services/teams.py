"""Writes on teams and memberships; a user's role groups always follow their memberships."""

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from ..models import Membership, Role, Team
from ..roles import GROUP_NAMES, role_groups_sync


def _role_groups() -> dict[Role, Group]:
    groups = {g.name: g for g in Group.objects.filter(name__in=GROUP_NAMES.values())}
    if len(groups) < len(GROUP_NAMES):  # e.g. a test database flushed since the migration created them
        role_groups_sync(Group, Permission)
        groups = {g.name: g for g in Group.objects.filter(name__in=GROUP_NAMES.values())}
    return {role: groups[name] for role, name in GROUP_NAMES.items()}


def _user_groups_sync(user) -> None:
    """The user is in the group of every role they hold in some team, and in no other role group."""
    held = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    groups = _role_groups()
    user.groups.remove(*[g for role, g in groups.items() if role.value not in held])
    user.groups.add(*[g for role, g in groups.items() if role.value in held])
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):  # ModelBackend's, on this instance
        user.__dict__.pop(cache, None)


DEFAULT_TEAM = "Default"


@transaction.atomic
def team_create(*, name: str) -> Team:
    return Team.objects.create(name=name)


def team_default() -> Team:
    """The team of accounts created where no one chose one (commands, the data migration's existing accounts)."""
    team, _ = Team.objects.get_or_create(name=DEFAULT_TEAM)
    return team


@transaction.atomic
def team_member_set(*, team: Team, user, role: Role | str) -> Membership:
    """Give `user` the `role` in `team` (adding them if needed) and put them in that role's group."""
    role = Role(role)
    membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role.value})
    _user_groups_sync(user)
    return membership


@transaction.atomic
def team_member_remove(*, team: Team, user) -> None:
    Membership.objects.filter(team=team, user=user).delete()
    _user_groups_sync(user)
