"""`rotate_credentials`: every stored secret moves to the first key, so the old key can be dropped."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from costs_app.models import ChannelKind, NotificationChannel
from providers_app.models import Credential
from tests.factories import CloudAccountFactory, NotificationChannelFactory

pytestmark = pytest.mark.django_db

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def rotate(*args) -> str:
    out = io.StringIO()
    call_command("rotate_credentials", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def secrets_under_key_a(settings):
    settings.ENCRYPTION_KEY = KEY_A
    credentials = []
    for n in range(3):
        credential = Credential(account=CloudAccountFactory(), kind="access_key")
        credential.set_secret({"secret_access_key": f"secret-{n}-abcdefgh"})
        credential.save()
        credentials.append(credential)
    channels = [
        NotificationChannelFactory(kind=ChannelKind.SLACK, target="https://hooks.slack.com/services/T/B/token1"),
        NotificationChannelFactory(kind=ChannelKind.EMAIL, target="ops@example.com"),
    ]
    return credentials, channels


def test_rotation_moves_every_secret_to_the_first_key(settings, secrets_under_key_a):
    # given secrets encrypted with A, and B put first
    credentials, channels = secrets_under_key_a
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    # when
    out = rotate()
    # then with B alone everything decrypts
    settings.ENCRYPTION_KEY = KEY_B
    assert [Credential.objects.get(pk=c.pk).get_secret() for c in credentials] == [
        {"secret_access_key": f"secret-{n}-abcdefgh"} for n in range(3)
    ]
    assert [NotificationChannel.objects.get(pk=c.pk).get_target() for c in channels] == [
        "https://hooks.slack.com/services/T/B/token1",
        "ops@example.com",
    ]
    assert "re-encrypted 3 credentials (ciphertext: 3)" in out
    assert "re-encrypted 2 notification channels (signing_secret_ciphertext: 0, target_ciphertext: 2)" in out
    assert "secret-0" not in out


def test_without_rotation_the_new_key_alone_cannot_decrypt(settings, secrets_under_key_a):
    # the counterpart of the test above: it is the command that makes dropping A safe
    credentials, _ = secrets_under_key_a
    settings.ENCRYPTION_KEY = KEY_B
    with pytest.raises(ImproperlyConfigured):
        Credential.objects.get(pk=credentials[0].pk).get_secret()


def test_dry_run_writes_nothing(settings, secrets_under_key_a):
    # given
    credentials, _ = secrets_under_key_a
    before = Credential.objects.get(pk=credentials[0].pk).ciphertext
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    # when
    out = rotate("--dry-run")
    # then
    assert "would re-encrypt 3 credentials" in out
    assert Credential.objects.get(pk=credentials[0].pk).ciphertext == before


def test_a_secret_no_key_decrypts_stops_the_rotation_before_any_write(settings, secrets_under_key_a):
    # given one credential under a key that is no longer configured
    credentials, channels = secrets_under_key_a
    settings.ENCRYPTION_KEY = Fernet.generate_key().decode()  # a key that is then lost
    orphan = Credential(account=CloudAccountFactory(name="orphaned"), kind="access_key")
    orphan.set_secret("x")
    orphan.save()
    settings.ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"
    before = {c.pk: c.ciphertext for c in Credential.objects.all()}
    # when / then
    with pytest.raises(CommandError, match=rf"credential {orphan.pk} \(ciphertext\)"):
        rotate()
    assert {c.pk: c.ciphertext for c in Credential.objects.all()} == before
