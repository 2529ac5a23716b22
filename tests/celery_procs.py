"""Real Celery worker and beat processes for integration tests, pointed at the test database and broker.

Use the `celery_worker_proc` / `celery_beat_proc` fixtures (registered in tests/conftest.py) with
`@pytest.mark.django_db(transaction=True)`, so rows the test writes are committed and the worker sees them.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = ",".join(settings.TASK_QUEUES)


def database_url() -> str:
    """The URL of the database the test is using right now (pytest-django's test_ database)."""
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user or password else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or "5432"
    return f"postgres://{auth}{host}:{port}/{db['NAME']}"


def child_env(**overrides: str) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "finops.test_settings",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "SECRET_KEY": settings.SECRET_KEY,
            "ENCRYPTION_KEY": settings.ENCRYPTION_KEY,
            "JWT_SECRET_KEY": settings.JWT_SECRET_KEY,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def flush_broker() -> None:
    """Empty the test broker and result databases so no message from an earlier test is delivered."""
    for url in {settings.CELERY_BROKER_URL, settings.CELERY_RESULT_BACKEND}:
        if url.startswith("redis://"):
            redis.Redis.from_url(url).flushdb()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class CeleryProcess:
    """One `celery -A finops worker|beat` subprocess with its log captured to a file."""

    def __init__(self, role: str, log_dir: Path, args: list[str], env: dict):
        self.role = role
        self.name = f"{role}-{uuid.uuid4().hex[:8]}"
        self.log_path = log_dir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "finops", role, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the pool children too
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, marker: str, timeout: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.role} exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            return marker in self.log

        wait_for(ready, timeout=timeout, what=f"{self.role} to be ready")

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker gets no chance to ack, requeue or clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def start_worker(
    log_dir: Path,
    *,
    hostname: str | None = None,
    queues: str = ALL_QUEUES,
    concurrency: int = 2,
    env: dict | None = None,
    extra: list[str] | None = None,
) -> CeleryProcess:
    hostname = hostname or f"test-{uuid.uuid4().hex[:6]}@%h"
    worker = CeleryProcess(
        "worker",
        log_dir,
        [
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "--hostname",
            hostname,
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            *(extra or []),
        ],
        env or child_env(),
    )
    worker.wait_ready("ready.")
    return worker


def start_beat(log_dir: Path, *, env: dict | None = None) -> CeleryProcess:
    beat = CeleryProcess(
        "beat",
        log_dir,
        ["-l", "INFO", "--pidfile", str(log_dir / f"beat-{uuid.uuid4().hex[:6]}.pid")],
        env or child_env(),
    )
    beat.wait_ready("beat: Starting")
    return beat
