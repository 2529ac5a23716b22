"""Symmetric encryption of secrets at rest (MultiFernet over the keys in ENCRYPTION_KEY), the model field that
holds the ciphertext, and the hints a person may see instead of a secret.

ENCRYPTION_KEY is a comma-separated list; the first key encrypts, every key decrypts. Each entry is either
- a Fernet key: 44 characters of urlsafe base64 (32 bytes), ending in "=" — `Fernet.generate_key()`; or
- `legacy:<passphrase>`: the key derived as SHA-256(passphrase), which is what this module silently did with
  every value that was not a Fernet key (the seed's "your-32-char-encryption-key", a key missing its "=").
  Deployments that relied on that keep decrypting by writing `legacy:` before the same value; they should put
  a new Fernet key first and run `manage.py rotate_credentials`, then drop the legacy entry.
Anything else is refused (ImproperlyConfigured naming the entry and what is wrong with it), never guessed at.
"""

import base64
import hashlib
import re
from functools import lru_cache
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

LEGACY_PREFIX = "legacy:"
# What Fernet.generate_key() returns: 43 urlsafe base64 characters carrying 32 bytes, then the "=" padding.
FERNET_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{43}=$")
# Every Fernet token starts with these characters (version byte 0x80 + the timestamp's high bytes).
TOKEN_PREFIX = "gAAAAA"
GENERATE_HINT = 'python3 -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


def key_problem(key: str) -> str | None:
    """What is wrong with one ENCRYPTION_KEY entry, or None when it is usable. Never repeats the key itself."""
    if key.startswith(LEGACY_PREFIX):
        return None if key[len(LEGACY_PREFIX) :] else "'legacy:' is followed by no passphrase"
    if FERNET_KEY_RE.match(key):
        return None
    if re.fullmatch(r"[A-Za-z0-9_-]{43}", key):
        return "it is a Fernet key without its '=' padding (43 characters instead of 44 ending in '=')"
    if re.fullmatch(r"[A-Za-z0-9+/]{43}=", key):
        return "it is standard base64 ('+' or '/'); a Fernet key is urlsafe base64 ('-' and '_')"
    return f"it is not a Fernet key (44 characters of urlsafe base64 ending in '='; this one has {len(key)})"


def parse_keys(value: str) -> list[str]:
    """The entries of ENCRYPTION_KEY, each checked; ImproperlyConfigured names the first bad one."""
    keys = [k.strip() for k in (value or "").split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured("ENCRYPTION_KEY is empty")
    for position, key in enumerate(keys, start=1):
        problem = key_problem(key)
        if problem:
            raise ImproperlyConfigured(
                f"ENCRYPTION_KEY entry {position} of {len(keys)} is refused: {problem}. Generate a key with "
                f"{GENERATE_HINT}. If this deployment has been running with this value (it used to be hashed "
                f"into a key), write it as {LEGACY_PREFIX}<the same value> to keep decrypting what it encrypted, "
                "then put a new key first and run `manage.py rotate_credentials`."
            )
    return keys


def _fernet_for(key: str) -> Fernet:
    if key.startswith(LEGACY_PREFIX):
        passphrase = key[len(LEGACY_PREFIX) :].encode()
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase).digest()))
    return Fernet(key.encode())


@lru_cache(maxsize=8)
def _multi(value: str) -> MultiFernet:
    return MultiFernet([_fernet_for(k) for k in parse_keys(value)])


def encrypt(plaintext: str) -> str:
    return _multi(settings.ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _multi(settings.ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured("a stored secret cannot be decrypted with any key in ENCRYPTION_KEY") from exc


def rotate(token: str) -> str:
    """Re-encrypt with the first key (MultiFernet.rotate); InvalidToken when no key decrypts it."""
    return _multi(settings.ENCRYPTION_KEY).rotate(token.encode()).decode()


class EncryptedTextField(models.TextField):
    """A column holding a Fernet token ("" when blank is allowed and nothing is set).

    The models encrypt and decrypt explicitly (set_secret/get_secret...); this type exists so that every
    ciphertext column is discoverable in one place: `manage.py rotate_credentials` re-encrypts exactly the
    fields `encrypted_fields()` returns, and tests/security/test_rotation.py fails when ciphertext is found in
    any other column.
    """

    description = "Fernet ciphertext (see finops.crypto)"


def encrypted_fields() -> list[tuple[type[models.Model], EncryptedTextField]]:
    """Every (model, field) of the installed apps whose column holds ciphertext, in a stable order."""
    found = [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, EncryptedTextField)
    ]
    return sorted(found, key=lambda pair: (pair[0]._meta.label, pair[1].name))


def url_hint(url: str) -> str:
    """What a person may see of a secret URL (webhook, Slack): scheme and host only, e.g. https://hooks.slack.com/…

    Paths and queries of such URLs are the secret (Slack's T…/B…/token, a webhook's key), so none of them is shown.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return "…"
    if not parts.scheme or not host:
        return "…"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}/…"
