"""Teams and roles: memberships keep the user's role groups in line; the selectors scope by role."""

import pytest
from django.contrib.auth.models import Group

from providers_app.models import Role
from providers_app.roles import GROUP_NAMES, PLATFORM_ADMINS_GROUP
from providers_app.selectors import accounts_for, is_platform_admin, teams_for
from providers_app.services.teams import team_member_remove, team_member_set
from tests.factories import CloudAccountFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def role_groups(user) -> set[str]:
    return set(user.groups.filter(name__in=GROUP_NAMES.values()).values_list("name", flat=True))


def test_memberships_put_the_user_in_their_roles_groups_and_take_them_out():
    # given
    alice = UserFactory(username="alice")
    web, data = TeamFactory(name="web"), TeamFactory(name="data")
    # when / then
    team_member_set(team=web, user=alice, role=Role.OPERATOR)
    assert role_groups(alice) == {"Operators"}
    assert alice.has_perm("tasks_app.trigger_tasks") and not alice.has_perm("providers_app.change_cloudaccount")
    team_member_set(team=data, user=alice, role=Role.ACCOUNT_ADMIN)
    assert role_groups(alice) == {"Operators", "Account admins"}
    team_member_set(team=web, user=alice, role=Role.VIEWER)  # a role change replaces the membership's role
    assert role_groups(alice) == {"Viewers", "Account admins"}
    team_member_remove(team=data, user=alice)
    assert role_groups(alice) == {"Viewers"}
    assert not alice.has_perm("providers_app.change_cloudaccount") and alice.has_perm("costs_app.view_budget")
    team_member_remove(team=web, user=alice)
    assert role_groups(alice) == set()
    assert not alice.has_perm("costs_app.view_budget")


def test_accounts_for_scopes_by_team_and_role():
    # given
    web, data = TeamFactory(name="web"), TeamFactory(name="data")
    web_account, data_account = CloudAccountFactory(team=web), CloudAccountFactory(team=data)
    bob = UserFactory(username="bob")
    team_member_set(team=web, user=bob, role=Role.OPERATOR)
    team_member_set(team=data, user=bob, role=Role.VIEWER)
    # then
    assert set(accounts_for(bob)) == {web_account, data_account}
    assert set(accounts_for(bob, role=Role.OPERATOR)) == {web_account}
    assert set(accounts_for(bob, role=Role.ACCOUNT_ADMIN)) == set()
    assert set(teams_for(bob, role=Role.OPERATOR)) == {web}
    # an inactive user, an anonymous one: nothing
    bob.is_active = False
    assert not accounts_for(bob).exists()
    assert not accounts_for(None).exists()


def test_platform_admins_are_superusers_or_hold_the_permission():
    # given
    web_account = CloudAccountFactory(team=TeamFactory(name="web"))
    member = UserFactory(username="member")
    platform = UserFactory(username="platform")
    platform.groups.add(Group.objects.get(name=PLATFORM_ADMINS_GROUP))
    root = UserFactory(username="root", is_superuser=True)
    # then
    assert not is_platform_admin(member)
    assert is_platform_admin(platform) and is_platform_admin(root)
    assert set(accounts_for(platform)) == {web_account}
    assert platform.has_perm("django_celery_beat.change_periodictask")
    assert not platform.has_perm("auth.change_user")  # user management stays with superusers
