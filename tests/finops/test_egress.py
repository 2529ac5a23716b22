"""The egress policy's static checks as a table: URL and kind -> allowed, or refused with the reason; the DNS
half with real lookups (loopback names from /etc/hosts, IP literals)."""

import pytest

from finops.egress import EgressRefused, Kind, address_refusal, allowed_hosts, url_check, url_resolve
from finops.errors import PermanentError, TransientError

ALLOWED = [
    ("https://s3.us-east-1.amazonaws.com", Kind.AWS),
    ("https://s3.amazonaws.com", Kind.AWS),
    ("https://acme-billing.s3.eu-west-1.amazonaws.com", Kind.AWS),
    ("https://ec2.s3.eu-west-1.amazonaws.com", Kind.AWS),  # a bucket named like a service
    ("https://s3.dualstack.us-east-1.amazonaws.com", Kind.AWS),
    ("https://sts.us-gov-west-1.amazonaws.com", Kind.AWS),
    ("https://sts-fips.us-east-1.amazonaws.com", Kind.AWS),
    ("https://ec2.cn-north-1.amazonaws.com.cn", Kind.AWS),
    ("https://ce.us-east-1.amazonaws.com", Kind.AWS),
    ("https://monitoring.eu-central-1.amazonaws.com/", Kind.AWS),
    ("https://s3.us-east-1.api.aws", Kind.AWS),
    ("https://login.microsoftonline.com", Kind.AZURE_AUTHORITY),
    ("https://login.microsoftonline.us/", Kind.AZURE_AUTHORITY),
    ("https://login.chinacloudapi.cn", Kind.AZURE_AUTHORITY),
    ("https://login.microsoftonline.de", Kind.AZURE_AUTHORITY),
    ("https://management.azure.com", Kind.AZURE_ARM),
    ("https://management.usgovcloudapi.net", Kind.AZURE_ARM),
    ("https://management.chinacloudapi.cn", Kind.AZURE_ARM),
    ("https://acmebilling.blob.core.windows.net", Kind.AZURE_STORAGE),
    ("https://acmebilling.blob.core.usgovcloudapi.net/", Kind.AZURE_STORAGE),
    ("https://acmebilling.blob.core.chinacloudapi.cn", Kind.AZURE_STORAGE),
    ("https://bigquery.googleapis.com", Kind.GCP),
    ("https://oauth2.googleapis.com/token", Kind.GCP),
    ("https://accounts.google.com/o/oauth2/token", Kind.GCP),
    ("https://hooks.slack.com/services/T0/B0/x", Kind.SLACK),
    ("https://HOOKS.SLACK.COM./services/T0/B0/x", Kind.SLACK),
    ("https://alerts.example.com/finops?token=x", Kind.WEBHOOK),
    ("https://alerts.example.com:8443/finops", Kind.WEBHOOK),
    ("https://8.8.8.8/hook", Kind.WEBHOOK),
    ("https://[2001:4860:4860::8888]/hook", Kind.WEBHOOK),
    ("https://intranet-name/hook", Kind.WEBHOOK),  # only DNS can judge it: url_resolve does, at call time
]

