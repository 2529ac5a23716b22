"""API tokens: refresh tokens are single-use, a password change (by any path) ends every token issued before it,
JWT_SECRET_KEY is required in production and differs from SECRET_KEY, and forged tokens are refused."""

import base64
import json
import threading
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken

from finops.jwt_auth import password_fingerprint
from tests.factories import UserFactory
from tests.test_project import import_settings, isolated_project, production_env

PASSWORD = "pass-word-123"
# Needs nothing but a signed-in user (any role): tells "token accepted" from "token refused".
PROTECTED = "/api/schema/"


def obtain(username: str = "jwt-user", password: str = PASSWORD) -> dict:
    response = APIClient().post("/api/v1/auth/token", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def refresh(token: str):
    return APIClient().post("/api/v1/auth/token/refresh", {"refresh": token}, format="json")


def status_with(access: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get(PROTECTED).status_code


@pytest.fixture
def jwt_user(db):
    return UserFactory(username="jwt-user")


# --- refresh tokens are single-use -------------------------------------------------------------------------------


def test_a_refresh_token_is_refused_on_its_second_use(jwt_user):
    # given
    first = obtain()["refresh"]
    # when
    once = refresh(first)
    twice = refresh(first)
    # then the first use returns a new pair, the second is refused
    assert once.status_code == 200
    assert set(once.json()) == {"access", "refresh"} and once.json()["refresh"] != first
    assert twice.status_code == 401
    assert "blacklisted" in twice.json()["detail"]
    # and the new refresh token works, once
    assert refresh(once.json()["refresh"]).status_code == 200
    assert refresh(once.json()["refresh"]).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_uses_of_one_refresh_token_get_one_new_pair():
    # given
    UserFactory(username="jwt-user")
    token = obtain()["refresh"]
    statuses = []
    barrier = threading.Barrier(4)

    def use():
        barrier.wait()
        statuses.append(refresh(token).status_code)

    # when four requests race with the same token
    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # then exactly one wins
    assert sorted(statuses) == [200, 401, 401, 401]


# --- a password change ends every earlier token ----------------------------------------------------------------


def assert_tokens_dead(tokens: dict) -> None:
    assert status_with(tokens["access"]) == 401
    response = refresh(tokens["refresh"])
    assert response.status_code == 401


def test_set_password_blacklists_every_refresh_token_and_invalidates_access_tokens(jwt_user):
    # given two sessions' tokens, both working
    tokens = [obtain(), obtain()]
    assert [status_with(t["access"]) for t in tokens] == [200, 200]
    # when
    jwt_user.set_password("a-new-pass-word-456")
    jwt_user.save()
    # then every refresh token of the user is blacklisted, and neither pair works any more
    outstanding = OutstandingToken.objects.filter(user=jwt_user)
    assert outstanding.count() == 2
    assert BlacklistedToken.objects.filter(token__in=outstanding).count() == 2
    for pair in tokens:
        response = APIClient()
        response.credentials(HTTP_AUTHORIZATION=f"Bearer {pair['access']}")
        refused = response.get(PROTECTED)
        assert refused.status_code == 401
        assert "password was changed" in refused.content.decode()
        assert refresh(pair["refresh"]).status_code == 401
    # and signing in with the new password works
    assert status_with(obtain(password="a-new-pass-word-456")["access"]) == 200


def test_a_password_change_in_the_admin_ends_the_tokens(jwt_user):
    # given
    tokens = obtain()
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "root-pass-word-1")
    browser = Client()
    browser.force_login(admin)
    # when the admin sets a new password through the admin's password form
    response = browser.post(
        reverse("admin:auth_user_password_change", args=[jwt_user.pk]),
        {"password1": "changed-by-admin-789", "password2": "changed-by-admin-789", "usable_password": "true"},
    )
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    jwt_user.refresh_from_db()
    assert jwt_user.check_password("changed-by-admin-789")
    assert_tokens_dead(tokens)


def test_a_password_changed_without_signals_still_ends_the_tokens(jwt_user):
    # given tokens, then a password changed by a bulk UPDATE (no save(), no signal, no blacklist rows)
    tokens = obtain()
    other = UserFactory(username="other")
    get_user_model().objects.filter(pk=jwt_user.pk).update(password=other.password)
    # then the fingerprint in the tokens no longer matches: both are refused
    assert_tokens_dead(tokens)


def test_saving_the_user_without_changing_the_password_keeps_the_tokens(jwt_user):
    tokens = obtain()
    jwt_user.first_name = "Renamed"
    jwt_user.save()
    assert status_with(tokens["access"]) == 200
    assert refresh(tokens["refresh"]).status_code == 200


# --- token lifetime and forged tokens ---------------------------------------------------------------------------


def test_access_tokens_are_short_lived(jwt_user):
    access = AccessToken(obtain()["access"])
    # simplejwt sets the access token's exp from the refresh token's clock reading and its iat from its own, taken a
    # moment later: when a second boundary falls between the two, exp - iat is one second short (seen in CI: 299)
    assert settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds() == 300
    assert 299 <= access["exp"] - access["iat"] <= 300


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(kind: str, user) -> str:
    valid = AccessToken.for_user(user)
    valid["pwd"] = password_fingerprint(user)
    payload = dict(valid.payload)
    if kind == "alg none":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."
    if kind == "wrong key":
        return jwt.encode(payload, "not-the-jwt-secret-key-at-all-0123456789", algorithm="HS256")
    if kind == "signed with SECRET_KEY":
        return jwt.encode(payload, settings.SECRET_KEY, algorithm="HS256")
    if kind == "expired":
        valid.set_exp(lifetime=timedelta(seconds=-1))
        return str(valid)
    if kind == "tampered":
        header, body, signature = str(valid).split(".")
        return f"{header}.{b64({**payload, 'user_id': str(user.pk + 1)})}.{signature}"
    if kind == "no password fingerprint":
        del valid["pwd"]
        return str(valid)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["alg none", "wrong key", "signed with SECRET_KEY", "expired", "tampered", "no password fingerprint"]
)
def test_forged_tokens_are_refused(jwt_user, kind):
    UserFactory(username="someone-else")  # the tampered token's target exists
    valid = AccessToken.for_user(jwt_user)
    valid["pwd"] = password_fingerprint(jwt_user)
    assert status_with(str(valid)) == 200  # the baseline each forgery departs from
    assert status_with(forged(kind, jwt_user)) == 401


