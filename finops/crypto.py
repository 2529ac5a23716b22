"""Symmetric encryption of secrets at rest (MultiFernet over the keys in ENCRYPTION_KEY)."""

import base64
import binascii
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _fernet_for(key: str) -> Fernet:
    """A proper Fernet key is used as is; any other string (e.g. the seed's 32-char key) is hashed into one."""
    raw = key.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return Fernet(raw)
    except (binascii.Error, ValueError):
        pass
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


@lru_cache(maxsize=8)
def _multi(keys: str) -> MultiFernet:
    parts = [k for k in keys.split(",") if k.strip()]
    if not parts:
        raise ImproperlyConfigured("ENCRYPTION_KEY is empty")
    return MultiFernet([_fernet_for(k) for k in parts])


def encrypt(plaintext: str) -> str:
    return _multi(settings.ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _multi(settings.ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured("a stored secret cannot be decrypted with any key in ENCRYPTION_KEY") from exc


def rotate(token: str) -> str:
    """Re-encrypt with the first key (MultiFernet.rotate)."""
    return _multi(settings.ENCRYPTION_KEY).rotate(token.encode()).decode()


def mask(secret: str) -> str:
    """What a person may see of a secret: its length class and last four characters."""
    if not secret:
        return ""
    return "••••" + secret[-4:] if len(secret) > 8 else "••••"