REFUSED = [
    ("http://s3.us-east-1.amazonaws.com", Kind.AWS, "http:// is not allowed"),
    ("https://abc123.execute-api.us-east-1.amazonaws.com", Kind.AWS, "is not an AWS service endpoint"),
    ("https://my-lb-1.us-east-1.elb.amazonaws.com", Kind.AWS, "is not an AWS service endpoint"),
    ("https://ec2-3-4-5-6.compute-1.amazonaws.com", Kind.AWS, "is not an AWS service endpoint"),
    ("https://amazonaws.com.attacker.example", Kind.AWS, "is not an AWS service endpoint"),
    ("https://s3.us-east-1.amazonaws.com:8443", Kind.AWS, "port 8443 is not allowed"),
    ("https://52.216.0.1", Kind.AWS, "an IP address is not allowed here"),
    ("file:///etc/passwd", Kind.AWS, "file:// is not allowed"),
    ("s3.us-east-1.amazonaws.com", Kind.AWS, "a URL without a scheme is not allowed"),
    ("https://login.attacker.example", Kind.AZURE_AUTHORITY, "is not a Microsoft Entra ID authority"),
    ("https://management.attacker.example", Kind.AZURE_ARM, "is not an Azure Resource Manager host"),
    ("https://evil.blob.core.windows.net.attacker.example", Kind.AZURE_STORAGE, "is not an Azure blob storage host"),
    ("https://bigquery.attacker.example", Kind.GCP, "is not a Google API host"),
    ("https://googleapis.com.attacker.example", Kind.GCP, "is not a Google API host"),
    ("http://hooks.slack.com/services/T0/B0/x", Kind.SLACK, "http:// is not allowed"),
    ("https://hooks.slack.com.attacker.example/x", Kind.SLACK, "is not Slack's incoming webhook host"),
    ("http://169.254.169.254/latest/meta-data/", Kind.WEBHOOK, "169.254.169.254 is a link-local address"),
    ("https://169.254.169.254/", Kind.AWS, "link-local"),
    ("http://127.0.0.1:8000/healthz", Kind.WEBHOOK, "127.0.0.1 is a loopback address"),
    ("https://10.1.2.3/hook", Kind.WEBHOOK, "10.1.2.3 is a private address"),
    ("https://172.16.0.1/hook", Kind.WEBHOOK, "a private address"),
    ("https://192.168.1.1/hook", Kind.WEBHOOK, "a private address"),
    ("https://100.64.0.1/hook", Kind.WEBHOOK, "shared (CGNAT"),
    ("https://0.0.0.0/hook", Kind.WEBHOOK, "an unspecified address"),
    ("https://224.0.0.1/hook", Kind.WEBHOOK, "a multicast address"),
    ("https://240.0.0.1/hook", Kind.WEBHOOK, "a reserved address"),
    ("https://[::1]/hook", Kind.WEBHOOK, "::1 is a loopback address"),
    ("https://[fe80::1]/hook", Kind.WEBHOOK, "link-local"),
    ("https://[fd00::1]/hook", Kind.WEBHOOK, "a private address"),
    (
        "https://[::ffff:169.254.169.254]/hook",
        Kind.WEBHOOK,
        "link-local address (where cloud metadata services live), inside an IPv6",
    ),
    ("https://[64:ff9b::7f00:1]/hook", Kind.WEBHOOK, "a loopback address, inside an IPv6 address"),
    ("https://[2002:7f00:1::]/hook", Kind.WEBHOOK, "a loopback address, inside an IPv6 address"),
    ("https://2130706433/hook", Kind.WEBHOOK, "is not a host name"),
    ("https://127.1/hook", Kind.WEBHOOK, "is not a host name"),
    ("https://0x7f.0.0.1/hook", Kind.WEBHOOK, "is not a host name"),
    ("https://localhost/hook", Kind.WEBHOOK, "localhost names this machine"),
    ("https://app.localhost/hook", Kind.WEBHOOK, "names this machine"),
    ("https://metadata.google.internal/computeMetadata/v1/", Kind.WEBHOOK, "a metadata service"),
    ("https://db.ec2.internal/", Kind.WEBHOOK, "an internal network"),
    ("https://printer.local/", Kind.WEBHOOK, "an internal network"),
    ("https://user:pass@alerts.example.com/", Kind.WEBHOOK, "a user name or password in the URL is not allowed"),
    ("https://alerts.example.com /x", Kind.WEBHOOK, "contains whitespace"),
    ("https://alerts.example.com\\@evil.example/", Kind.WEBHOOK, "a backslash"),
    ("https://alerts.example.com:99999/", Kind.WEBHOOK, "bad host or port"),
    ("https:///nohost", Kind.WEBHOOK, "the URL has no host"),
    ("", Kind.WEBHOOK, "is not a valid URL"),
    (None, Kind.WEBHOOK, "is not a valid URL"),
    ("gopher://alerts.example.com/", Kind.WEBHOOK, "gopher:// is not allowed"),
    ("ftp://alerts.example.com/", Kind.WEBHOOK, "ftp:// is not allowed"),
]


