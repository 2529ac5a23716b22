"""A local HTTP server answering like Google's public REST APIs, for the real google-cloud-* clients.

- OAuth 2.0 token endpoint (the service account key's token_uri): verifies the JWT bearer assertion's
  RS256 signature against the public key of the service account it names, so a wrong key really fails
  ("invalid_grant: Invalid JWT Signature.").
- BigQuery v2: tables.get, jobs.insert, jobs.get, jobs.getQueryResults, tabledata.list with pageToken
  paging and f/v-encoded rows; the two query shapes the connector sends (the per-month fingerprint and
  the month's rows) are evaluated over the table's rows held here.
- Compute Engine v1: {instances,disks,addresses} aggregatedList and snapshots list, with nextPageToken,
  from the recorded resources (recorded/compute_<project>.json).

Every API request must carry a bearer token this server issued, or a self-signed JWT of a known key.
Faults for tests: `fail(path_part, n, status)` answers n requests with that status, `deny(permission)`
answers 403 naming the permission.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import urllib.parse
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

RECORDED = Path(__file__).parent / "recorded"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def service_account_key(email: str, project: str, token_uri: str, key=None) -> tuple[dict, object]:
    """A service account key file (the JSON Google issues) with a fresh RSA key; returns (json, private key)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": f"{abs(hash(pem)) % 10**20:020d}"[:40],
        "private_key": pem,
        "client_email": email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return info, key


def _encode(value, field: dict, int64_ts: bool):
    """A Python value as BigQuery's REST API writes it (f/v rows, every scalar as text)."""
    if field.get("mode") == "REPEATED":
        item = dict(field, mode="NULLABLE")
        return [{"v": _encode(v, item, int64_ts)} for v in (value or [])]
    if value is None:
        return None
    if field["type"] in ("RECORD", "STRUCT"):
        return {"f": [{"v": _encode(value.get(f["name"]), f, int64_ts)} for f in field["fields"]]}
    if field["type"] == "TIMESTAMP":
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        micros = (moment - EPOCH) // __import__("datetime").timedelta(microseconds=1)
        return str(micros) if int64_ts else repr(micros / 1e6)
    if field["type"] == "BOOLEAN":
        return "true" if value else "false"
    return str(value)


def _error(code: int, message: str, reason: str, status: str) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": status,
        }
    }


