"""A real web server (gunicorn, as in production: finops/gunicorn_conf.py, 2 processes x 8 threads) on a free
loopback port, on the test database and Redis. Two processes, so what must hold across web processes (throttle counts
in Redis, the enqueue-once lock in PostgreSQL) is tested as deployed.

Use from a test marked `django_db(transaction=True)`: rows the test writes are committed, so the server sees
them. Environment overrides (e.g. a THROTTLE_* rate) apply to the server process only.
"""

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.celery_procs import ROOT, child_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_command(*, workers: int, threads: int, access_log_format: str | None = None) -> list[str]:
    """docker-compose.yml's web command (gunicorn's arguments, finops/gunicorn_conf.py) with these processes and
    threads; LiveServer sets its --bind. `access_log_format`: gunicorn's access-log format instead of its default."""
    command = [
        "finops.wsgi:application",
        "--config",
        "python:finops.gunicorn_conf",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        "60",
        "--graceful-timeout",
        "30",
        "--access-logfile",
        "-",
    ]  # fmt: skip
    return command + (["--access-logformat", access_log_format] if access_log_format else [])


class LiveServer:
    def __init__(self, log_dir: Path, command: list[str] | None = None, **env: str):
        """`command`: gunicorn's arguments instead of ours (e.g. docker-compose.yml's); its --bind is replaced."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        if command is not None:
            command = list(command)
            command[command.index("--bind") + 1] = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *command]
            if command is not None
            else [
                sys.executable,
                "-m",
                "gunicorn",
                "finops.wsgi:application",
                "--config",
                "python:finops.gunicorn_conf",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--threads",
                "8",
                "--backlog",
                "256",
                "--timeout",
                "120",
                "--access-logfile",
                "-",
            ],  # fmt: skip
            cwd=ROOT,
            env=child_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            try:
                requests.get(f"{self.url}/healthz", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"gunicorn did not answer within {timeout}s:\n{self.log[-4000:]}")

    def token(self, username: str, password: str) -> str:
        response = requests.post(
            f"{self.url}/api/v1/auth/token", json={"username": username, "password": password}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()["access"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
