"""Finding "SSRF": account endpoints and notification channels that point inside (metadata service, loopback,
Redis, the app itself) are refused at save with a message naming the field; names that only DNS can judge are
refused at call time; a webhook's redirect is not followed; a reply body never reaches run errors. A real HTTP
listener on loopback stands for the internal service and must receive nothing."""

import socket
import traceback

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from costs_app.models import ChannelKind, NotificationChannel
from costs_app.services.ingest import account_cost_sync
from costs_app.services.notifications import NotificationError, channel_send
from finops import crypto
from finops.errors import PermanentError, TransientError
from providers_app.models import CloudAccount
from providers_app.services.accounts import account_connection_check, account_create
from providers_app.services.teams import team_default
from tests.factories import UserFactory
from tests.security.listeners import member_of_default_team

from .listeners import RecordingListener

pytestmark = pytest.mark.django_db

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@pytest.fixture
def no_operator_hosts(settings):
    settings.EGRESS_ALLOWED_HOSTS = []
    return settings


@pytest.fixture
def internal():
    """The internal service an attacker wants the worker to call."""
    listener = RecordingListener()
    yield listener
    listener.stop()


@pytest.fixture
def account_admin():
    user = UserFactory(username="account-admin")
    member_of_default_team(user)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_cloudaccount", "change_cloudaccount"]))
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def channel_admin(client):
    staff = UserFactory(username="channel-admin", is_staff=True)
    member_of_default_team(staff)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_notificationchannel"]))
    client.force_login(staff)
    return client


def account_cases(port: int) -> list[tuple[str, dict, str, str]]:
    """(provider, settings, the setting named, why) for endpoints pointing inside."""
    loopback = f"http://127.0.0.1:{port}"
    return [
        ("aws", {"endpoint_url": METADATA}, "settings.endpoint_url", "169.254.169.254 is a link-local address"),
        ("aws", {"endpoint_url": loopback}, "settings.endpoint_url", "127.0.0.1 is a loopback address"),
        ("aws", {"endpoint_url": "file:///etc/passwd"}, "settings.endpoint_url", "file:// is not allowed"),
        ("aws", {"endpoint_urls": {"s3": loopback}}, "settings.endpoint_urls.s3", "127.0.0.1 is a loopback address"),
        ("azure", {"storage_account_url": METADATA}, "settings.storage_account_url", "link-local"),
        ("azure", {"arm_endpoint": f"https://127.0.0.1:{port}"}, "settings.arm_endpoint", "loopback"),
        ("azure", {"authority_host": "metadata.google.internal"}, "settings.authority_host", "metadata service"),
        ("gcp", {"endpoints": {"storage": "file:///etc/passwd"}}, "settings.endpoints.storage", "file://"),
        ("gcp", {"endpoints": {"compute": f"http://[::1]:{port}"}}, "settings.endpoints.compute", "::1 is a loopback"),
    ]


def test_account_endpoints_pointing_inside_are_refused_at_save(no_operator_hosts, internal, account_admin):
    for index, (provider, settings, field, why) in enumerate(account_cases(internal.port)):
        # when
        response = account_admin.post(
            "/api/v1/accounts/",
            {"provider": provider, "name": f"ssrf-{index}", "settings": settings, "credentials": {"k": "v"}},
            format="json",
        )
        # then
        assert response.status_code == 400, (provider, settings, response.content)
        message = " ".join(response.json()["settings"])
        assert field in message and why in message, message
    assert not CloudAccount.objects.exists()
    assert internal.connections == 0


def test_a_patch_pointing_inside_is_refused_and_changes_nothing(no_operator_hosts, internal, account_admin):
    # given
    account = account_create(provider="aws", name="prod", settings={"bucket": "b", "export_name": "e"})
    # when
    response = account_admin.patch(
        f"/api/v1/accounts/{account.pk}/", {"settings": {"endpoint_url": METADATA}}, format="json"
    )
    # then
    assert response.status_code == 400
    assert CloudAccount.objects.get(pk=account.pk).settings == {"bucket": "b", "export_name": "e"}