class GoogleApi:
    def __init__(self):
        self.keys: dict[str, object] = {}  # client_email -> public key
        self.tokens: dict[str, str] = {}  # access token -> client_email
        self.tables: dict[str, dict] = {}  # "project.dataset.table" -> {"schema", "rows", "modified"}
        self.jobs: dict[str, dict] = {}
        self.compute: dict[str, dict] = {}  # project -> {"instances": [...], ...}
        self.cpu: dict[str, dict[str, list[float]]] = {}  # project -> instance id -> hourly utilisation, oldest first
        self.denied: set[str] = set()
        self.faults: list[list] = []  # [path part, remaining, status]
        self.requests: list[tuple[str, str]] = []
        self.compute_page_size = 2
        self.bq_page_max = 1000
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token_uri = f"{self.url}/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # --- test set-up ---

    def register(self, email: str, project: str) -> tuple[dict, object]:
        info, key = service_account_key(email, project, self.token_uri)
        self.keys[email] = key.public_key()
        return info, key

    def table_put(self, table_id: str, schema_file: str, rows: list[dict]) -> None:
        schema = json.loads((RECORDED / schema_file).read_text())
        with self._lock:
            self.tables[table_id] = {"schema": schema, "rows": copy.deepcopy(rows), "modified": next(self._ids)}

    def compute_load(self, project: str, recorded: str | None = None) -> dict:
        data = json.loads((RECORDED / (recorded or f"compute_{project}.json")).read_text())
        self.compute[project] = data
        return data

    def fail(self, path_part: str, times: int, status: int = 503) -> None:
        self.faults.append([path_part, times, status])

    def deny(self, permission: str) -> None:
        self.denied.add(permission)

    def reset_faults(self) -> None:
        self.faults.clear()
        self.denied.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- HTTP ---

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def _dispatch(self, method: str):
                body = self._body()
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                api.requests.append((method, parsed.path))
                for fault in api.faults:
                    if fault[0] in parsed.path and fault[1] > 0:
                        fault[1] -= 1
                        status = fault[2]
                        text = "Rate limit exceeded" if status == 429 else "The service is currently unavailable."
                        name = "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"
                        reason = "rateLimitExceeded" if status == 429 else "backendError"
                        return self._send(status, _error(status, text, reason, name))
                try:
                    if parsed.path == "/token" and method == "POST":
                        return self._send(*api.token(urllib.parse.parse_qs(body.decode())))
                    who = api.caller(self.headers.get("Authorization", ""))
                    if who is None:
                        return self._send(
                            401,
                            _error(
                                401,
                                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                                "login cookie or other valid authentication credential.",
                                "authError",
                                "UNAUTHENTICATED",
                            ),
                        )
                    payload = json.loads(body) if body else {}
                    return self._send(*api.route(method, parsed.path, query, payload))
                except Exception as exc:  # a bug in this server: say so loudly
                    return self._send(500, _error(500, f"test server error: {exc!r}", "internalError", "INTERNAL"))

        return Handler

    # --- OAuth ---

    def token(self, form: dict) -> tuple[int, dict]:
        assertion = (form.get("assertion") or [""])[0]
        try:
            head, payload, signature = assertion.split(".")
            claims = json.loads(b64url_decode(payload))
        except ValueError:
            return 400, {"error": "invalid_request", "error_description": "Invalid assertion."}
        key = self.keys.get(claims.get("iss", ""))
        if key is None:
            return 400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"}
        try:
            key.verify(b64url_decode(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims.get("aud") not in (self.token_uri, "https://oauth2.googleapis.com/token"):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT: audience mismatch."}
        token = f"ya29.test-{next(self._ids)}"
        self.tokens[token] = claims["iss"]
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def caller(self, authorization: str) -> str | None:
        token = authorization.removeprefix("Bearer ").strip()
        if token in self.tokens:
            return self.tokens[token]
        try:  # a self-signed JWT (what gapic clients send for service accounts)
            head, payload, signature = token.split(".")
            claims = json.loads(b64url_decode(payload))
            key = self.keys[claims["iss"]]
            key.verify(b64url_decode(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
            return claims["iss"]
        except (ValueError, KeyError, InvalidSignature):
            return None

    # --- routing ---

    def route(self, method: str, path: str, query: dict, payload: dict) -> tuple[int, dict]:
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/(.*)", path)
        if m:
            return self.bigquery(method, m.group(1), m.group(2), query, payload)
        m = re.fullmatch(r"/v3/projects/([^/]+)/timeSeries", path)
        if m and method == "GET":
            return self.time_series(m.group(1), query)
        m = re.fullmatch(
            r"/compute/v1/projects/([^/]+)/(aggregated/(instances|disks|addresses)|global/snapshots)", path
        )
        if m and method == "GET":
            return self.compute_list(m.group(1), m.group(3) or "snapshots", query)
        return 404, _error(404, f"The requested URL {path} was not found on this server.", "notFound", "NOT_FOUND")

    # --- BigQuery ---

    def _denied(self, permission: str, project: str) -> tuple[int, dict] | None:
        if permission in self.denied:
            return 403, _error(
                403,
                f"Access Denied: Project {project}: User does not have {permission} permission in project {project}.",
                "accessDenied",
                "PERMISSION_DENIED",
            )
        return None

    def bigquery(self, method, project, rest, query, payload) -> tuple[int, dict]:
        int64_ts = query.get("formatOptions.useInt64Timestamp", "").lower() == "true"
        m = re.fullmatch(r"datasets/([^/]+)/tables/([^/]+)", rest)
        if m and method == "GET":
            return self.table_get(project, m.group(1), m.group(2))
        m = re.fullmatch(r"datasets/([^/]+)/tables/([^/]+)/data", rest)
        if m and method == "GET":
            job = self.jobs.get(m.group(2).removeprefix("anon_"))
            if job is None:
                return 404, _error(
                    404, f"Not found: Table {project}:{m.group(1)}.{m.group(2)}", "notFound", "NOT_FOUND"
                )
            rows, token = self._page(job, query)
            body = {"kind": "bigquery#tableDataList", "etag": "x", "totalRows": str(len(job["rows"])), "rows": rows}
            if token:
                body["pageToken"] = token
            return 200, self._encoded(body, job, int64_ts)
        if rest == "jobs" and method == "POST":
            return self.job_insert(project, payload)
        m = re.fullmatch(r"jobs/([^/]+)", rest)
        if m and method == "GET":
            job = self.jobs.get(m.group(1))
            return (200, job["resource"]) if job else (404, _error(404, "Not found: Job", "notFound", "NOT_FOUND"))
        m = re.fullmatch(r"queries/([^/]+)", rest)
        if m and method == "GET":
            job = self.jobs.get(m.group(1))
            if job is None:
                return 404, _error(404, "Not found: Job", "notFound", "NOT_FOUND")
            rows, token = self._page(job, query)
            body = {
                "kind": "bigquery#getQueryResultsResponse",
                "etag": "x",
                "schema": {"fields": job["schema"]},
                "jobReference": job["resource"]["jobReference"],
                "totalRows": str(len(job["rows"])),
                "rows": rows,
                "totalBytesProcessed": "0",
                "jobComplete": True,
                "cacheHit": False,
            }
            if token:
                body["pageToken"] = token
            return 200, self._encoded(body, job, int64_ts)
        return 404, _error(404, f"unknown BigQuery call {method} {rest}", "notFound", "NOT_FOUND")

    def table_get(self, project, dataset, table) -> tuple[int, dict]:
        denied = self._denied("bigquery.tables.get", project)
        if denied:
            return denied
        stored = self.tables.get(f"{project}.{dataset}.{table}")
        if stored is None:
            return 404, _error(404, f"Not found: Table {project}:{dataset}.{table}", "notFound", "NOT_FOUND")
        return 200, {
            "kind": "bigquery#table",
            "etag": "x",
            "id": f"{project}:{dataset}.{table}",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": stored["schema"],
            "timePartitioning": {"type": "DAY"},
            "numRows": str(len(stored["rows"])),
            "creationTime": "1704067200000",
            "lastModifiedTime": str(1704067200000 + stored["modified"]),
            "type": "TABLE",
            "location": "US",
        }

    def job_insert(self, project, payload) -> tuple[int, dict]:
        denied = self._denied("bigquery.jobs.create", project)
        if denied:
            return denied
        sql = payload["configuration"]["query"]["query"]
        params = {
            p["name"]: p["parameterValue"]["value"]
            for p in payload["configuration"]["query"].get("queryParameters", [])
        }
        m = re.search(r"FROM `([^`]+)`", sql)
        table_id = m.group(1)
        stored = self.tables.get(table_id)
        if stored is None:
            p, d, t = table_id.split(".")
            return 404, _error(
                404, f"Not found: Table {p}:{d}.{t} was not found in location US", "notFound", "NOT_FOUND"
            )
        denied = self._denied("bigquery.tables.getData", project)
        if denied:
            return denied
        month = params.get("month")
        rows = [r for r in stored["rows"] if month is None or (r.get("invoice") or {}).get("month") == month]
        if "COUNT(*)" in sql:
            schema, result = self._fingerprint(rows)
        else:
            names = [n.strip() for n in re.search(r"SELECT (.*?) FROM", sql, re.S).group(1).split(",")]
            schema = [f for f in stored["schema"]["fields"] if f["name"] in names]
            result = [{n: r.get(n) for n in names} for r in rows]
        reference = dict(payload.get("jobReference") or {})
        reference.setdefault("jobId", f"job_{next(self._ids)}")
        reference["projectId"] = project
        reference.setdefault("location", "US")
        job_id = reference["jobId"]
        resource = {
            "kind": "bigquery#job",
            "etag": "x",
            "id": f"{project}:US.{job_id}",
            "jobReference": reference,
            "configuration": {
                **payload["configuration"],
                "jobType": "QUERY",
            },
            "status": {"state": "DONE"},
            "statistics": {
                "creationTime": "1",
                "startTime": "2",
                "endTime": "3",
                "query": {"totalBytesProcessed": "0"},
            },
        }
        resource["configuration"]["query"] = {
            **payload["configuration"]["query"],
            "destinationTable": {"projectId": project, "datasetId": "_anon", "tableId": f"anon_{job_id}"},
        }
        self.jobs[job_id] = {"resource": resource, "schema": schema, "rows": result}
        return 200, resource

    @staticmethod
    def _fingerprint(rows) -> tuple[list, list]:
        by_month: dict[str, dict] = {}
        for row in rows:
            month = (row.get("invoice") or {}).get("month")
            if month is None:
                continue
            agg = by_month.setdefault(month, {"month": month, "row_count": 0, "cost": Decimal(0), "last_export": None})
            agg["row_count"] += 1
            agg["cost"] += Decimal(str(row.get("cost") or 0)).quantize(Decimal("1e-9"))
            export = row.get("export_time")
            if export and (agg["last_export"] is None or str(export) > str(agg["last_export"])):
                agg["last_export"] = export
        schema = [
            {"name": "month", "type": "STRING", "mode": "NULLABLE"},
            {"name": "row_count", "type": "INTEGER", "mode": "NULLABLE"},
            {"name": "cost", "type": "NUMERIC", "mode": "NULLABLE"},
            {"name": "last_export", "type": "TIMESTAMP", "mode": "NULLABLE"},
        ]
        return schema, [by_month[m] for m in sorted(by_month)]

    def _page(self, job: dict, query: dict) -> tuple[list, str | None]:
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        size = min(int(query.get("maxResults") or self.bq_page_max), self.bq_page_max)
        rows = job["rows"][start : start + size]
        end = start + len(rows)
        return rows, (str(end) if end < len(job["rows"]) else None)

    @staticmethod
    def _encoded(body: dict, job: dict, int64_ts: bool) -> dict:
        fields = job["schema"]
        body["rows"] = [{"f": [{"v": _encode(r.get(f["name"]), f, int64_ts)} for f in fields]} for r in body["rows"]]
        if not body["rows"]:
            del body["rows"]
        return body

    # --- Cloud Monitoring ---

    def time_series(self, project: str, query: dict) -> tuple[int, dict]:
        """timeSeries.list of compute.googleapis.com/instance/cpu/utilization, ALIGN_MEAN over 3600s: one
        series per page, points newest first (as the API returns them)."""
        from datetime import timedelta

        if "monitoring.timeSeries.list" in self.denied:
            return 403, _error(
                403, "Permission monitoring.timeSeries.list denied (or the resource may not exist).",
                "forbidden", "PERMISSION_DENIED",
            )  # fmt: skip
        assert "compute.googleapis.com/instance/cpu/utilization" in query["filter"], query
        assert query["aggregation.alignmentPeriod"] == "3600s", query
        end = datetime.fromisoformat(query["interval.endTime"].replace("Z", "+00:00"))
        series = sorted((self.cpu.get(project) or {}).items())
        index = int(query.get("pageToken") or 0)
        body: dict = {"timeSeries": [], "unit": "10^2.%"}
        if index < len(series):
            instance_id, values = series[index]
            points = []
            for k, value in enumerate(reversed(values)):
                stop = end - timedelta(hours=k)
                points.append(
                    {
                        "interval": {
                            "startTime": (stop - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "endTime": stop.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        },
                        "value": {"doubleValue": value},
                    }
                )
            body["timeSeries"].append(
                {
                    "metric": {"labels": {"instance_name": instance_id},
                               "type": "compute.googleapis.com/instance/cpu/utilization"},
                    "resource": {"type": "gce_instance",
                                 "labels": {"instance_id": instance_id, "project_id": project}},
                    "metricKind": "GAUGE",
                    "valueType": "DOUBLE",
                    "points": points,
                }
            )  # fmt: skip
            if index + 1 < len(series):
                body["nextPageToken"] = str(index + 1)
        return 200, body

    # --- Compute Engine ---

    def compute_list(self, project: str, collection: str, query: dict) -> tuple[int, dict]:
        permission = f"compute.{collection}.list"
        if permission in self.denied:
            return 403, _error(
                403, f"Required '{permission}' permission for 'projects/{project}'", "forbidden", "PERMISSION_DENIED"
            )
        items = list((self.compute.get(project) or {}).get(collection, []))
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("maxResults") or 500), self.compute_page_size)
        page = items[start : start + size]
        token = str(start + size) if start + size < len(items) else None
        base = f"https://www.googleapis.com/compute/v1/projects/{project}"
        if collection == "snapshots":
            body = {"kind": "compute#snapshotList", "id": f"projects/{project}/global/snapshots", "items": page}
            body["selfLink"] = f"{base}/global/snapshots"
        else:
            scoped: dict[str, dict] = {}
            for item in page:
                scope = item.get("zone") or item.get("region") or "global"
                key = "global" if scope == "global" else "/".join(scope.split("/")[-2:])
                scoped.setdefault(key, {collection: []})[collection].append(item)
            if not page:
                scoped["zones/us-central1-a"] = {
                    "warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope"}
                }
            kind = {"instances": "instance", "disks": "disk", "addresses": "address"}[collection]
            body = {
                "kind": f"compute#{kind}AggregatedList",
                "id": f"projects/{project}/aggregated/{collection}",
                "items": scoped,
                "selfLink": f"{base}/aggregated/{collection}",
            }
        if token:
            body["nextPageToken"] = token
        return 200, body
