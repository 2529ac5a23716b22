"""Shared fixtures: a viewer and an operator of the team "Default" (where the factories put accounts), a platform
admin, and API clients for them."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from providers_app.models import Role
from providers_app.services.teams import team_default, team_member_set
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Request-rate counters live in the Redis cache for a minute: each test starts with none of them."""
    clear_throttles()
    yield


@pytest.fixture(autouse=True)
def _fresh_answer_cache():
    """GET /tasks/active answers are kept ~1 s per web process (tasks_app/api/answer_cache.py): none across tests."""
    from finops.jwt_auth import token_cache, user_cache
    from tasks_app.api.answer_cache import active_answers

    active_answers.clear()
    user_cache.clear()  # users authenticated by JWT are kept ~1 s per process (finops/jwt_auth.py) as well
    token_cache.clear()  # and the access tokens validated, until they expire
    yield


def clear_throttles() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    keys = list(client.scan_iter(f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:*:throttle:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def default_team(db):
    return team_default()


@pytest.fixture
def user(default_team):
    """A viewer of the team "Default": reads its accounts and everything derived from them."""
    viewer = UserFactory(username="viewer")
    team_member_set(team=default_team, user=viewer, role=Role.VIEWER)
    return viewer


@pytest.fixture
def trigger_user(default_team):
    """An operator of the team "Default": triggers, cancels and replays for its accounts."""
    operator = UserFactory(username="operator")
    team_member_set(team=default_team, user=operator, role=Role.OPERATOR)
    operator.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    return operator


@pytest.fixture
def platform_admin(db):
    """Sees and runs everything, organisation-wide runs and settings included (not a superuser)."""
    from django.contrib.auth.models import Group

    from providers_app.roles import PLATFORM_ADMINS_GROUP

    admin = UserFactory(username="platform-admin", is_staff=True)
    admin.groups.add(Group.objects.get(name=PLATFORM_ADMINS_GROUP))
    return admin


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def viewer_client(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def operator_client(trigger_user):
    client = APIClient()
    client.force_authenticate(trigger_user)
    return client


@pytest.fixture
def platform_client(platform_admin):
    client = APIClient()
    client.force_authenticate(platform_admin)
    return client


@pytest.fixture
def celery_worker_proc(transactional_db, tmp_path):
    """A real worker on every queue, using the test database and the test Redis databases."""
    from tests.celery_procs import flush_broker, start_worker

    flush_broker()
    worker = start_worker(tmp_path)
    yield worker
    worker.stop()


@pytest.fixture
def celery_beat_proc(transactional_db, tmp_path):
    from tests.celery_procs import start_beat

    beat = start_beat(tmp_path)
    yield beat
    beat.stop()
