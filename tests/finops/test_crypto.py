"""Secrets at rest: MultiFernet over ENCRYPTION_KEY (Fernet keys, or the explicit legacy: passphrase form),
rotation, and the URL hint. tests/security/test_encryption_key.py covers the refusal of malformed keys."""

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from finops import crypto

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


def test_a_seed_style_passphrase_is_refused_unless_marked_legacy(settings):
    # given the seed's "your-32-char-encryption-key" style value (not a Fernet key)
    settings.ENCRYPTION_KEY = "0123456789abcdef0123456789abcdef"
    # when / then: no silent hashing into some other key
    with pytest.raises(ImproperlyConfigured, match="ENCRYPTION_KEY entry 1 of 1 is refused: it is not a Fernet key"):
        crypto.encrypt("aws-secret-access-key")
    # and written as legacy:, it derives the key the old code derived (SHA-256 of the passphrase)
    settings.ENCRYPTION_KEY = "legacy:0123456789abcdef0123456789abcdef"
    token = crypto.encrypt("aws-secret-access-key")
    assert "aws-secret" not in token
    assert crypto.decrypt(token) == "aws-secret-access-key"
    old_derivation = base64.urlsafe_b64encode(hashlib.sha256(b"0123456789abcdef0123456789abcdef").digest())
    assert Fernet(old_derivation).decrypt(token.encode()) == b"aws-secret-access-key"


def test_proper_fernet_key_is_used_as_is(settings):
    key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEY = key
    token = crypto.encrypt("s3cret")
    assert Fernet(key.encode()).decrypt(token.encode()) == b"s3cret"


def test_rotation_reencrypts_with_first_key_and_old_key_can_be_dropped(settings):
    # given a secret encrypted under the old key
    settings.ENCRYPTION_KEY = OLD_KEY
    token = crypto.encrypt("client-secret")
    # when a new key is put first and the token rotated
    settings.ENCRYPTION_KEY = f"{NEW_KEY},{OLD_KEY}"
    rotated = crypto.rotate(token)
    # then the new key alone decrypts it, and the old token no longer does
    settings.ENCRYPTION_KEY = NEW_KEY
    assert crypto.decrypt(rotated) == "client-secret"
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        crypto.decrypt(token)


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXsupersecret", "https://hooks.slack.com/…"),
        ("https://ops.example.com:8443/hook?key=abcd1234", "https://ops.example.com/…"),
        ("https://[2001:db8::1]/hook/secret", "https://[2001:db8::1]/…"),
        ("not a url", "…"),
        ("", "…"),
    ],
)
def test_url_hint_shows_scheme_and_host_only(url, hint):
    assert crypto.url_hint(url) == hint
