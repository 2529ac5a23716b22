"""Secrets at rest: MultiFernet over ENCRYPTION_KEY, rotation, masking."""

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from finops import crypto


def test_seed_style_32_char_key_encrypts_and_decrypts(settings):
    # given the seed's "your-32-char-encryption-key" style key (not a Fernet key)
    settings.ENCRYPTION_KEY = "0123456789abcdef0123456789abcdef"
    # when
    token = crypto.encrypt("aws-secret-access-key")
    # then
    assert "aws-secret" not in token
    assert crypto.decrypt(token) == "aws-secret-access-key"


def test_proper_fernet_key_is_used_as_is(settings):
    key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEY = key
    token = crypto.encrypt("s3cret")
    assert Fernet(key.encode()).decrypt(token.encode()) == b"s3cret"


def test_rotation_reencrypts_with_first_key_and_old_key_can_be_dropped(settings):
    # given a secret encrypted under the old key
    settings.ENCRYPTION_KEY = "old-key-old-key-old-key-old-key!"
    token = crypto.encrypt("client-secret")
    # when a new key is put first and the token rotated
    settings.ENCRYPTION_KEY = "new-key-new-key-new-key-new-key!,old-key-old-key-old-key-old-key!"
    rotated = crypto.rotate(token)
    # then the new key alone decrypts it, and the old token no longer does
    settings.ENCRYPTION_KEY = "new-key-new-key-new-key-new-key!"
    assert crypto.decrypt(rotated) == "client-secret"
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        crypto.decrypt(token)


def test_mask_shows_only_last_four_characters():
    assert crypto.mask("AKIAABCDEFGHIJKLWXYZ") == "••••WXYZ"
    assert crypto.mask("short") == "••••"
    assert crypto.mask("") == ""
