"""API tokens bound to the user's password: a password change ends every token issued before it.

- Every token carries `pwd`, a fingerprint of the user's password hash (an HMAC under JWT_SECRET_KEY, so the
  token reveals nothing of the hash). PasswordBoundJWTAuthentication refuses an access token whose fingerprint
  is not the current one, and TokenRefreshSerializer refuses such a refresh token (and blacklists it). This holds
  whatever path changed the password — set_password, the admin's form, `changepassword`, even a raw UPDATE.
- A saved password change also blacklists all of the user's outstanding refresh tokens at once
  (simplejwt's token_blacklist app), so they are refused by the blacklist check as well.
- Refresh tokens are single-use (settings.SIMPLE_JWT: ROTATE_REFRESH_TOKENS + BLACKLIST_AFTER_ROTATION).
"""

import copy
import threading
import time

import django
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.base import DJANGO_VERSION_PICKLE_KEY
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils.crypto import constant_time_compare, salted_hmac
from drf_spectacular.contrib.rest_framework_simplejwt import (
    SimpleJWTScheme,
    TokenObtainPairSerializerExtension,
    TokenRefreshSerializerExtension,
)
from rest_framework_simplejwt import serializers as jwt_serializers
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

FINGERPRINT_CLAIM = "pwd"
PASSWORD_CHANGED = "the password was changed after this token was issued: sign in again"


def password_fingerprint(user) -> str:
    """Changes whenever the stored password hash changes (a new password, or the same one re-hashed)."""
    return salted_hmac(
        "finops.jwt.password-fingerprint", user.password or "", secret=settings.JWT_SECRET_KEY, algorithm="sha256"
    ).hexdigest()[:32]


def token_matches_password(token, user) -> bool:
    claim = token.get(FINGERPRINT_CLAIM)
    return isinstance(claim, str) and constant_time_compare(claim, password_fingerprint(user))


class _ProcessCache:
    """A small per-process map whose entries each expire at their own deadline (monotonic clock); thread-safe.

    Bounded at MAX_ENTRIES: when full, the expired entries go, then everything if none had. Entries are copied in
    and out (shallow), so a request never holds the object another request holds.
    """

    MAX_ENTRIES = 1024

    def __init__(self):
        self.entries: dict[tuple, tuple[float, object]] = {}
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            found = self.entries.get(key)
        if found is None or time.monotonic() >= found[0]:
            return None
        return self.copy(found[1])

    def put(self, key, value, seconds: float) -> None:
        if seconds <= 0:
            return
        now = time.monotonic()
        with self.lock:
            if len(self.entries) >= self.MAX_ENTRIES:
                self.entries = {k: v for k, v in self.entries.items() if now < v[0]}
                if len(self.entries) >= self.MAX_ENTRIES:
                    self.entries.clear()
            self.entries[key] = (now + seconds, self.copy(value))

    @staticmethod
    def copy(value):
        return copy.copy(value)

    def forget(self, match) -> None:
        """Drop the entries whose key `match(key)` is true."""
        with self.lock:
            self.entries = {k: v for k, v in self.entries.items() if not match(k)}

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


class _UserCache(_ProcessCache):
    """The users this web process authenticated in the last JWT_USER_CACHE_SECONDS, by user id and token fingerprint.

    A polling dashboard sends several API calls a second with one token; each would read the user's row again for
    the same answer (on a cached `tasks/active`, that read was half of the request's time). An entry serves a copy of
    the user as loaded (never the object another request holds), for at most the TTL: a user deactivated or whose
    password changed by another process, or by a raw UPDATE, is refused at most that long after (a save in this
    process drops its entries at once). 0 turns it off.
    """

    def get(self, key: tuple):
        return super().get(key) if settings.JWT_USER_CACHE_SECONDS > 0 else None

    @staticmethod
    def copy(user):
        # A model's own state copy (as pickling does), without copy.copy's trip through the app registry.
        state = user.__getstate__()
        state[DJANGO_VERSION_PICKLE_KEY] = django.__version__
        fresh = user.__class__.__new__(user.__class__)
        fresh.__setstate__(state)
        return fresh

    def put(self, key: tuple, user) -> None:
        super().put(key, user, settings.JWT_USER_CACHE_SECONDS)

    def forget(self, user_id) -> None:
        """Drop a user's entries (the token's user id claim may be the id or its text)."""
        super().forget(lambda key: str(key[0]) == str(user_id))


