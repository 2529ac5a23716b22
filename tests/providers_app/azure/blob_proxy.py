"""A small HTTP proxy in front of Azurite that answers 503 ServerBusy (as Blob storage does under load) to the
first N requests, then forwards everything byte for byte: transient storage errors for the retry tests."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUSY = (
    b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code><Message>The server is busy.'
    b"\nRequestId:00000000-0000-0000-0000-000000000000\nTime:2024-10-05T06:00:00.0000000Z</Message></Error>"
)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class BlobProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.fail_next = 0
        self.failed = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    busy = proxy.fail_next > 0
                    if busy:
                        proxy.fail_next -= 1
                        proxy.failed += 1
                if busy:
                    self.send_response(503, "The server is busy.")
                    self.send_header("x-ms-error-code", "ServerBusy")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(BUSY)))
                    self.end_headers()
                    self.wfile.write(BUSY)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