# --- JWT_SECRET_KEY ---------------------------------------------------------------------------------------------


def test_jwt_secret_key_is_required_when_debug_is_off(tmp_path):
    env = production_env()
    del env["JWT_SECRET_KEY"]
    proc = import_settings(isolated_project(tmp_path), env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last and "JWT_SECRET_KEY" in last


def test_jwt_secret_key_must_differ_from_secret_key(tmp_path):
    env = production_env()
    env["JWT_SECRET_KEY"] = env["SECRET_KEY"]
    proc = import_settings(isolated_project(tmp_path), env)
    assert proc.returncode != 0
    assert "JWT_SECRET_KEY must differ from SECRET_KEY" in proc.stderr.strip().splitlines()[-1]


def test_with_debug_on_a_distinct_jwt_key_is_derived(tmp_path):
    import subprocess
    import sys

    env = {**production_env(), "DEBUG": "1", "JWT_ACCESS_TOKEN_MINUTES": "2"}
    del env["JWT_SECRET_KEY"]
    cwd = isolated_project(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import finops.settings as s; print(s.JWT_SECRET_KEY != s.SECRET_KEY, len(s.JWT_SECRET_KEY), "
            "s.SIMPLE_JWT['ACCESS_TOKEN_LIFETIME'].total_seconds())",
        ],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "64", "120.0"]


def test_the_admin_never_shows_a_refresh_token(jwt_user, admin_client):
    # given an outstanding refresh token and its blacklist entry (after one use)
    token = obtain()["refresh"]
    assert refresh(token).status_code == 200
    outstanding = OutstandingToken.objects.get(token=token)
    blacklisted = BlacklistedToken.objects.get(token=outstanding)
    # when staff open the blacklist's admin pages
    pages = [
        admin_client.get(reverse("admin:token_blacklist_outstandingtoken_changelist")),
        admin_client.get(reverse("admin:token_blacklist_outstandingtoken_change", args=[outstanding.pk])),
        admin_client.get(reverse("admin:token_blacklist_blacklistedtoken_changelist")),
        admin_client.get(reverse("admin:token_blacklist_blacklistedtoken_change", args=[blacklisted.pk])),
    ]
    # then they show the token's id, never the token (its signature part suffices to recognise it)
    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        assert token.split(".")[2] not in html
    assert outstanding.jti in pages[1].content.decode()