def channel_cases(port: int) -> list[tuple[str, str, str]]:
    return [
        ("webhook", METADATA, "169.254.169.254 is a link-local address"),
        ("webhook", "http://localhost:6379/", "localhost names this machine"),
        ("webhook", f"http://[::1]:{port}/hook", "::1 is a loopback address"),
        ("webhook", "http://metadata.google.internal/computeMetadata/v1/", "names this machine, an internal network"),
        ("webhook", f"http://127.0.0.1:{port}/hook", "127.0.0.1 is a loopback address"),
        ("webhook", "https://[::ffff:10.0.0.1]/hook", "a private address, inside an IPv6 address"),
        ("webhook", "https://2130706433/hook", "is not a host name"),
        ("webhook", "gopher://example.com/", "gopher:// is not allowed"),
        ("slack", "http://hooks.slack.com/services/T0/B0/secrettoken", "http:// is not allowed for hooks.slack.com"),
        ("slack", "https://hooks.attacker.example/services/T0/B0/x", "incoming webhook host (hooks.slack.com)"),
        ("email", "https://hooks.slack.com/services/T0/B0/x", "a comma-separated list of e-mail addresses"),
    ]


def test_channel_targets_pointing_inside_are_refused_at_save(no_operator_hosts, internal, channel_admin):
    for index, (kind, target, why) in enumerate(channel_cases(internal.port)):
        # when
        response = channel_admin.post(
            reverse("admin:costs_app_notificationchannel_add"),
            {"name": f"ssrf-{index}", "kind": kind, "target": target, "is_active": "on", "team": team_default().pk},
        )
        # then
        page = response.content.decode()
        assert response.status_code == 200, (kind, target)
        assert why in page, (kind, target)
        assert "secrettoken" not in page  # the target (a secret) is not echoed
    assert not NotificationChannel.objects.exists()
    assert internal.connections == 0


def test_a_public_looking_channel_is_saved(no_operator_hosts, channel_admin):
    # when
    response = channel_admin.post(
        reverse("admin:costs_app_notificationchannel_add"),
        {
            "name": "ok",
            "kind": "slack",
            "target": "https://hooks.slack.com/services/T0/B0/x",
            "is_active": "on",
            "team": team_default().pk,
        },
    )
    # then
    assert response.status_code == 302
    assert NotificationChannel.objects.get(name="ok").get_target() == "https://hooks.slack.com/services/T0/B0/x"


