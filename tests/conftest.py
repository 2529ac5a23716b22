"""Shared fixtures: users with and without the trigger permission, and API clients for them."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Request-rate counters live in the Redis cache for a minute: each test starts with none of them."""
    clear_throttles()
    yield


def clear_throttles() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    keys = list(client.scan_iter(f"{settings.CACHES['default'].get('KEY_PREFIX', '')}:*:throttle:*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def user(db):
    return UserFactory(username="viewer")


@pytest.fixture
def trigger_user(db):
    operator = UserFactory(username="operator")
    operator.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    return operator


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
