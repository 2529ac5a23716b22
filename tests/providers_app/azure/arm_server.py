"""A local HTTPS stand-in for Microsoft Entra ID (token endpoint) and Azure Resource Manager, serving recorded JSON.

The payloads under recorded/ are shaped exactly like the public REST API's responses (`value` + `nextLink`
paging, ARM error bodies, AADSTS errors); the server only keeps the set of resources a test "created" and
pages them. The real azure-identity and azure-mgmt-* clients talk to it over TLS (a self-signed CA the
fixture generates), so authentication, paging, retries and error parsing are the SDKs' own.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import re
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.tls import self_signed_certificate

RECORDED = Path(__file__).parent / "recorded"
PAGE_SIZE = 2  # small, so every listing of more than two resources follows a nextLink

LISTS = {  # path (lower-case, after /subscriptions/{id}) -> the resource kind it lists
    "/providers/microsoft.compute/virtualmachines": "vm",
    "/providers/microsoft.compute/disks": "disk",
    "/providers/microsoft.compute/snapshots": "snapshot",
    "/providers/microsoft.network/publicipaddresses": "ip",
}


def recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost; returns (cert = the CA bundle, key)."""
    return self_signed_certificate(folder, name="azure-test-ca")


class FakeAzure:
    """State: the tenant's app registrations, each subscription's resources, and faults to inject."""

    def __init__(self):
        self.lock = threading.Lock()
        self.apps: dict[tuple[str, str], str] = {}  # (tenant, client id) -> secret
        self.resources: dict[str, dict[str, list[dict]]] = {}  # subscription -> kind -> ARM JSON
        self.instance_views: dict[str, dict] = {}  # lower-case VM id -> instanceView JSON
        self.metrics: dict[str, dict] = {}  # lower-case VM id -> metrics response JSON
        self.denied: dict[str, str] = {}  # path fragment (lower-case) -> action named in AuthorizationFailed
        self.faults: list[dict] = []  # {"match": fragment, "status": 503|429, "left": n}
        self.requests: list[str] = []
        self.tokens: set[str] = set()  # access tokens issued (ARM accepts only these)
        self.scopes: list[str] = []  # the scope of each token request
        self.base = ""

    # --- what tests call ---

    def register_app(self, tenant: str, client_id: str, secret: str) -> None:
        self.apps[(tenant, client_id)] = secret

    def put(self, subscription: str, kind: str, resource: dict) -> None:
        with self.lock:
            items = self.resources.setdefault(subscription, {}).setdefault(kind, [])
            items[:] = [r for r in items if r["id"].lower() != resource["id"].lower()] + [resource]

    def delete(self, subscription: str, kind: str, resource_id: str) -> None:
        with self.lock:
            items = self.resources.get(subscription, {}).get(kind, [])
            items[:] = [r for r in items if r["id"].lower() != resource_id.lower()]

    def deny(self, fragment: str, action: str) -> None:
        self.denied[fragment.lower()] = action

    def fail(self, fragment: str, status: int, times: int) -> None:
        self.faults.append({"match": fragment.lower(), "status": status, "left": times})

    def count(self, fragment: str) -> int:
        return sum(1 for path in self.requests if fragment.lower() in path.lower())


