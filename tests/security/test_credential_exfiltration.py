"""Finding "credentials sent to an address of the user's choosing": a user who may only change cloud accounts
points an account's endpoint, authority or token URI at a TLS server they run. The change is refused at save
(API and admin), and an account row that already holds such a setting (written before the policy, or straight
into the database) is refused at call time: the attacker's listener receives no byte, let alone a secret."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from costs_app.services.ingest import account_cost_sync
from finops.errors import PermanentError
from providers_app.connectors import get_resource_source
from providers_app.models import CloudAccount
from providers_app.services.accounts import account_connection_check, account_create
from tests.factories import UserFactory
from tests.security.listeners import member_of_default_team

from .listeners import RecordingListener, self_signed_certificate

pytestmark = pytest.mark.django_db

AWS_KEY_ID = "AKIAEXFILTRATE000001"
AWS_SECRET = "aws-secret-EXFIL-wJalrXUtnFEMIK7MDENGbPxRfiCY"
AZURE_SECRET = "azure-client-secret-EXFIL-9f8e7d"
TENANT = "11111111-2222-3333-4444-555555555555"
SUBSCRIPTION = "66666666-7777-8888-9999-000000000000"


def gcp_key() -> tuple[dict, str]:
    """A service account key file with a real RSA key; returns it and a piece of the private key to look for."""
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    key = {
        "type": "service_account",
        "project_id": "acme-billing",
        "private_key_id": "exfil-key-id-0001",
        "private_key": pem,
        "client_email": "reader@acme-billing.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return key, pem.splitlines()[5]


@pytest.fixture
def no_operator_hosts(settings):
    """Production: no operator-allowed hosts (the test settings allow 127.0.0.1 for the emulators)."""
    settings.EGRESS_ALLOWED_HOSTS = []
    return settings


@pytest.fixture
def attacker(tmp_path):
    tls = self_signed_certificate(tmp_path)
    listener = RecordingListener(tls=tls)
    listener.ca_bundle = str(tls[0])
    yield listener
    listener.stop()


@pytest.fixture
def accounts():
    key, key_piece = gcp_key()
    aws = account_create(
        provider="aws",
        name="aws-prod",
        settings={"bucket": "billing", "export_name": "finops", "region": "us-east-1"},
        credentials={"access_key_id": AWS_KEY_ID, "secret_access_key": AWS_SECRET},
    )
    azure = account_create(
        provider="azure",
        name="azure-prod",
        external_id=SUBSCRIPTION,
        settings={"storage_account_url": "https://acmebilling.blob.core.windows.net", "container": "exports"},
        credentials={"tenant_id": TENANT, "client_id": "app-id", "client_secret": AZURE_SECRET},
    )
    gcp = account_create(
        provider="gcp",
        name="gcp-prod",
        settings={
            "source": "bigquery",
            "project": "acme-billing",
            "dataset": "billing_export",
            "billing_account_id": "01A2B3-C4D5E6-F7G8H9",
        },
        credentials=key,
    )
    return {"aws": aws, "azure": azure, "gcp": gcp, "key_piece": key_piece}


@pytest.fixture
def changer():
    """A user who may change cloud accounts and nothing else: no view of credentials, no trigger permission."""
    user = UserFactory(username="changer")
    member_of_default_team(user)
    user.user_permissions.add(Permission.objects.get(codename="change_cloudaccount"))
    client = APIClient()
    client.force_authenticate(user)
    return client


def hostile_settings(account: CloudAccount, attacker: RecordingListener) -> dict:
    url = f"https://{attacker.netloc}"
    extra = {
        "aws": {"endpoint_url": url},
        "azure": {
            "authority_host": attacker.netloc,
            "arm_endpoint": url,
            "storage_account_url": f"{url}/exports",
            "ca_bundle": attacker.ca_bundle,
        },
        "gcp": {"endpoints": {"bigquery": url, "compute": url, "monitoring": url}},
    }[account.provider]
    return {**account.settings, **extra}


def assert_no_secret_arrived(attacker: RecordingListener, accounts: dict) -> None:
    received = attacker.received
    for secret in (AWS_KEY_ID, AWS_SECRET, AZURE_SECRET, accounts["key_piece"], "exfil-key-id-0001"):
        assert secret.encode() not in received
    assert received == b"" and attacker.connections == 0, "the attacker's listener was contacted"


@pytest.mark.parametrize(
    ("provider", "setting"),
    [("aws", "settings.endpoint_url"), ("azure", "settings.authority_host"), ("gcp", "settings.endpoints.bigquery")],
)
def test_patching_an_endpoint_to_the_attackers_server_is_refused(
    no_operator_hosts, attacker, accounts, changer, provider, setting
):
    # given
    account = accounts[provider]
    before = CloudAccount.objects.get(pk=account.pk).settings
    # when
    response = changer.patch(
        f"/api/v1/accounts/{account.pk}/", {"settings": hostile_settings(account, attacker)}, format="json"
    )
    # then
    assert response.status_code == 400, response.content
    message = " ".join(response.json()["settings"])
    assert setting in message and "127.0.0.1" in message and "refused" in message
    assert CloudAccount.objects.get(pk=account.pk).settings == before
    assert_no_secret_arrived(attacker, accounts)


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("aws", "is not an AWS service endpoint"),
        ("azure", "is not a Microsoft Entra ID authority"),
        ("gcp", "is not a Google API host"),
    ],
)
def test_an_attacker_host_name_is_refused_by_the_allow_list(no_operator_hosts, accounts, changer, provider, expected):
    # given: a public name the attacker owns, over https
    account = accounts[provider]
    hostile = {
        "aws": {"endpoint_url": "https://collector.attacker.example"},
        "azure": {"authority_host": "login.attacker.example"},
        "gcp": {"endpoints": {"bigquery": "https://bigquery.attacker.example"}},
    }[provider]
    before = CloudAccount.objects.get(pk=account.pk).settings
    # when
    response = changer.patch(f"/api/v1/accounts/{account.pk}/", {"settings": {**before, **hostile}}, format="json")
    # then
    assert response.status_code == 400
    assert expected in " ".join(response.json()["settings"])
    assert CloudAccount.objects.get(pk=account.pk).settings == before


def test_plain_http_endpoint_is_refused(no_operator_hosts, accounts, changer):
    # given
    account = accounts["aws"]
    # when
    response = changer.patch(
        f"/api/v1/accounts/{account.pk}/",
        {"settings": {**account.settings, "endpoint_url": "http://s3.us-east-1.amazonaws.com"}},
        format="json",
    )
    # then
    assert response.status_code == 400
    assert "settings.endpoint_url: http:// is not allowed" in response.json()["settings"][0]


def test_a_gcp_key_whose_token_uri_points_elsewhere_is_refused(no_operator_hosts, accounts, changer, attacker):
    # given
    account = accounts["gcp"]
    key, _ = gcp_key()
    # when
    response = changer.patch(
        f"/api/v1/accounts/{account.pk}/",
        {"credentials": {**key, "token_uri": f"https://{attacker.netloc}/token"}},
        format="json",
    )
    universe = changer.patch(
        f"/api/v1/accounts/{account.pk}/",
        {"credentials": {**key, "universe_domain": "attacker.example"}},
        format="json",
    )
    as_text = changer.patch(
        f"/api/v1/accounts/{account.pk}/",
        {"credentials": json.dumps({**key, "token_uri": f"https://{attacker.netloc}/token"})},
        format="json",
    )
    # then
    assert response.status_code == 400 and "credentials.token_uri" in response.json()["credentials"][0]
    assert as_text.status_code == 400 and "credentials.token_uri" in as_text.json()["credentials"][0]
    assert universe.status_code == 400 and "credentials.universe_domain" in universe.json()["credentials"][0]
    assert account.credential.get_secret()["token_uri"] == "https://oauth2.googleapis.com/token"


def test_changing_an_endpoint_needs_the_credential_again(accounts, changer, attacker):
    # given: even a host the operator allows (the test settings allow 127.0.0.1 for the emulators)
    account = accounts["azure"]
    hostile = hostile_settings(account, attacker)
    # when
    without = changer.patch(f"/api/v1/accounts/{account.pk}/", {"settings": hostile}, format="json")
    renamed = changer.patch(f"/api/v1/accounts/{account.pk}/", {"name": "azure-main"}, format="json")
    # then
    assert without.status_code == 400
    messages = without.json()["settings"]
    for name in ("settings.authority_host", "settings.arm_endpoint", "settings.ca_bundle"):
        assert f"changing {name} requires the credential to be entered again" in messages
    assert "authority_host" not in CloudAccount.objects.get(pk=account.pk).settings
    assert renamed.status_code == 200  # a change of anything else needs no secret
    # and whoever knows the secret may change it (it is their own secret they send)
    again = changer.patch(
        f"/api/v1/accounts/{account.pk}/",
        {"settings": hostile, "credentials": {"tenant_id": TENANT, "client_id": "app-id", "client_secret": "new"}},
        format="json",
    )
    assert again.status_code == 200, again.content


def test_admin_form_refuses_the_endpoint_and_needs_the_credential_again(client, accounts, attacker, settings):
    # given: a staff user who may change accounts only
    staff = UserFactory(username="staff-changer", is_staff=True)
    member_of_default_team(staff)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["change_cloudaccount", "view_cloudaccount"]))
    client.force_login(staff)
    account = accounts["azure"]
    url = reverse("admin:providers_app_cloudaccount_change", args=[account.pk])
    credential_id = account.credential.pk
    form = {
        "name": account.name,
        "team": str(account.team_id),
        "provider": "azure",
        "external_id": account.external_id,
        "is_active": "on",
        "credential-TOTAL_FORMS": "1",
        "credential-INITIAL_FORMS": "1",
        "credential-MIN_NUM_FORMS": "0",
        "credential-MAX_NUM_FORMS": "1",
        "credential-0-id": str(credential_id),
        "credential-0-account": str(account.pk),
        "credential-0-kind": "",
        "credential-0-secret": "",
    }
    hostile = json.dumps(hostile_settings(account, attacker))
    # when: the policy refuses 127.0.0.1 (production), then allows it (operator) but no credential is typed
    settings.EGRESS_ALLOWED_HOSTS = []
    refused = client.post(url, {**form, "settings": hostile})
    settings.EGRESS_ALLOWED_HOSTS = ["127.0.0.1"]
    no_secret = client.post(url, {**form, "settings": hostile})
    # then
    assert refused.status_code == no_secret.status_code == 200  # the form again, with its errors
    assert "settings.authority_host: 127.0.0.1 is a loopback address" in refused.content.decode()
    assert "changing settings.authority_host requires the credential to be entered again" in no_secret.content.decode()
    assert "authority_host" not in CloudAccount.objects.get(pk=account.pk).settings
    assert AZURE_SECRET not in refused.content.decode() + no_secret.content.decode()
    # and a user who may edit the credential, typing it again, can make the change
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["change_credential", "view_credential"]))
    new_secret = json.dumps({"tenant_id": TENANT, "client_id": "app-id", "client_secret": "typed-again"})
    again = client.post(url, {**form, "settings": hostile, "credential-0-secret": new_secret})
    assert again.status_code == 302, again.content.decode()[:3000]
    account.refresh_from_db()
    assert account.settings["authority_host"] == attacker.netloc
    assert account.credential.get_secret()["client_secret"] == "typed-again"


def test_an_account_row_already_pointing_at_the_attacker_is_refused_at_call_time(no_operator_hosts, attacker, accounts):
    # given: rows written straight into the database (from before the policy existed)
    for provider in ("aws", "azure", "gcp"):
        account = accounts[provider]
        CloudAccount.objects.filter(pk=account.pk).update(settings=hostile_settings(account, attacker))
    # when: the scheduled sync, discovery and the connection check run
    outcomes = {}
    for provider in ("aws", "azure", "gcp"):
        account_id = accounts[provider].pk
        outcomes[provider] = account_connection_check(account_id=account_id)
        with pytest.raises(PermanentError, match="refused"):
            account_cost_sync(account_id=account_id)
        with pytest.raises(PermanentError, match="refused"):
            get_resource_source(CloudAccount.objects.get(pk=account_id))
    # then
    for provider, outcome in outcomes.items():
        assert outcome["ok"] is False
        assert outcome["checks"][0]["name"] == "egress policy"
        assert "127.0.0.1 is a loopback address" in outcome["summary"], (provider, outcome)
    assert_no_secret_arrived(attacker, accounts)


def test_the_connectors_check_again_right_before_each_client(no_operator_hosts, attacker, accounts):
    # given: rows pointing at the attacker, used through the connectors' own entry points (no shared gate)
    from providers_app.connectors import aws, azure, gcp

    for provider in ("aws", "azure", "gcp"):
        account = accounts[provider]
        CloudAccount.objects.filter(pk=account.pk).update(settings=hostile_settings(account, attacker))
    fresh = {
        p: CloudAccount.objects.select_related("credential").get(pk=accounts[p].pk) for p in ("aws", "azure", "gcp")
    }
    # when
    reports = [module.connection_check(fresh[name]) for name, module in (("aws", aws), ("azure", azure), ("gcp", gcp))]
    # then
    for report in reports:
        assert not report.ok
        assert "refused" in report.summary() and "127.0.0.1" in report.summary()
    assert_no_secret_arrived(attacker, accounts)


def test_the_listener_does_record_secrets_when_the_operator_allows_its_host(attacker, accounts, tmp_path):
    """The control: with 127.0.0.1 operator-allowed (the test settings) and plain http, the AWS connection check
    reaches the listener, and the signed request names the access key id. So the refusals above are real."""
    plain = RecordingListener(reply=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        account = accounts["aws"]
        account.settings = {**account.settings, "endpoint_url": f"http://{plain.netloc}"}
        account.save()
        # when
        account_connection_check(account_id=account.pk)
        # then
        assert plain.connections >= 1
        assert AWS_KEY_ID.encode() in plain.received  # SigV4: Credential=<access key id>/<date>/...
        assert AWS_SECRET.encode() not in plain.received  # never the secret itself (it signs)
    finally:
        plain.stop()
