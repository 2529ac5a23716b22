"""Shared fixtures: users with and without the trigger permission, and API clients for them."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from tests.factories import UserFactory


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
