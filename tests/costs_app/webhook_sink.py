"""A real HTTP receiver on 127.0.0.1 for notification tests: records every POST it gets."""

import json
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    path: str
    headers: Message
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookSink:
    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    # Paths answered with this status instead of 200, to make a receiver fail.
    fail_paths: dict[str, int] = field(default_factory=dict)
    # Paths that fail (status, times) for their first `times` requests, then recover.
    fail_first: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status_for(self, path: str) -> int:
        with self.lock:
            if path in self.fail_first:
                status, times = self.fail_first[path]
                if times > 0:
                    self.fail_first[path] = (status, times - 1)
                    return status
            return self.fail_paths.get(path, 200)

    def hits(self, path: str) -> list["Received"]:
        return [hit for hit in list(self.received) if hit.path == path]

    def url(self, path: str = "/hook") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def webhook_sink():
    sink_holder: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (http.server's naming)
            sink = sink_holder["sink"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # the message object: header lookups are case-insensitive, as in HTTP
            sink.received.append(Received(self.path, self.headers, body))
            status = sink.status_for(self.path)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"nope")

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink = WebhookSink(server)
    sink_holder["sink"] = sink
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
