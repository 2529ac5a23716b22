"""The egress policy: every URL the web app or a worker calls out to (cloud endpoints and authorities, Slack,
webhooks) is checked here, when it is saved and again right before the call.

Why: an account's endpoint or a channel's target is typed by a user; unchecked, it sends a cloud credential to a
host of their choosing, or makes the worker fetch internal addresses (metadata service, Redis, the app itself).

1. `url_check` (save time, no network): https only; no user:password@; per kind a host allow-list (AWS service
   endpoints under amazonaws.com, Azure's public and sovereign authorities, ARM hosts and blob storage, Google's
   googleapis.com, hooks.slack.com; a webhook may be any public host); non-public IP literals, localhost,
   *.internal / *.local and metadata names refused; cloud endpoints on port 443 only. A name that only DNS can
   judge (an intranet name, a public name pointing inside) is caught by step 2.
2. `url_resolve` (call time): the same checks, then the host's DNS answer: refused when ANY address is loopback,
   link-local, private, CGNAT, unspecified, multicast, reserved or otherwise not global (IPv4-mapped, 6to4 and
   NAT64 IPv6 addresses are judged by the IPv4 address inside).
3. `http_post` (webhooks and Slack): connects to an address `url_resolve` just validated (no second lookup, so a
   DNS answer that changes between check and connect cannot move the request), verifies TLS against the host
   name, and never follows a redirect (a 3xx is returned to the caller, nothing is sent anywhere else).
   The cloud SDKs do their own connecting: their endpoints are re-checked right before each client is built.

Operator escape hatch: the hosts in EGRESS_ALLOWED_HOSTS (environment only, never the admin or API; exact host
names or IP literals, any port) skip the allow-lists and the address checks and may use plain http: emulators,
a private S3, the tests' local servers.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from django.conf import settings

from .errors import PermanentError, TransientError


class Kind(StrEnum):
    """What a URL is for; each kind has its own host allow-list."""

    AWS = "aws"
    AZURE_AUTHORITY = "azure_authority"
    AZURE_ARM = "azure_arm"
    AZURE_STORAGE = "azure_storage"
    GCP = "gcp"
    SLACK = "slack"
    WEBHOOK = "webhook"


class EgressRefused(PermanentError):
    """A URL the policy does not allow. `field` names the setting, `reason` says why; the text never holds the
    URL's path or query (a webhook URL is a secret), at most its host."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --- the allow-lists ---

# The AWS services the connector calls (botocore endpoint prefixes); a FIPS variant is allowed too.
AWS_SERVICES = ("s3", "sts", "ce", "ec2", "elasticloadbalancing", "rds", "monitoring")
AWS_SUFFIXES = ("amazonaws.com", "amazonaws.com.cn", "api.aws")
AWS_SERVICE_LABEL = re.compile(rf"^(?:{'|'.join(AWS_SERVICES)})(?:-fips)?$")
AWS_REGION_LABEL = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d$")
AZURE_AUTHORITIES = frozenset(
    {
        "login.microsoftonline.com",  # public
        "login.microsoftonline.us",  # US Government
        "login.chinacloudapi.cn",  # China (21Vianet)
        "login.partner.microsoftonline.cn",  # China, newer name
        "login.microsoftonline.de",  # Germany (legacy)
    }
)
AZURE_ARM_HOSTS = frozenset(
    {
        "management.azure.com",
        "management.usgovcloudapi.net",
        "management.chinacloudapi.cn",
        "management.microsoftazure.de",
    }
)
AZURE_STORAGE_HOST = re.compile(
    r"^[a-z0-9]{3,24}\.blob\.core\.(?:windows\.net|usgovcloudapi\.net|chinacloudapi\.cn|cloudapi\.de)$"
)
GCP_SUFFIX = ".googleapis.com"
GCP_HOSTS = frozenset({"accounts.google.com"})  # the older token_uri of service account keys
SLACK_HOSTS = frozenset({"hooks.slack.com"})
# Names that reach the machine itself or a cloud's metadata service, whatever DNS says.
BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "instance-data", "ip6-localhost"})
BLOCKED_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".arpa")
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")

CLOUD_KINDS = frozenset({Kind.AWS, Kind.AZURE_AUTHORITY, Kind.AZURE_ARM, Kind.AZURE_STORAGE, Kind.GCP})