class _TokenCache(_ProcessCache):
    """Access tokens this web process has validated (signature, expiry, id and type), by their encoded text, until
    their `exp`.

    The check of a token's signature and claims gives the same answer for the same text until it expires (the
    signing key is fixed for the process' life), and was the largest part of a cached `tasks/active` request after
    the user's read. What can change sooner is checked on every request still: the user (active, password
    fingerprint) through the user cache above. Off when JWT_USER_CACHE_SECONDS is 0.
    """

    def get(self, raw_token: bytes):
        return super().get(raw_token) if settings.JWT_USER_CACHE_SECONDS > 0 else None

    @staticmethod
    def copy(token):
        fresh = token.__class__.__new__(token.__class__)
        fresh.__dict__.update(token.__dict__)
        fresh.payload = dict(token.payload)  # a request's token never shares its claims with the kept one
        return fresh

    def put(self, raw_token: bytes, token) -> None:
        exp = token.get("exp")
        if settings.JWT_USER_CACHE_SECONDS > 0 and isinstance(exp, int | float):
            super().put(raw_token, token, exp - time.time())


user_cache = _UserCache()
token_cache = _TokenCache()


class PasswordBoundJWTAuthentication(JWTAuthentication):
    """simplejwt's authentication, refusing tokens issued before the user's last password change."""

    def get_validated_token(self, raw_token):
        key = bytes(raw_token)
        token = token_cache.get(key)
        if token is not None:
            return token
        token = super().get_validated_token(raw_token)  # refuses a bad signature, an expired or wrong-type token
        token_cache.put(key, token)
        return token

    def get_user(self, validated_token):
        key = (validated_token.get(api_settings.USER_ID_CLAIM), validated_token.get(FINGERPRINT_CLAIM))
        user = user_cache.get(key)
        if user is not None:
            return user
        user = super().get_user(validated_token)  # refuses a missing or inactive user
        if not token_matches_password(validated_token, user):
            raise InvalidToken(PASSWORD_CHANGED)
        user_cache.put(key, user)
        return user


class TokenObtainPairSerializer(jwt_serializers.TokenObtainPairSerializer):
    @classmethod
    def get_token(cls, user):
        token = super().get_token(user)
        token[FINGERPRINT_CLAIM] = password_fingerprint(user)  # copied into every access token made from it
        # for_user() recorded the token before the claim was added: record the token as issued.
        OutstandingToken.objects.filter(jti=token[api_settings.JTI_CLAIM]).update(token=str(token))
        return token


class TokenRefreshSerializer(jwt_serializers.TokenRefreshSerializer):
    def validate(self, attrs):
        refresh = RefreshToken(attrs["refresh"])  # signature, expiry and blacklist checked here
        # One use only, even for two requests racing with the same token: the second waits for the first's lock on
        # the token's row, then finds it blacklisted (super() reads the blacklist again, after the lock).
        with transaction.atomic():
            OutstandingToken.objects.select_for_update().filter(jti=refresh[api_settings.JTI_CLAIM]).first()
            user = (
                get_user_model()
                .objects.filter(**{api_settings.USER_ID_FIELD: refresh.payload.get(api_settings.USER_ID_CLAIM)})
                .first()
            )
            if user is not None and token_matches_password(refresh, user):
                return super().validate(attrs)
        refresh.blacklist()
        raise InvalidToken(PASSWORD_CHANGED if user is not None else "the user of this token no longer exists")


def blacklist_outstanding_tokens(user) -> int:
    """Blacklist every refresh token of `user` not yet blacklisted; how many were."""
    outstanding = OutstandingToken.objects.filter(user=user, blacklistedtoken__isnull=True)
    created = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
    )
    return len(created)


def _remember_password_change(sender, instance, raw=False, update_fields=None, **kwargs):
    instance._finops_password_changed = False
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    before = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._finops_password_changed = before is not None and before != instance.password


def _forget_cached_user(sender, instance, **kwargs):
    user_cache.forget(instance.pk)


def _blacklist_on_password_change(sender, instance, created=False, raw=False, **kwargs):
    if not raw and not created and getattr(instance, "_finops_password_changed", False):
        instance._finops_password_changed = False
        blacklist_outstanding_tokens(instance)


def connect_signals() -> None:
    """Called from TasksAppConfig.ready(): every save of a user with a new password hash blacklists its tokens."""
    user_model = get_user_model()
    pre_save.connect(_remember_password_change, sender=user_model, dispatch_uid="finops.jwt.pre_save")
    post_save.connect(_blacklist_on_password_change, sender=user_model, dispatch_uid="finops.jwt.post_save")
    post_save.connect(_forget_cached_user, sender=user_model, dispatch_uid="finops.jwt.forget_saved")
    post_delete.connect(_forget_cached_user, sender=user_model, dispatch_uid="finops.jwt.forget_deleted")


# The OpenAPI schema describes our subclasses as it describes simplejwt's (drf-spectacular matches exact classes).
class PasswordBoundJWTScheme(SimpleJWTScheme):
    target_class = "finops.jwt_auth.PasswordBoundJWTAuthentication"


class PasswordBoundTokenObtainPairSerializerExtension(TokenObtainPairSerializerExtension):
    target_class = "finops.jwt_auth.TokenObtainPairSerializer"


class PasswordBoundTokenRefreshSerializerExtension(TokenRefreshSerializerExtension):
    target_class = "finops.jwt_auth.TokenRefreshSerializer"
