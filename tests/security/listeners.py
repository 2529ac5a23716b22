"""Real listeners for the attack tests: a TCP server on loopback that records every byte it is sent (decrypted,
when it speaks TLS with a self-signed certificate made here), and answers with a fixed reply."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

from tests import tls


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """The attacker's certificate for 127.0.0.1 / localhost (its own CA: the file doubles as a ca_bundle)."""
    return tls.self_signed_certificate(directory, name="attacker")


class RecordingListener:
    """Accepts connections on (host, a free port), records what arrives, answers `reply` once a request's
    headers (and Content-Length body) are in, then closes. `connections` counts accepted sockets, so "nothing
    arrived" means not even a TCP connection, let alone a TLS handshake."""

    def __init__(self, *, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None, reply: bytes | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        self.reply = reply if reply is not None else ok
        self.context = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(str(tls[0]), str(tls[1]))
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(self.requests)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next((int(x.split(b":", 1)[1]) for x in lines if x.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
                data += chunk
            self._record(data)  # before answering: the client may look at what arrived as soon as it has the answer
            data = b""
            conn.sendall(self.reply)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            self._record(data)
            with contextlib.suppress(OSError):
                conn.close()

    def _record(self, data: bytes) -> None:
        if data:
            with self._lock:
                self.requests.append(data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def member_of_default_team(user) -> None:
    """Make `user` an account admin of the team "Default" (where account_create puts accounts) WITHOUT the role's
    permission group: the attacker of these tests is inside the account's team, with only the narrow model
    permissions the test gives them (e.g. change_cloudaccount but no view of credentials)."""
    from providers_app.models import Membership, Role
    from providers_app.services.teams import team_default

    Membership.objects.create(team=team_default(), user=user, role=Role.ACCOUNT_ADMIN)