def _aws_host_ok(host: str) -> bool:
    """<service>[.<region>][.dualstack].amazonaws.com(.cn) or <service>.<region>.api.aws; S3 also with a bucket in
    front. Other names under amazonaws.com (API Gateway, load balancers, EC2 public DNS) belong to whoever runs
    them, so a bare `*.amazonaws.com` would let anyone with an AWS account receive the signed requests."""
    suffix = next((s for s in AWS_SUFFIXES if host.endswith("." + s)), None)
    if suffix is None:
        return False
    labels = host[: -len(suffix) - 1].split(".")
    for index in reversed(range(len(labels))):  # the rightmost service label: a bucket's name may contain one
        if AWS_SERVICE_LABEL.match(labels[index]):
            before, after = labels[:index], labels[index + 1 :]
            if before and not labels[index].startswith("s3"):
                return False  # only S3 has names in front of the service (virtual-hosted buckets)
            return all(AWS_REGION_LABEL.match(part) or part == "dualstack" for part in after)
    return False


# What each kind's allow-list admits, in the words of the refusal.
ALLOWED_HOSTS_TEXT: dict[Kind, str] = {
    Kind.AWS: "an AWS service endpoint (<service>.<region>.amazonaws.com / .amazonaws.com.cn)",
    Kind.AZURE_AUTHORITY: f"a Microsoft Entra ID authority ({', '.join(sorted(AZURE_AUTHORITIES))})",
    Kind.AZURE_ARM: f"an Azure Resource Manager host ({', '.join(sorted(AZURE_ARM_HOSTS))})",
    Kind.AZURE_STORAGE: "an Azure blob storage host (<account>.blob.core.windows.net or a sovereign cloud's)",
    Kind.GCP: "a Google API host (*.googleapis.com)",
    Kind.SLACK: "Slack's incoming webhook host (hooks.slack.com)",
    Kind.WEBHOOK: "a public host",
}


def _host_allowed(kind: Kind, host: str) -> bool:
    if kind == Kind.AWS:
        return _aws_host_ok(host)
    if kind == Kind.AZURE_AUTHORITY:
        return host in AZURE_AUTHORITIES
    if kind == Kind.AZURE_ARM:
        return host in AZURE_ARM_HOSTS
    if kind == Kind.AZURE_STORAGE:
        return bool(AZURE_STORAGE_HOST.match(host))
    if kind == Kind.GCP:
        return host.endswith(GCP_SUFFIX) or host in GCP_HOSTS
    if kind == Kind.SLACK:
        return host in SLACK_HOSTS
    return True  # webhooks: any public host; the address checks below decide


# --- addresses ---


def address_refusal(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why this address may not be called ("a private address"), or None for a public unicast address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason}, inside an IPv6 address" if reason else None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip in CGNAT:
        return "a shared (CGNAT 100.64.0.0/10) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


# --- URLs ---


def allowed_hosts() -> frozenset[str]:
    """EGRESS_ALLOWED_HOSTS, normalised: the operator's custom endpoints (emulators, private S3)."""
    return frozenset(_normal_host(h) for h in getattr(settings, "EGRESS_ALLOWED_HOSTS", ()) if str(h).strip())


def _normal_host(host: str) -> str:
    return str(host).strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Target:
    """A URL the policy allowed (statically)."""

    url: str
    scheme: str
    host: str  # lower case, IDNA (punycode), no brackets, no trailing dot
    port: int
    path: str  # path and query, for the request line
    operator_allowed: bool  # in EGRESS_ALLOWED_HOSTS


@dataclass(frozen=True)
class Resolved:
    """A target and the addresses its host resolved to, every one of them allowed."""

    target: Target
    addresses: list[str] = field(default_factory=list)


def authority_url(value: str) -> str:
    """Azure's authority_host is a host ("login.microsoftonline.us") or a URL; as a URL to check."""
    value = str(value or "").strip()
    return value if "://" in value else f"https://{value}"


