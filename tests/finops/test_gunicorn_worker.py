"""The web processes' worker (finops/gunicorn_worker.py), run by a real gunicorn: a keep-alive connection is closed
after WEB_KEEPALIVE_REQUESTS requests, and clients that connect at once are served by every process, not one."""

import http.client
import subprocess
import sys
import threading
from collections import Counter

import pytest

from finops import gunicorn_worker
from tests.celery_procs import ROOT, child_env
from tests.security.live import LiveServer, web_command

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

# Which process served each request, and on which of the client's connections (its X-Conn header: the client's local
# port), last on the access-log line.
PID_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(p)s %({x-conn}i)s'


def server_command(workers: int, threads: int, *extra: str) -> list[str]:
    """docker-compose.yml's web command, smaller, logging which process served each request."""
    return [*web_command(workers=workers, threads=threads, access_log_format=PID_LOG_FORMAT), *extra]


def get_on(conn: http.client.HTTPConnection, path: str = "/healthz") -> tuple[int, str, int]:
    """One request on `conn` (reopened by http.client when the server closed it): status, Connection header, and the
    client's local port, which tells one TCP connection from the next (also sent as X-Conn, for the access log)."""
    if conn.sock is None:
        conn.connect()
    port = conn.sock.getsockname()[1]
    conn.request("GET", path, headers={"X-Conn": str(port)})
    response = conn.getresponse()
    response.read()
    return response.status, (response.getheader("Connection") or "").lower(), port


def served_by(server: LiveServer, path: str) -> tuple[Counter, Counter]:
    """Per gunicorn process id, from the access log: the requests for `path` it served, and the connections it served
    them on."""
    requests, connections = Counter(), {}
    for line in server.log.splitlines():
        if f'"GET {path} ' in line:
            pid, conn = line.rsplit(" ", 2)[1:]
            if conn == "-":  # not one of the test's clients (LiveServer's readiness probe)
                continue
            requests[pid] += 1
            connections.setdefault(pid, set()).add(conn)
    return requests, Counter({pid: len(conns) for pid, conns in connections.items()})


def test_a_keep_alive_connection_is_closed_after_its_cap_and_the_client_goes_on(tmp_path):
    server = LiveServer(tmp_path, command=server_command(1, 2), WEB_KEEPALIVE_REQUESTS="5")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        ports, answers = [], []
        for _ in range(12):
            status, connection, port = get_on(conn)
            answers.append((status, connection))
            ports.append(port)
        conn.close()
    finally:
        server.stop()
    # then: requests 5 and 10 were answered with Connection: close, the others kept the connection open; the client
    # went on over a new connection each time (three in all), every request answered
    assert [status for status, _ in answers] == [200] * 12
    assert [i + 1 for i, (_, connection) in enumerate(answers) if connection == "close"] == [5, 10], answers
    assert [len(set(ports[:5])), len(set(ports[5:10])), len(set(ports[10:]))] == [1, 1, 1]
    assert len(set(ports)) == 3, ports


def test_connections_stay_open_without_a_cap(tmp_path):
    server = LiveServer(tmp_path, command=server_command(1, 2), WEB_KEEPALIVE_REQUESTS="0")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        answers = [get_on(conn) for _ in range(150)]  # past the default cap (100)
        conn.close()
    finally:
        server.stop()
    assert {status for status, _, _ in answers} == {200}
    assert "close" not in {connection for _, connection, _ in answers}
    assert len({local_port for _, _, local_port in answers}) == 1  # one TCP connection throughout


def test_clients_that_connect_at_once_are_spread_over_the_processes(tmp_path):
    # given: 2 processes x 2 threads, and 16 clients that open their keep-alive connections together and send
    # requests back to back (a dashboard's, a proxy's pool): plain gthread leaves most of them on one process (seen
    # here: 961/0, 660/301, 841/120 requests); each connection reopened after 20 requests
    server = LiveServer(tmp_path, command=server_command(2, 2), WEB_KEEPALIVE_REQUESTS="20")
    clients, requests_each = 16, 60
    go = threading.Barrier(clients)
    errors: list[str] = []

    def client() -> None:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        go.wait()
        try:
            for _ in range(requests_each):
                status, _, _ = get_on(conn)
                if status != 200:
                    errors.append(str(status))
        except Exception as exc:  # reported below, with the counts
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
    # read once gunicorn has exited: a process writes a request's access-log line after the client has its answer
    requests, connections = served_by(server, "/healthz")
    # then: every request answered, and each process held at least a third of the connections
    print(f"per web process: requests {dict(requests)}, connections {dict(connections)}")
    assert not errors, errors[:5]
    assert sum(requests.values()) == clients * requests_each
    assert len(connections) == 2, connections
    assert min(connections.values()) >= sum(connections.values()) / 3, connections


@pytest.mark.parametrize(
    ("name", "value"),
    [("WEB_KEEPALIVE_REQUESTS", "-1"), ("WEB_KEEPALIVE_REQUESTS", "many"), ("WEB_ACCEPT_DEFER_MS", "5000")],
)
def test_a_bad_setting_stops_gunicorn_at_start_with_its_name(name, value):
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", *server_command(2, 2), "--check-config"],
        cwd=ROOT,
        env=child_env(**{name: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert name in proc.stdout + proc.stderr


def test_settings_default_and_bounds(monkeypatch):
    monkeypatch.delenv("WEB_KEEPALIVE_REQUESTS", raising=False)
    monkeypatch.delenv("WEB_ACCEPT_DEFER_MS", raising=False)
    assert gunicorn_worker.keepalive_requests() == 100
    assert gunicorn_worker.accept_defer_seconds() == 0.01
    monkeypatch.setenv("WEB_KEEPALIVE_REQUESTS", " 0 ")
    monkeypatch.setenv("WEB_ACCEPT_DEFER_MS", "1000")
    assert gunicorn_worker.keepalive_requests() == 0
    assert gunicorn_worker.accept_defer_seconds() == 1.0