def _handler(state: FakeAzure):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict | None, headers: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            state.requests.append(f"{method} {self.path}")
            for fault in state.faults:
                if fault["left"] > 0 and fault["match"] in path.lower():
                    fault["left"] -= 1
                    body = recorded("error_throttled.json") if fault["status"] == 429 else recorded("error_503.json")
                    return self._send(fault["status"], body, {"Retry-After": "0"})
            if m := re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path):
                return self._openid(m.group(1))
            if m := re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", path):
                return self._token(m.group(1), self._body())
            auth = self.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in state.tokens:
                return self._send(401, recorded("error_invalid_token.json"))
            for fragment, action in state.denied.items():
                if fragment in path.lower():
                    body = recorded("error_authorization_failed.json")
                    sub = path.split("/")[2] if path.startswith("/subscriptions/") else ""
                    body["error"]["message"] = body["error"]["message"].format(
                        action=action, scope=f"/subscriptions/{sub}"
                    )
                    return self._send(403, body)
            if m := re.fullmatch(r"/subscriptions/([^/]+)(/.*)?", path):
                return self._arm(m.group(1), (m.group(2) or "").lower(), path, query)
            self._send(404, {"error": {"code": "NotFound", "message": f"no route {path}"}})

        def _openid(self, tenant: str) -> None:
            if not any(t == tenant for t, _ in state.apps):
                return self._send(400, _aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
            doc = recorded("openid_configuration.json")
            self._send(200, json.loads(json.dumps(doc).replace("{base}", state.base).replace("{tenant}", tenant)))

        def _token(self, tenant: str, form: dict) -> None:
            client = form.get("client_id", "")
            if (tenant, client) not in state.apps:
                return self._send(
                    400,
                    _aad_error(
                        "unauthorized_client",
                        700016,
                        f"Application with identifier '{client}' was not found in the directory '{tenant}'.",
                    ),
                )
            if form.get("client_secret") != state.apps[(tenant, client)]:
                return self._send(
                    401,
                    _aad_error(
                        "invalid_client",
                        7000215,
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                        f"secret value, not the client secret ID, for a secret added to app '{client}'.",
                    ),
                )
            scope = form.get("scope", "")
            state.scopes.append(scope)
            audience = "https://storage.azure.com" if "storage.azure.com" in scope else "https://management.azure.com/"
            token = access_token(tenant, client, audience)
            state.tokens.add(token)
            self._send(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

        def _arm(self, subscription: str, rest: str, path: str, query: dict) -> None:
            if subscription not in state.resources:
                body = recorded("error_subscription_not_found.json")
                body["error"]["message"] = body["error"]["message"].format(subscription=subscription)
                return self._send(404, body)
            if rest == "":
                return self._send(
                    200,
                    {
                        "id": f"/subscriptions/{subscription}",
                        "subscriptionId": subscription,
                        "displayName": f"sub {subscription[:8]}",
                        "state": "Enabled",
                    },
                )
            kind = LISTS.get(rest)
            if kind is not None:
                with state.lock:
                    items = copy.deepcopy(state.resources[subscription].get(kind, []))
                if kind == "vm" and query.get("statusOnly", ["false"])[0].lower() == "true":
                    for vm in items:
                        vm["properties"] = {"instanceView": state.instance_views.get(vm["id"].lower(), {})}
                start = int(query.get("$skiptoken", ["0"])[0])
                page = {"value": items[start : start + PAGE_SIZE]}
                if start + PAGE_SIZE < len(items):
                    params = {k: v[0] for k, v in query.items() if k != "$skiptoken"}
                    params["$skiptoken"] = str(start + PAGE_SIZE)
                    page["nextLink"] = f"{state.base}{path}?{urlencode(params)}"
                return self._send(200, page)
            if rest.endswith("/providers/microsoft.insights/metrics"):
                resource_id = path[: -len("/providers/Microsoft.Insights/metrics")].lower()
                body = state.metrics.get(resource_id)
                if body is None:
                    body = recorded("metrics_empty.json")
                # Azure Monitor answers only the metrics named in metricnames (comma-separated)
                wanted = set(query.get("metricnames", [""])[0].split(","))
                body = {**body, "value": [m for m in body.get("value", []) if m["name"]["value"] in wanted]}
                return self._send(200, body)
            if rest.endswith("/instanceview"):
                vm_id = path[: -len("/instanceView")].lower()
                if vm_id in state.instance_views:
                    return self._send(200, state.instance_views[vm_id])
            body = recorded("error_resource_not_found.json")
            self._send(404, body)

    return Handler


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(tenant: str, client: str, audience: str) -> str:
    """A JWT shaped like Entra ID's v1 access tokens (what Azurite's --oauth basic decodes and checks: issuer,
    audience, validity); signed with a throw-away key, as nothing here verifies signatures."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    header = {"typ": "JWT", "alg": "HS256"}
    claims = {
        "aud": audience, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 60,
        "exp": now + 3600, "appid": client, "tid": tenant, "oid": str(uuid.uuid4()), "sub": client,
        "uti": uuid.uuid4().hex, "ver": "1.0",
    }  # fmt: skip
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(b"finops-test", signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _aad_error(error: str, code: int, text: str) -> dict:
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {now}",
        "error_codes": [code],
        "timestamp": now,
        "trace_id": str(trace),
        "correlation_id": str(correlation),
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }


class FakeAzureServer:
    def __init__(self, cert: Path, key: Path):
        self.state = FakeAzure()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.state.base = f"https://{self.host}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- resources from the recorded payloads, with the test's names filled in ---


def _fill(template: str, **values) -> dict:
    text = (RECORDED / template).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return json.loads(text)


def add_vm(state: FakeAzure, subscription: str, name: str, *, group: str = "rg-web", power: str = "running") -> dict:
    vm = _fill("virtual_machine.json", name=name, subscription=subscription, group=group)
    state.put(subscription, "vm", vm)
    view = "instance_view_running.json" if power == "running" else "instance_view_deallocated.json"
    state.instance_views[vm["id"].lower()] = _fill(view, name=name)
    return vm


def add_disk(state: FakeAzure, subscription: str, name: str, *, group: str = "rg-web", managed_by: str = "") -> dict:
    disk = _fill("disk.json", name=name, subscription=subscription, group=group)
    if managed_by:
        disk["managedBy"] = managed_by
        disk["properties"]["diskState"] = "Attached"
    state.put(subscription, "disk", disk)
    return disk


def add_snapshot(state: FakeAzure, subscription: str, name: str, *, source: str, group: str = "rg-web") -> dict:
    snapshot = _fill("snapshot.json", name=name, subscription=subscription, group=group, source=source)
    state.put(subscription, "snapshot", snapshot)
    return snapshot


def add_public_ip(
    state: FakeAzure, subscription: str, name: str, *, address: str, ip_configuration: str = "", group: str = "rg-web"
) -> dict:
    ip = _fill("public_ip.json", name=name, subscription=subscription, group=group, address=address,
               ip_configuration=ip_configuration)  # fmt: skip
    if not ip_configuration:
        del ip["properties"]["ipConfiguration"]
    state.put(subscription, "ip", ip)
    return ip


def set_cpu(
    state: FakeAzure,
    resource_id: str,
    *,
    end: dt.datetime,
    averages: list[float | None],
    available_memory: list[float | None] | None = None,
) -> None:
    """Hourly "Percentage CPU" (and "Available Memory Bytes") points ending at `end` (exclusive), as Azure Monitor
    returns them for metricnames="Percentage CPU,Available Memory Bytes"; without `available_memory` the memory
    metric comes back with no data points, as for a VM whose host reports none."""
    start = end - dt.timedelta(hours=len(averages))
    body = _fill(
        "metrics_cpu.json", resource=resource_id, start=f"{start:%Y-%m-%dT%H:%M:%SZ}", end=f"{end:%Y-%m-%dT%H:%M:%SZ}"
    )
    for metric, values in zip(body["value"], (averages, available_memory or []), strict=True):
        points = []
        for hour, average in enumerate(values):
            point = {"timeStamp": (start + dt.timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")}
            if average is not None:
                point["average"] = average
            points.append(point)
        metric["timeseries"][0]["data"] = points
    state.metrics[resource_id.lower()] = body
