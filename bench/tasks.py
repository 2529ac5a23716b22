"""Task throughput: a bare Celery no-op against the platform's no-op with its full behaviour, end to end.

    python bench/tasks.py --tasks 2000

Runs against the configured PostgreSQL server and Redis, but in a database and Redis databases of its
own (`finops_bench`, Redis db 12/13 by default) so it never touches real queues or data. It starts ONE
worker subprocess (prefork, concurrency 2, the configured prefetch multiplier, log level WARNING) and,
for each kind, enqueues N tasks and waits until every result is available:

- bare:     `bare_noop.apply_async()` — a plain Celery task, the baseline;
- platform: `task_enqueue("platform_noop")` — a ledger row at enqueue (after commit), claim and finish
            in the worker, correlation id in headers and logs.

Each kind is warmed up, then measured twice, best taken. The last line is the figures as key=value.
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def bench_env(args) -> dict:
    """The environment for this process and the worker: same settings, the bench's own databases."""
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    base_redis = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "finops.settings",
            "DEBUG": os.environ.get("DEBUG", "1"),
            "DATABASE_URL": _with_db(base_db, args.database),
            "CELERY_BROKER_URL": _with_db(base_redis, str(args.broker_db)),
            "CELERY_RESULT_BACKEND": _with_db(base_redis, str(args.broker_db + 1)),
            # The same log level for both runs, in this process and the worker.
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


class Worker:
    def __init__(self, env: dict, log_path: Path, queues: str = "default"):
        self.hostname = f"bench-{uuid.uuid4().hex[:6]}@%h"
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "finops", "worker", "-Q", queues, "-c", "2", "-P", "prefork"]
            + ["--hostname", self.hostname, "-l", "WARNING", "--without-mingle", "--without-gossip"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, app, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited with {self.proc.returncode}: see {self.log_path}")
            if app.control.ping(timeout=0.5):
                return
        raise SystemExit(f"worker did not answer within {timeout}s: see {self.log_path}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def run_bare(n: int) -> float:
    from celery.result import ResultSet

    from tasks_app.tasks import bare_noop

    start = time.perf_counter()
    results = ResultSet([bare_noop.apply_async(args=(i,)) for i in range(n)])
    enqueued = time.perf_counter() - start
    values = results.join_native(timeout=600, propagate=True)
    elapsed = time.perf_counter() - start
    assert values == list(range(n)), "bare: results missing or wrong"
    return elapsed, enqueued


def run_platform(n: int) -> float:
    from celery import current_app
    from celery.result import ResultSet

    from tasks_app.models import TriggerKind
    from tasks_app.services.runs import task_enqueue

    start = time.perf_counter()
    ids = [
        task_enqueue(task_name="platform_noop", kwargs={"value": i}, triggered_by=TriggerKind.COMMAND).celery_task_id
        for i in range(n)
    ]
    enqueued = time.perf_counter() - start
    values = ResultSet([current_app.AsyncResult(task_id) for task_id in ids]).join_native(timeout=600, propagate=True)
    elapsed = time.perf_counter() - start
    assert values == list(range(n)), "platform: results missing or wrong"
    return elapsed, enqueued


def empty_ledger() -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # the bench's own database only
        cursor.execute("TRUNCATE tasks_app_taskrun CASCADE")


def check_ledger(n_expected: int) -> None:
    """The platform runs really went through the ledger: every row SUCCESS, none left behind."""
    from django.db.models import Count

    from tasks_app.models import RunState, TaskRun

    counts = dict(TaskRun.objects.values_list("state").annotate(n=Count("id")))
    if counts.get(RunState.SUCCESS, 0) != n_expected or len(counts) != 1:
        raise SystemExit(f"ledger check failed: expected {n_expected} SUCCESS rows, found {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--database", default="finops_bench")
    parser.add_argument("--broker-db", type=int, default=12, help="Redis db for the broker; results use the next one")
    args = parser.parse_args()

    env = bench_env(args)
    os.environ.update(env)
    ensure_database(env["DATABASE_URL"])

    import django

    django.setup()
    import redis
    from celery import current_app
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    for url in (env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"]):
        redis.Redis.from_url(url).flushdb()
    empty_ledger()

    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-tasks-worker-{os.getpid()}.log"
    worker = Worker(env, log_path)
    try:
        worker.wait_ready(current_app)
        print(f"worker: prefork concurrency=2 prefetch_multiplier={current_app.conf.worker_prefetch_multiplier}")
        run_bare(args.warmup)
        run_platform(args.warmup)
        bare, platform = [], []
        for _ in range(args.repeat):
            empty_ledger()
            bare.append(run_bare(args.tasks))
            platform.append(run_platform(args.tasks))
            check_ledger(args.tasks)
        for name, times in (("bare", bare), ("platform", platform)):
            print(
                f"{name}: "
                + ", ".join(f"{args.tasks / t:.0f}/s ({t:.2f} s, all enqueued at {e:.2f} s)" for t, e in times)
            )
    finally:
        worker.stop()

    bare_rate = args.tasks / min(t for t, _ in bare)
    platform_rate = args.tasks / min(t for t, _ in platform)
    print(
        f"tasks tasks={args.tasks} bare_tasks_per_s={bare_rate:.0f} platform_tasks_per_s={platform_rate:.0f}"
        f" ratio={platform_rate / bare_rate:.2f}"
    )


if __name__ == "__main__":
    main()
