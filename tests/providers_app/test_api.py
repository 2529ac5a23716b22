"""Cloud accounts over the API: credentials are write-only and stored encrypted; writes need model permissions."""

import pytest
from rest_framework.test import APIClient

from providers_app.models import CloudAccount, Credential, Role
from providers_app.services.teams import team_member_set
from tests.factories import CloudAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

SECRET = {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzz"}


@pytest.fixture
def admin_client(default_team):
    """An account admin of the team "Default" (the factories' team)."""
    user = UserFactory(username="account-admin")
    team_member_set(team=default_team, user=user, role=Role.ACCOUNT_ADMIN)
    client = APIClient()
    client.force_authenticate(user)
    return client


def create_account(client, **overrides):
    payload = {"provider": "aws", "name": "prod", "external_id": "123456789012", "credentials": SECRET, **overrides}
    return client.post("/api/v1/accounts/", payload, format="json")


def test_create_stores_the_secret_encrypted_and_never_returns_it(admin_client):
    # when
    response = create_account(admin_client, credential_kind="access_key")
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert "credentials" not in body and "credential_kind" not in body
    assert body["has_credentials"] is True
    assert body["credential_hint"] == "AWS access key …MPLE"  # the key id's last 4, nothing of the secret key
    assert "wJalr" not in response.content.decode() and "AKIA" not in response.content.decode()
    credential = Credential.objects.get(account_id=body["id"])
    assert credential.get_secret() == SECRET
    assert credential.kind == "access_key"
    assert "wJalr" not in credential.ciphertext


def test_read_shows_hint_only(admin_client, viewer_client):
    # given
    account_id = create_account(admin_client).json()["id"]
    # when
    listing = viewer_client.get("/api/v1/accounts/")
    detail = viewer_client.get(f"/api/v1/accounts/{account_id}/")
    # then
    assert listing.status_code == detail.status_code == 200
    assert listing.json()["results"][0]["name"] == "prod"
    for text in (listing.content.decode(), detail.content.decode()):
        assert "wJalr" not in text and "ciphertext" not in text
    assert detail.json()["has_credentials"] is True


def test_patch_replaces_the_credential_with_a_string(admin_client):
    # given
    account_id = create_account(admin_client).json()["id"]
    # when
    response = admin_client.patch(
        f"/api/v1/accounts/{account_id}/", {"credentials": "a-plain-token-ending-9876"}, format="json"
    )
    # then
    assert response.status_code == 200
    assert response.json()["credential_hint"] == "string secret (not shown)"
    assert Credential.objects.get(account_id=account_id).get_secret() == "a-plain-token-ending-9876"
    assert Credential.objects.filter(account_id=account_id).count() == 1


def test_patch_fields_without_touching_the_credential(admin_client):
    # given
    account_id = create_account(admin_client).json()["id"]
    # when
    response = admin_client.patch(f"/api/v1/accounts/{account_id}/", {"is_active": False}, format="json")
    # then
    assert response.status_code == 200
    assert CloudAccount.objects.get(id=account_id).is_active is False
    assert Credential.objects.get(account_id=account_id).get_secret() == SECRET


def test_account_without_credentials(admin_client):
    # when
    response = create_account(admin_client, credentials=None, provider="focus", name="files")
    # then
    assert response.status_code == 400  # null is not a secret
    response = admin_client.post(
        "/api/v1/accounts/", {"provider": "focus", "name": "files", "settings": {"path": "/data"}}, format="json"
    )
    assert response.status_code == 201
    assert (response.json()["has_credentials"], response.json()["credential_hint"]) == (False, "")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"credentials": ""}, "credentials"),
        ({"credentials": {}}, "credentials"),
        ({"credentials": [1, 2]}, "credentials"),
        ({"provider": "oracle"}, "provider"),
        ({"settings": [1]}, "settings"),
    ],
)
def test_bad_input_is_400(admin_client, payload, field):
    # when
    response = create_account(admin_client, **payload)
    # then
    assert response.status_code == 400
    assert field in response.json()
    assert not CloudAccount.objects.exists()


def test_provider_cannot_change(admin_client):
    # given
    account_id = create_account(admin_client).json()["id"]
    # when
    response = admin_client.patch(f"/api/v1/accounts/{account_id}/", {"provider": "gcp"}, format="json")
    # then
    assert response.status_code == 400
    assert CloudAccount.objects.get(id=account_id).provider == "aws"


def test_viewer_and_operator_may_not_write(viewer_client, operator_client):
    # given
    account = CloudAccountFactory()
    # when
    created = create_account(viewer_client)
    patched = operator_client.patch(f"/api/v1/accounts/{account.id}/", {"name": "renamed"}, format="json")
    # then
    assert created.status_code == patched.status_code == 403
    account.refresh_from_db()
    assert account.name != "renamed"


def test_put_and_delete_are_not_offered():
    # given: a superuser, so the permission check cannot answer first
    account = CloudAccountFactory()
    client = APIClient()
    client.force_authenticate(UserFactory(username="root", is_superuser=True))
    # when
    put = client.put(f"/api/v1/accounts/{account.id}/", {"name": "x"}, format="json")
    delete = client.delete(f"/api/v1/accounts/{account.id}/")
    # then
    assert put.status_code == delete.status_code == 405
    assert CloudAccount.objects.filter(id=account.id).exists()


def test_anonymous_is_401(api_client):
    assert api_client.get("/api/v1/accounts/").status_code == 401
