"""Hints name a secret without showing any part of it: on the model, in the API, in the admin, and for hints
stored before (the data migrations recompute them)."""

import importlib
import json

import pytest
from django.apps import apps as django_apps
from django.urls import reverse
from rest_framework.test import APIClient

from costs_app.models import ChannelKind, NotificationChannel
from providers_app.credential_hints import credential_hint
from providers_app.models import Credential, Role
from providers_app.services.teams import team_default, team_member_set
from tests.factories import CloudAccountFactory, NotificationChannelFactory, UserFactory

pytestmark = pytest.mark.django_db

AWS_SECRET_KEY = "qzXqSECRETvv/K7qzwwZZ+qxQqzzSECRETxqQzqZ"  # nothing in common with the hints
CASES = [
    # (secret, expected hint, the secret parts none of which may appear)
    (
        {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": AWS_SECRET_KEY},
        "AWS access key …MPLE",
        [AWS_SECRET_KEY],
    ),
    (
        {"aws_access_key_id": "ASIAXYZ0000000001234", "aws_secret_access_key": AWS_SECRET_KEY,
         "aws_session_token": "FwoGZXIvYXdzEBYaDEXAMPLETOKEN"},
        "AWS access key …1234 (temporary)",
        [AWS_SECRET_KEY, "FwoGZXIvYXdzEBYaDEXAMPLETOKEN"],
    ),
    (
        {"role_arn": "arn:aws:iam::123456789012:role/finops", "external_id": "ext-secretish-0001"},
        "AWS role arn:aws:iam::123456789012:role/finops",
        ["ext-secretish-0001"],
    ),
    (
        {"tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "client_id": "0b1c2d3e-aaaa-bbbb-cccc-123456789abc",
         "client_secret": "Q~qzAZSECRETxqvvZZqx", "storage_account_key": "c3RvcmFnZWtleXNlY3JldA=="},
        "Azure service principal 0b1c2d3e-aaaa-bbbb-cccc-123456789abc (tenant 72f988bf-86f1-41af-91ab-2d7cd011db47)",
        ["Q~qzAZSECRETxqvvZZqx", "c3RvcmFnZWtleXNlY3JldA=="],
    ),
    (
        {"storage_sas_token": "sv=2024-01-01&sig=SASsignatureSECRET"},
        "Azure storage SAS token",
        ["SASsignatureSECRET"],
    ),
    (
        {"type": "service_account", "client_email": "finops@proj.iam.gserviceaccount.com",
         "private_key_id": "0123456789abcdef0123", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBAD\n"},
        "GCP service account finops@proj.iam.gserviceaccount.com (key 01234567)",
        ["MIIEvQIBAD"],
    ),
    ("a-plain-token-ending-9876", "string secret (not shown)", ["9876"]),
    ({"api_key": "unknownshapeSECRET"}, "JSON secret with keys api_key", ["unknownshapeSECRET"]),
]  # fmt: skip


def fragments(secret: str, length: int = 4) -> set[str]:
    """Every run of `length` characters of a secret: a hint may contain none of them."""
    return {secret[i : i + length] for i in range(len(secret) - length + 1)}


@pytest.mark.parametrize(("secret", "hint", "secret_parts"), CASES)
def test_credential_hint_names_the_credential_and_shows_no_part_of_the_secret(secret, hint, secret_parts):
    # when
    credential = Credential(account=CloudAccountFactory(), kind="x")
    credential.set_secret(secret)
    credential.save()
    # then
    assert credential.hint == hint == credential_hint(secret)
    for part in secret_parts:
        leaked = {f for f in fragments(part) if f in credential.hint}
        assert not leaked, f"hint {credential.hint!r} shows {leaked} of a secret"


def test_the_api_and_the_admin_show_the_new_hint(admin_client):
    # given an AWS credential created over the API by an account admin
    user = UserFactory(username="account-admin")
    team_member_set(team=team_default(), user=user, role=Role.ACCOUNT_ADMIN)
    client = APIClient()
    client.force_authenticate(user)
    secret = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": AWS_SECRET_KEY}
    body = client.post("/api/v1/accounts/", {"provider": "aws", "name": "prod", "credentials": secret}, format="json")
    assert body.status_code == 201, body.content
    # then
    assert body.json()["credential_hint"] == "AWS access key …MPLE"
    account_id = body.json()["id"]
    page = admin_client.get(reverse("admin:providers_app_cloudaccount_change", args=[account_id])).content.decode()
    assert "AWS access key …MPLE" in page
    assert not {f for f in fragments(AWS_SECRET_KEY) if f in page}


@pytest.mark.parametrize(
    ("kind", "target", "hint"),
    [
        (ChannelKind.SLACK, "https://hooks.slack.com/services/T0AAA/B0BBB/XyZsecretToken1234", "https://hooks.slack.com/…"),
        (ChannelKind.WEBHOOK, "https://ops.example.com/finops?token=abcdsecretwxyz", "https://ops.example.com/…"),
        (ChannelKind.EMAIL, "ops@example.com, cfo@example.com", "ops@example.com, cfo@example.com"),
    ],
)  # fmt: skip
def test_channel_target_hint_is_scheme_and_host_only(kind, target, hint):
    channel = NotificationChannelFactory(kind=kind, target=target)
    assert channel.target_hint == hint
    if kind != ChannelKind.EMAIL:
        path_and_query = target.split("/", 3)[3]
        assert not {f for f in fragments(path_and_query) if f in channel.target_hint}


def run_data_migration(app_label: str, module: str) -> None:
    migration = importlib.import_module(f"{app_label}.migrations.{module}")
    migration.recompute_hints(django_apps, None)


def test_the_data_migrations_recompute_stored_hints_from_the_secret(settings):
    # given hints stored the old way (the last 4 characters of the secret), and one credential whose key is gone
    credential = Credential(account=CloudAccountFactory(), kind="access_key")
    credential.set_secret({"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": AWS_SECRET_KEY})
    credential.save()
    Credential.objects.filter(pk=credential.pk).update(hint="••••EKEY")
    lost = Credential(account=CloudAccountFactory(), kind="access_key")
    lost.ciphertext = "gAAAAABnot-decryptable-with-any-configured-key"
    lost.hint = "••••abcd"
    lost.save()
    slack = NotificationChannelFactory(kind=ChannelKind.SLACK, target="https://hooks.slack.com/services/T/B/tok9876")
    NotificationChannel.objects.filter(pk=slack.pk).update(target_hint="••••9876")
    email = NotificationChannelFactory(kind=ChannelKind.EMAIL, target="ops@example.com")
    # when
    run_data_migration("providers_app", "0004_recompute_credential_hints")
    run_data_migration("costs_app", "0012_recompute_channel_target_hints")
    # then
    assert Credential.objects.get(pk=credential.pk).hint == "AWS access key …MPLE"
    assert Credential.objects.get(pk=lost.pk).hint == ""  # blanked, not left showing part of the secret
    assert NotificationChannel.objects.get(pk=slack.pk).target_hint == "https://hooks.slack.com/…"
    assert NotificationChannel.objects.get(pk=email.pk).target_hint == "ops@example.com"
    assert json.dumps(list(Credential.objects.values_list("hint", flat=True))).count("EKEY") == 0
