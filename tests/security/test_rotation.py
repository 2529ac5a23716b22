"""Rotation covers every column that holds ciphertext, and after it the old key can be dropped.

Which columns hold ciphertext is declared once: the EncryptedTextField type (finops.crypto.encrypted_fields()).
These tests check that declaration three ways: by field names that say "secret"/"ciphertext", by scanning every
text and JSON column of a seeded database for Fernet tokens, and by rotating then decrypting with the new key alone.
"""

import hashlib
import hmac
import io

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, models

from costs_app.models import ChannelKind, NotificationChannel
from costs_app.services.notifications import sign, webhook_signing_key
from finops import crypto
from providers_app.models import CloudAccount, Credential
from tests.factories import CloudAccountFactory, NotificationChannelFactory

pytestmark = pytest.mark.django_db

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()

SECRETS = {
    "aws": {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    "azure": {"tenant_id": "t-1111", "client_id": "c-2222", "client_secret": "azure-client-secret-value"},
    "gcp": {
        "type": "service_account",
        "client_email": "finops@proj.iam.gserviceaccount.com",
        "private_key_id": "0123456789abcdef",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----\n",
    },
    "string": "a-plain-string-secret-token",
}
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/slacktokensecret"
WEBHOOK_URL = "https://receiver.example.com/hook?key=webhookpathsecret"
SIGNING_SECRET = "webhook-signing-secret-shared-with-receiver"


def declared() -> set[tuple[str, str]]:
    return {(model._meta.label, field.name) for model, field in crypto.encrypted_fields()}


@pytest.fixture
def seeded(settings):
    """The demo data (seed_demo) plus one secret of every kind, all encrypted under OLD_KEY."""
    settings.ENCRYPTION_KEY = OLD_KEY
    call_command("seed_demo", "--password", "demo-pass-word-1", stdout=io.StringIO())
    credentials = {}
    for provider, secret in SECRETS.items():
        credential = Credential(account=CloudAccountFactory(name=f"rot-{provider}"), kind=provider)
        credential.set_secret(secret)
        credential.save()
        credentials[provider] = credential.pk
    slack = NotificationChannelFactory(kind=ChannelKind.SLACK, target=SLACK_URL)
    webhook = NotificationChannelFactory(kind=ChannelKind.WEBHOOK, target=WEBHOOK_URL)
    webhook.set_signing_secret(SIGNING_SECRET)
    webhook.save()
    email = NotificationChannelFactory(kind=ChannelKind.EMAIL, target="ops@example.com")
    return {"credentials": credentials, "slack": slack.pk, "webhook": webhook.pk, "email": email.pk}


def columns_holding_ciphertext() -> set[tuple[str, str]]:
    """(table, column) of every text/varchar/json column of our database holding a Fernet token anywhere in it."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT table_name, column_name FROM information_schema.columns
               WHERE table_schema = current_schema()
                 AND data_type IN ('text', 'character varying', 'json', 'jsonb')"""
        )
        candidates = cursor.fetchall()
        found = set()
        for table, column in candidates:
            cursor.execute(
                f'SELECT 1 FROM "{table}" WHERE "{column}"::text LIKE %s LIMIT 1',  # names from the catalogue
                [f"%{crypto.TOKEN_PREFIX}%"],
            )
            if cursor.fetchone():
                found.add((table, column))
    return found


def as_fields(columns: set[tuple[str, str]]) -> set[tuple[str, str]]:
    by_column = {
        (model._meta.db_table, field.column): (model._meta.label, field.name)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
    }
    return {by_column.get(column, column) for column in columns}


def test_the_declared_ciphertext_fields_are_the_three_known_ones():
    assert declared() == {
        ("providers_app.Credential", "ciphertext"),
        ("costs_app.NotificationChannel", "target_ciphertext"),
        ("costs_app.NotificationChannel", "signing_secret_ciphertext"),
    }


def test_every_field_named_like_a_secret_is_declared_encrypted():
    # A new "…_secret" / "…ciphertext" / "…encrypted…" column of ours must use EncryptedTextField (or be renamed).
    ours = {"providers_app", "costs_app", "tasks_app"}
    suspicious = {
        (model._meta.label, field.name)
        for model in apps.get_models()
        if model._meta.app_label in ours
        for field in model._meta.concrete_fields
        if isinstance(field, models.TextField | models.CharField | models.JSONField | models.BinaryField)
        and any(word in field.name for word in ("secret", "cipher", "encrypt", "token", "password"))
    }
    assert suspicious <= declared(), f"not EncryptedTextField, so never rotated: {sorted(suspicious - declared())}"


def test_in_a_seeded_database_ciphertext_is_only_in_declared_fields(seeded):
    # when: every text and JSON column of every table is searched for Fernet tokens
    holding = as_fields(columns_holding_ciphertext())
    # then: every column found holding ciphertext is one that rotation re-encrypts, and each declared one was seen
    assert holding - declared() == set(), "ciphertext in a field that is not an EncryptedTextField (never rotated)"
    assert holding == declared()


def test_the_scan_finds_ciphertext_put_in_an_undeclared_field(seeded):
    # the safety net above can fail: a token stored in an ordinary column is reported
    CloudAccount.objects.filter(name="rot-aws").update(settings={"api_key": crypto.encrypt("hidden")})
    assert ("providers_app.CloudAccount", "settings") in as_fields(columns_holding_ciphertext()) - declared()


def test_rotation_reencrypts_every_declared_field_and_the_old_key_can_be_removed(settings, seeded):
    # given every secret under OLD_KEY, and the values of every declared column before
    before = {
        (model._meta.label, field.name, pk): value
        for model, field in crypto.encrypted_fields()
        for pk, value in model.objects.values_list("pk", field.name)
        if value
    }
    assert {(label, name) for label, name, _ in before} == declared()
    # when NEW_KEY is put first and the command runs
    settings.ENCRYPTION_KEY = f"{NEW_KEY},{OLD_KEY}"
    out = io.StringIO()
    call_command("rotate_credentials", stdout=out)
    # then, with the old key removed, every declared value decrypts under NEW_KEY alone, and each one changed
    settings.ENCRYPTION_KEY = NEW_KEY
    new_only = Fernet(NEW_KEY.encode())
    for (label, name, pk), old_value in before.items():
        value = apps.get_model(label)._default_manager.values_list(name, flat=True).get(pk=pk)
        assert value != old_value, (label, name, pk)
        new_only.decrypt(value.encode())  # raises InvalidToken if any is still under the old key
    # and every secret reads back as it was written, through the models
    for provider, pk in seeded["credentials"].items():
        assert Credential.objects.get(pk=pk).get_secret() == SECRETS[provider]
    assert NotificationChannel.objects.get(pk=seeded["slack"]).get_target() == SLACK_URL
    webhook = NotificationChannel.objects.get(pk=seeded["webhook"])
    assert webhook.get_target() == WEBHOOK_URL
    assert webhook.get_signing_secret() == SIGNING_SECRET
    # the webhook signature a receiver verifies is still made with the shared secret
    body = b'{"subject": "Budget"}'
    expected = "sha256=" + hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, webhook_signing_key(webhook)) == expected
    assert "signing_secret_ciphertext: 1" in out.getvalue()


def test_without_rotation_the_signing_secret_is_lost_with_the_old_key(settings, seeded):
    # the counterpart: the signing secret (missed by the old command) needs the rotation like the rest
    settings.ENCRYPTION_KEY = NEW_KEY
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        NotificationChannel.objects.get(pk=seeded["webhook"]).get_signing_secret()
