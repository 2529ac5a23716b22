"""Admin actions without permission: view-only staff cannot switch schedules; trigger permission without view of
an account does not start its connection test (admin or API)."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.services.teams import team_member_set
from tasks_app.models import TaskRun
from tests.factories import CloudAccountFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

SCHEDULE_ACTIONS = ("enable_tasks", "disable_tasks", "toggle_tasks")


def staff_with(*codenames: str, username: str):
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def schedules() -> dict[int, bool]:
    return dict(PeriodicTask.objects.values_list("id", "enabled"))


@pytest.mark.parametrize("action", SCHEDULE_ACTIONS)
def test_view_only_staff_cannot_switch_schedules(client, action):
    # given: staff who may view schedules, platform admins included, but not change them
    viewer = staff_with("view_periodictask", "platform_admin", username="schedule-viewer")
    client.force_login(viewer)
    before = schedules()
    some = list(before)[:3]
    # when
    page = client.get(reverse("admin:django_celery_beat_periodictask_changelist"))
    response = client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in some]},
        follow=True,
    )
    # then: the action is neither offered nor run; the schedules are as they were
    assert page.status_code == 200
    assert f'value="{action}"' not in page.content.decode()
    assert response.status_code == 200
    assert schedules() == before


def test_staff_with_change_permission_can_switch_schedules(client):
    # given
    editor = staff_with("view_periodictask", "change_periodictask", "platform_admin", username="schedule-editor")
    client.force_login(editor)
    target = PeriodicTask.objects.get(task="monitor_budget")
    # when
    client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [str(target.pk)]},
    )
    # then
    assert PeriodicTask.objects.get(pk=target.pk).enabled is False


def test_team_staff_do_not_see_schedules_at_all(client):
    # given: an operator of a team (with the model permissions of its role)
    operator = UserFactory(username="team-operator", is_staff=True)
    team_member_set(team=TeamFactory(name="ops"), user=operator, role=Role.ACCOUNT_ADMIN)
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_periodictask", "change_periodictask"]))
    client.force_login(operator)
    before = schedules()
    # when
    page = client.get(reverse("admin:django_celery_beat_periodictask_changelist"))
    client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [str(pk) for pk in before]},
    )
    # then: schedules are organisation-wide, for platform admins
    assert page.status_code == 403
    assert schedules() == before


@pytest.fixture
def trigger_without_view():
    """Holds tasks_app.trigger_tasks (and view of accounts) but is no member of the account's team."""
    user = staff_with("trigger_tasks", "view_cloudaccount", username="trigger-only")
    team_member_set(team=TeamFactory(name="elsewhere"), user=user, role=Role.OPERATOR)
    return user


def test_trigger_without_view_cannot_start_a_connection_test_in_the_admin(client, trigger_without_view):
    # given
    account = CloudAccountFactory(name="not-yours")
    client.force_login(trigger_without_view)
    url = reverse("admin:providers_app_cloudaccount_test_connection", args=[account.pk])
    # when: the "Test connection" button's URL, and the changelist action naming the account
    button = client.post(url)
    client.post(
        reverse("admin:providers_app_cloudaccount_changelist"),
        {"action": "test_connection_now", "_selected_action": [str(account.pk)]},
    )
    # then
    assert button.status_code == 404
    assert not TaskRun.objects.filter(task_name="check_provider_connection").exists()


def test_trigger_without_view_cannot_start_a_connection_test_over_the_api(trigger_without_view):
    # given
    account = CloudAccountFactory(name="not-yours")
    client = APIClient()
    client.force_authenticate(trigger_without_view)
    # when
    response = client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    # then: as if the account did not exist
    assert response.status_code == 404
    assert not TaskRun.objects.exists()


def test_viewer_of_the_team_without_operator_role_cannot_start_it_either(trigger_without_view):
    # given: a member of the account's team, but only a viewer (the trigger permission granted directly)
    account = CloudAccountFactory(name="ours")
    viewer = UserFactory(username="team-viewer")
    team_member_set(team=account.team, user=viewer, role=Role.VIEWER)
    viewer.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    client = APIClient()
    client.force_authenticate(viewer)
    # when
    response = client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    # then
    assert response.status_code == 404
    assert not TaskRun.objects.exists()


def test_operator_of_the_team_starts_it(trigger_user):
    # given: the team "Default"'s operator (conftest) and an account of that team
    account = CloudAccountFactory(name="ours")
    client = APIClient()
    client.force_authenticate(trigger_user)
    # when
    response = client.post(f"/api/v1/accounts/{account.id}/test-connection/")
    # then
    assert response.status_code == 202
    assert TaskRun.objects.get(celery_task_id=response.json()["task_id"]).account == account