def url_check(url: object, *, kind: Kind, field: str) -> Target:
    """The static half of the policy (no DNS): raises EgressRefused naming `field` and the reason."""
    if not isinstance(url, str) or not url.strip():
        raise EgressRefused(field, "is not a valid URL (give a non-empty https:// URL)")
    if re.search(r"[\s\x00-\x1f\x7f\\]", url):
        raise EgressRefused(field, "is not a valid URL: it contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
        raw_host, port = parts.hostname, parts.port
    except ValueError:
        raise EgressRefused(field, "is not a valid URL (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        shown = f"{scheme}://" if scheme else "a URL without a scheme"
        raise EgressRefused(field, f"{shown} is not allowed: give an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise EgressRefused(field, "a user name or password in the URL is not allowed")
    if not raw_host:
        raise EgressRefused(field, "the URL has no host")
    host = _normal_host(raw_host)
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise EgressRefused(field, "the host name is not a valid domain name") from None
    port = port or (443 if scheme == "https" else 80)
    target = Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        operator_allowed=host in allowed_hosts(),
    )
    if target.operator_allowed:
        return target
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    reason = address_refusal(ip) if ip is not None else None
    if reason:
        raise EgressRefused(field, f"{host} is {reason}; calls to it are refused")
    if ip is None:
        if not re.fullmatch(r"[a-z0-9_.-]+", host):
            raise EgressRefused(field, "the host name is not a valid domain name")
        if all(re.fullmatch(r"(0x[0-9a-f]*|\d+)", label) for label in host.split(".")):
            # 127.1, 2130706433, 0x7f.1: an IP address in a spelling ipaddress does not read, but getaddrinfo does
            raise EgressRefused(field, f"{host!r} is not a host name (an IP address must be written a.b.c.d)")
        if host in BLOCKED_NAMES or host.endswith(BLOCKED_SUFFIXES):
            raise EgressRefused(field, f"{host} names this machine, an internal network or a metadata service")
    if scheme != "https":
        raise EgressRefused(field, f"http:// is not allowed for {host}: give an https:// URL (TLS protects the secret)")
    if ip is not None:
        if kind != Kind.WEBHOOK:
            raise EgressRefused(field, f"an IP address is not allowed here: give {ALLOWED_HOSTS_TEXT[kind]}")
        return target
    if not _host_allowed(kind, host):
        raise EgressRefused(field, f"{host} is not {ALLOWED_HOSTS_TEXT[kind]}")
    if kind in CLOUD_KINDS and port != 443:
        raise EgressRefused(field, f"port {port} is not allowed for {host} (443 only)")
    return target


def url_resolve(url: object, *, kind: Kind, field: str) -> Resolved:
    """The whole policy, right before a call: the static checks, then every address the host resolves to.

    A name that does not resolve is a TransientError (DNS may be back on the next attempt); a refused address
    is an EgressRefused (a PermanentError: no retry)."""
    target = url_check(url, kind=kind, field=field)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise TransientError(f"{field}: cannot resolve {target.host} ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))
    if not target.operator_allowed:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise EgressRefused(field, f"{target.host} resolves to {address}, {reason}; refused")
    if not addresses:
        raise TransientError(f"{field}: {target.host} resolved to no address")
    return Resolved(target=target, addresses=addresses)


# --- HTTP for webhooks and Slack ---


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    reason: str


def http_post(url: str, *, kind: Kind, field: str, body: bytes, headers: dict[str, str], timeout: float) -> HttpAnswer:
    """POST `body` to `url` under the policy: resolved and checked now, connected to a checked address (the
    host name still drives SNI, certificate checks and the Host header), redirects never followed: a 3xx is
    handed back like any other status. Network errors raise OSError / http.client.HTTPException."""
    resolved = url_resolve(url, kind=kind, field=field)
    target = resolved.target
    connection_class = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": ssl.create_default_context()} if target.scheme == "https" else {}
    connection = connection_class(target.host, target.port, timeout=timeout, **kwargs)
    connection._create_connection = _pinned_connect(resolved.addresses)  # noqa: SLF001  (the one hook http.client has)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)  # the answer's body is not used: read a little so the connection closes cleanly
        return HttpAnswer(status=response.status, reason=response.reason)
    finally:
        connection.close()


def _pinned_connect(addresses: list[str]):
    """http.client's socket factory, bound to the checked addresses instead of a second DNS lookup."""

    def connect(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):  # noqa: SLF001
        _host, port = address
        error: OSError | None = None
        for ip in addresses:
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error or OSError("no address to connect to")

    return connect
