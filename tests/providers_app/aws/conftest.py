"""moto in server mode (a real HTTP endpoint on loopback) for the AWS connector tests, and helpers to fill it.

`moto_server` is started once per session on a free port (`python -m moto.server`, from moto[server] in
requirements/dev.txt); `moto` resets its state before each test and hands out boto3 clients pointed at it.
Never skipped: if the server does not come up, the tests error.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from tests.providers_app.aws import cur_files

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}
BUCKET = "acme-billing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self, tmp_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_dir / f"moto-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Without moto's catalogue of public AMIs: their ~1300 snapshots would be listed as the account's own.
            env={**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"},
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2).read()  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {self.url}") from None
                time.sleep(0.2)

    def post(self, path: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
        request = urllib.request.Request(  # noqa: S310
            f"{self.url}{path}", data=body, method="POST", headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.read()

    def reset(self) -> None:
        self.post("/moto-api/reset")
        self.post("/moto-api/reset-auth", b"inf", "text/plain")

    def client(self, service: str, region: str = REGION, **keys):
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id=keys.get("access_key_id", "testing"),
            aws_secret_access_key=keys.get("secret_access_key", "testing"),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server):
    moto_server.reset()
    yield moto_server
    moto_server.reset()


class FlakyProxy:
    """A loopback HTTP proxy in front of moto that answers the first `failures` requests with a throttling error
    (S3: 503 SlowDown; EC2: 503 RequestLimitExceeded; others: 400 Throttling), then forwards everything."""

    def __init__(self, upstream: str, failures: int):
        self.upstream = upstream.removeprefix("http://")
        self.failures = failures
        self.seen = 0
        self.failed = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.seen += 1
                    fail = proxy.failed < proxy.failures
                    if fail:
                        proxy.failed += 1
                if fail:
                    return self._throttle()
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _throttle(self):
                # The S3 REST API answers SlowDown with 503; query/JSON APIs (STS, EC2, CE) with 400 Throttling.
                scope = re.search(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/", self.headers.get("Authorization") or "")
                is_s3 = bool(scope) and scope.group(1) == "s3"
                if scope and scope.group(1) == "ec2":
                    status, body = (
                        503,
                        (
                            b"<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
                            b"<Message>Request limit exceeded.</Message></Error></Errors></Response>"
                        ),
                    )
                    ctype = "text/xml"
                elif is_s3:
                    status, body = (
                        503,
                        (
                            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                            b"<Message>Please reduce your request rate.</Message></Error>"
                        ),
                    )
                    ctype = "application/xml"
                else:
                    status, body = (
                        400,
                        (
                            b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                            b"<Message>Rate exceeded</Message></Error></ErrorResponse>"
                        ),
                    )
                    ctype = "text/xml"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_proxy(moto):
    proxies = []

    def start(failures: int) -> FlakyProxy:
        proxy = FlakyProxy(moto.url, failures)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def iam_enforced(moto):
    """IAM users made while moto lets everything through, then IAM enforced for every request that follows.

    Yields {user: credential}: "no-s3" (sts, ec2 only), "list-only" (+ s3:ListBucket, no s3:GetObject),
    "no-ec2" (sts and s3 only)."""
    iam = moto.client("iam")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    cur_files.put_data_export(
        s3, BUCKET, "cur", "finops", "2024-09", {"x.csv.gz": cur_files.csv_gz(cur_files.cur2_rows("2024-09", 2))}
    )
    grants = {
        "no-s3": ["sts:GetCallerIdentity", "ec2:Describe*"],
        "list-only": ["sts:GetCallerIdentity", "ec2:Describe*", "s3:ListBucket"],
        "no-ec2": ["sts:GetCallerIdentity", "s3:ListBucket", "s3:GetObject"],
    }
    keys = {}
    for user, actions in grants.items():
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    moto.post("/moto-api/reset-auth", b"0", "text/plain")
    yield keys
    moto.post("/moto-api/reset-auth", b"inf", "text/plain")