def loopback_name() -> str:
    """A name that passes the static checks but resolves inside: this machine's host name (in /etc/hosts;
    in a container it resolves to the container's private address, which is refused just the same)."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    from finops.egress import address_refusal

    if not addresses or not all(address_refusal(a) for a in addresses):
        pytest.skip(f"the host name {name} resolves to a public address here")
    return name


def test_a_name_that_resolves_inside_is_refused_at_call_time(no_operator_hosts, internal, channel_admin):
    # given: accepted at save (it is a host name; only DNS knows where it points)
    name = loopback_name()
    target = f"https://{name}:{internal.port}/hook"
    response = channel_admin.post(
        reverse("admin:costs_app_notificationchannel_add"),
        {"name": "intranet", "kind": "webhook", "target": target, "is_active": "on", "team": team_default().pk},
    )
    assert response.status_code == 302
    channel = NotificationChannel.objects.get(name="intranet")
    # when
    with pytest.raises(NotificationError) as refused:
        channel_send(channel=channel, subject="s", text="t", payload={})
    # then
    assert f"{name} resolves to" in str(refused.value) and "refused" in str(refused.value)
    assert refused.value.retryable is False
    assert internal.connections == 0 and internal.received == b""


def test_channel_rows_already_pointing_inside_are_refused_at_call_time(no_operator_hosts, internal):
    # given: rows written before the policy (straight into the database, past every form)
    targets = {
        "loopback": (ChannelKind.WEBHOOK, f"http://127.0.0.1:{internal.port}/hook"),
        "localhost": (ChannelKind.WEBHOOK, f"https://localhost:{internal.port}/hook"),
        "ipv6": (ChannelKind.SLACK, f"https://[::1]:{internal.port}/services/x"),
        "mail": (ChannelKind.EMAIL, f"http://127.0.0.1:{internal.port}/"),
    }
    for name, (kind, target) in targets.items():
        NotificationChannel.objects.create(name=name, kind=kind, target_ciphertext=crypto.encrypt(target))
    # when / then
    for channel in NotificationChannel.objects.all():
        with pytest.raises(NotificationError) as refused:
            channel_send(channel=channel, subject="s", text="t", payload={})
        assert refused.value.retryable is False, channel.name
        assert str(internal.port) not in str(refused.value)  # the target is not repeated
    assert internal.connections == 0 and internal.received == b""


def test_a_webhook_redirect_is_not_followed(settings):
    # given: a receiver (an operator-allowed host, as in the test settings) answering 302 to a second listener
    elsewhere = RecordingListener()
    redirecting = RecordingListener(
        reply=(
            f"HTTP/1.1 302 Found\r\nLocation: http://{elsewhere.netloc}/steal\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    try:
        settings.EGRESS_ALLOWED_HOSTS = ["127.0.0.1"]
        channel = NotificationChannel(name="hook", kind=ChannelKind.WEBHOOK)
        channel.set_target(f"http://{redirecting.netloc}/hook")
        channel.save()
        # when
        with pytest.raises(NotificationError) as failed:
            channel_send(channel=channel, subject="s", text="t", payload={"k": 1})
        # then
        assert "HTTP 302 redirect" in str(failed.value) and "not followed" in str(failed.value)
        assert failed.value.retryable is False
        assert b"X-FinOps-Signature" in redirecting.received  # it was sent, once, to the channel's own receiver
        assert elsewhere.connections == 0 and elsewhere.received == b""
    finally:
        redirecting.stop()
        elsewhere.stop()


def test_a_reply_body_from_an_endpoint_never_reaches_the_run_result(settings):
    # given: an operator-allowed custom endpoint that answers with an internal page (the app's /healthz)
    body = b'{"status": "ok", "db": "INTERNAL-HEALTHZ-DETAIL postgres://finops@db:5432", "workers": ["w1@host"]}'
    page = RecordingListener(
        reply=b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    try:
        settings.EGRESS_ALLOWED_HOSTS = ["127.0.0.1"]
        account = account_create(
            provider="aws",
            name="private-s3",
            settings={"bucket": "b", "export_name": "e", "endpoint_url": f"http://{page.netloc}"},
            credentials={"access_key_id": "AKIAPRIVATES3000001", "secret_access_key": "s" * 40},
        )
        # when: the connection check, and the sync (whose error text a failed run and its dead letter keep)
        outcome = account_connection_check(account_id=account.pk)
        with pytest.raises((PermanentError, TransientError)) as sync:  # S3 turns a bad 200 into a retryable 500
            account_cost_sync(account_id=account.pk)
        # then
        assert page.connections >= 2  # the endpoint was called and answered, twice
        assert outcome["ok"] is False
        assert "not an AWS API response" in outcome["summary"]
        assert "INTERNAL-HEALTHZ-DETAIL" not in str(outcome)
        assert "INTERNAL-HEALTHZ-DETAIL" not in "".join(traceback.format_exception(sync.value))
    finally:
        page.stop()


def test_a_webhook_over_tls_is_verified_by_name_on_the_checked_address(settings, monkeypatch, tmp_path):
    # given: a TLS receiver for "localhost" (operator-allowed here), its certificate trusted through the
    # environment (SSL_CERT_FILE, read by ssl's default context), and one whose certificate nobody trusts
    from .listeners import self_signed_certificate

    trusted_dir, untrusted_dir = tmp_path / "trusted", tmp_path / "untrusted"
    trusted_dir.mkdir()
    untrusted_dir.mkdir()
    trusted = self_signed_certificate(trusted_dir)
    receiver = RecordingListener(tls=trusted)
    impostor = RecordingListener(tls=self_signed_certificate(untrusted_dir))
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted[0]))
    settings.EGRESS_ALLOWED_HOSTS = ["localhost"]
    try:
        good = NotificationChannel(name="tls", kind=ChannelKind.WEBHOOK)
        good.set_target(f"https://localhost:{receiver.port}/hook")
        good.save()
        bad = NotificationChannel(name="impostor", kind=ChannelKind.WEBHOOK)
        bad.set_target(f"https://localhost:{impostor.port}/hook")
        bad.save()
        # when
        channel_send(channel=good, subject="s", text="t", payload={})
        with pytest.raises(NotificationError) as refused:
            channel_send(channel=bad, subject="s", text="t", payload={})
        # then: the request went out over TLS, with the name in Host (and SNI), to the address checked
        assert f"Host: localhost:{receiver.port}".encode() in receiver.received
        assert "TLS failed" in str(refused.value)
        assert impostor.received == b""  # the handshake failed before any byte of the request
    finally:
        receiver.stop()
        impostor.stop()
