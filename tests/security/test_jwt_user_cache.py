"""A JWT's user is read once per JWT_USER_CACHE_SECONDS per process and token, never longer: a user deactivated or
whose password changed behind Django's back (raw UPDATE, another process) is refused once that time has passed; a
save in this process is seen at once; each request gets its own copy of the user. An access token's signature and
claims are checked once per process until the token expires, never after: an expired token is refused although
it was accepted (and kept) a moment before."""

import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework_simplejwt.tokens import AccessToken

from finops.jwt_auth import FINGERPRINT_CLAIM, PasswordBoundJWTAuthentication, password_fingerprint, token_cache
from tests.factories import UserFactory
from tests.security.test_jwt_refresh import obtain, status_with

pytestmark = pytest.mark.django_db
TTL = 0.4


@pytest.fixture
def user(settings):
    settings.JWT_USER_CACHE_SECONDS = TTL
    return UserFactory(username="jwt-user")


def status_once_the_ttl_is_over(access: str, changed_at: float) -> int:
    """The answer to a request sent just after the TTL has run out since `changed_at` (monotonic): the cached entry
    was made before the change, so by then it has expired whatever the machine's load (the request's own time, e.g.
    a slow schema render on a busy CI machine, does not count against the TTL)."""
    time.sleep(max(0.0, changed_at + TTL + 0.05 - time.monotonic()))
    return status_with(access)


def test_a_user_deactivated_by_a_raw_update_is_refused_within_the_ttl(user):
    access = obtain()["access"]
    assert status_with(access) == 200  # now cached
    changed_at = time.monotonic()
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    assert status_once_the_ttl_is_over(access, changed_at) == 401


def test_a_password_changed_by_a_raw_update_ends_the_token_within_the_ttl(user):
    access = obtain()["access"]
    assert status_with(access) == 200
    other = UserFactory(username="other")
    changed_at = time.monotonic()
    get_user_model().objects.filter(pk=user.pk).update(password=other.password)
    assert status_once_the_ttl_is_over(access, changed_at) == 401


def test_within_the_ttl_the_user_is_not_read_again(user, settings):
    # the other half of the TTL: a raw change is not seen while the entry lasts (the cache is really used)
    settings.JWT_USER_CACHE_SECONDS = 60
    access = obtain()["access"]
    assert status_with(access) == 200
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    assert status_with(access) == 200


def test_a_save_in_this_process_is_seen_at_once(user, settings):
    settings.JWT_USER_CACHE_SECONDS = 60  # far longer than the test: only the save can end the cached entry
    access = obtain()["access"]
    assert status_with(access) == 200
    user.is_active = False
    user.save()
    assert status_with(access) == 401


def test_off_reads_the_user_every_time(user, settings):
    settings.JWT_USER_CACHE_SECONDS = 0
    access = obtain()["access"]
    assert status_with(access) == 200
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    assert status_with(access) == 401


def test_each_request_gets_its_own_copy_and_no_query_while_cached(user):
    token = AccessToken(obtain()["access"])
    auth = PasswordBoundJWTAuthentication()
    first = auth.get_user(token)
    first.some_request_state = "mine"  # what a request may hang on request.user
    with CaptureQueriesContext(connection) as queries:
        second = auth.get_user(token)
    assert len(queries) == 0
    assert second is not first and second.pk == first.pk and not hasattr(second, "some_request_state")


def short_lived(user, seconds: float) -> str:
    token = AccessToken.for_user(user)
    token[FINGERPRINT_CLAIM] = password_fingerprint(user)
    token.set_exp(lifetime=timedelta(seconds=seconds))
    return str(token)


def test_a_kept_token_is_refused_once_it_has_expired(user, settings):
    settings.JWT_USER_CACHE_SECONDS = 60  # the user stays cached: only the token's own expiry can refuse it
    access = short_lived(user, 5)  # long enough for the two requests below on a busy machine
    assert status_with(access) == 200
    assert token_cache.get(access.encode()) is not None  # kept, so the next request does not check it again
    assert status_with(access) == 200
    time.sleep(max(0.0, AccessToken(access, verify=False)["exp"] + 1.1 - time.time()))  # exp has whole seconds
    assert token_cache.get(access.encode()) is None
    assert status_with(access) == 401


def test_a_token_altered_after_a_kept_one_is_checked_and_refused(user):
    access = obtain()["access"]
    assert status_with(access) == 200
    header, payload, signature = access.split(".")
    altered = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    assert status_with(altered) == 401


def test_each_request_gets_its_own_token_payload(user):
    raw = obtain()["access"].encode()
    auth = PasswordBoundJWTAuthentication()
    first = auth.get_validated_token(raw)
    first.payload["user_id"] = "someone else"  # a request's change never reaches the kept token
    second = auth.get_validated_token(raw)
    assert second is not first
    assert str(second["user_id"]) == str(user.pk)


def test_the_token_cache_is_off_with_the_user_cache(user, settings):
    settings.JWT_USER_CACHE_SECONDS = 0
    access = obtain()["access"]
    assert status_with(access) == 200
    assert token_cache.get(access.encode()) is None