@pytest.fixture(autouse=True)
def production_policy(settings):
    settings.EGRESS_ALLOWED_HOSTS = []


@pytest.mark.parametrize(("url", "kind"), ALLOWED)
def test_allowed(url, kind):
    target = url_check(url, kind=kind, field="f")
    assert target.host == target.host.lower() and not target.host.endswith(".")
    assert not target.operator_allowed


@pytest.mark.parametrize(("url", "kind", "reason"), REFUSED)
def test_refused_with_the_reason(url, kind, reason):
    with pytest.raises(EgressRefused) as refused:
        url_check(url, kind=kind, field="settings.endpoint_url")
    assert reason in refused.value.reason
    assert str(refused.value).startswith("settings.endpoint_url: ")
    assert isinstance(refused.value, PermanentError)  # a task fails at once, no retry


def test_the_message_never_holds_the_path_or_query():
    with pytest.raises(EgressRefused) as refused:
        url_check("http://hooks.slack.com/services/T0/B0/topsecret?sig=abc", kind=Kind.SLACK, field="target")
    assert "topsecret" not in str(refused.value) and "sig=abc" not in str(refused.value)


def test_operator_hosts_open_exactly_those_hosts_any_port_plain_http_too(settings):
    # given
    settings.EGRESS_ALLOWED_HOSTS = ["127.0.0.1", "MinIO.corp.example.", "[::1]"]
    # then
    assert allowed_hosts() == {"127.0.0.1", "minio.corp.example", "::1"}
    assert url_check("http://127.0.0.1:5000", kind=Kind.AWS, field="f").operator_allowed
    assert url_check("http://minio.corp.example:9000/", kind=Kind.AWS, field="f").operator_allowed
    assert url_check("http://[::1]:10000/devstoreaccount1", kind=Kind.AZURE_STORAGE, field="f").operator_allowed
    for other in ("http://127.0.0.2:5000", "http://localhost:5000", "http://minio2.corp.example"):
        with pytest.raises(EgressRefused):
            url_check(other, kind=Kind.AWS, field="f")


def test_resolve_refuses_a_name_that_resolves_to_loopback():
    # "localhost" is refused by name already; a dotted name from /etc/hosts is not always there, so the machine's
    # own host name (loopback in /etc/hosts, or a private address in a container) stands for an intranet name
    import socket

    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 443)}
    if not all(address_refusal(a) for a in addresses):
        pytest.skip(f"{name} resolves to a public address here")
    with pytest.raises(EgressRefused) as refused:
        url_resolve(f"https://{name}/hook", kind=Kind.WEBHOOK, field="target")
    assert f"{name} resolves to" in refused.value.reason


def test_resolve_names_an_unresolvable_host_as_transient():
    with pytest.raises(TransientError, match="cannot resolve no-such-host.invalid"):
        url_resolve("https://no-such-host.invalid/hook", kind=Kind.WEBHOOK, field="target")


def test_resolve_with_an_operator_host_gives_its_addresses(settings):
    settings.EGRESS_ALLOWED_HOSTS = ["localhost"]
    resolved = url_resolve("http://localhost:6379/", kind=Kind.WEBHOOK, field="f")
    assert resolved.addresses and all(address_refusal(a) for a in resolved.addresses)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("127.0.0.53", "a loopback address"),
        ("169.254.170.2", "a link-local address"),  # ECS task metadata
        ("fd00:ec2::254", "a private address"),  # EC2 IMDS over IPv6
        ("::ffff:10.0.0.1", "a private address, inside an IPv6 address"),
        ("192.0.2.1", "a private address"),  # TEST-NET
    ],
)
def test_address_refusal(address, refused):
    reason = address_refusal(address)
    assert reason == refused if refused is None else reason.startswith(refused)
