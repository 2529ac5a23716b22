"""Monitoring API latency under load: `status` and `active` against the live broadcast, 50 clients, 2,000 tasks.

    python bench/api.py --tasks 2000 --clients 50

Like bench/tasks.py (whose setup it reuses) it runs on the configured PostgreSQL and Redis servers but in a
database and Redis databases of its own (`finops_bench_api`, Redis db 9/10/11 by default). It starts a real
gunicorn (tests/security/live.py: 2 processes x 8 threads, as docker-compose.yml runs it, the trigger throttle
off) and ONE worker (prefork, concurrency 2) on the `monitoring` queue, signs in a platform admin with a JWT, and
measures three rounds, each during its own load of N tasks triggered through the API
(`POST /api/v1/tasks/monitor/budgets`, 8 threads) and lasting until every one of them is final in the ledger:

- status:  `GET /api/v1/tasks/status/<id>` of a random task of the load, by all the clients;
- active:  `GET /api/v1/tasks/active` (the ledger and the workers' heartbeat snapshots), by all the clients;
- live:    `GET /api/v1/tasks/active?live=true` (a broadcast to the workers, waiting for replies): the baseline.

Each client sends its next request as soon as the previous one is answered. The last line is key=value.
"""

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tasks import Worker, bench_env, empty_ledger, ensure_database  # noqa: E402

TRIGGER = "/api/v1/tasks/monitor/budgets"
TRIGGER_THREADS = 8
ROUNDS = {
    "status": None,  # path chosen per request
    "active": "/api/v1/tasks/active",
    "live": "/api/v1/tasks/active?live=true",
}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Round:
    """One load of N triggered tasks with `clients` threads hammering one endpoint until every task is final."""

    def __init__(self, url: str, token: str, kind: str, tasks: int, clients: int):
        self.url, self.kind, self.tasks, self.clients = url, kind, tasks, clients
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.errors: dict[int, int] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.failure: str | None = None  # a trigger that was not accepted stops the round

    def trigger(self, count: int) -> None:
        session = requests.Session()
        try:
            for _ in range(count):
                response = session.post(f"{self.url}{TRIGGER}", json={}, headers=self.headers, timeout=60)
                if response.status_code != 202:
                    raise RuntimeError(f"trigger answered {response.status_code}: {response.text[:300]}")
                with self.lock:
                    self.ids.append(response.json()["task_id"])
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.done.set()

    def client(self) -> None:
        session = requests.Session()
        while not self.done.is_set():
            if self.kind == "status":
                with self.lock:
                    task_id = random.choice(self.ids) if self.ids else None
                if task_id is None:
                    time.sleep(0.01)
                    continue
                path = f"/api/v1/tasks/status/{task_id}"
            else:
                path = ROUNDS[self.kind]
            start = time.perf_counter()
            response = session.get(f"{self.url}{path}", headers=self.headers, timeout=60)
            elapsed = time.perf_counter() - start
            with self.lock:
                if response.status_code == 200:
                    self.latencies.append(elapsed * 1000)
                else:
                    self.errors[response.status_code] = self.errors.get(response.status_code, 0) + 1

    def run(self) -> dict:
        from django.db import connection
        from django.db.models import Count

        from tasks_app.models import FINAL_STATES, RunState, TaskRun

        empty_ledger()
        share = [self.tasks // TRIGGER_THREADS + (i < self.tasks % TRIGGER_THREADS) for i in range(TRIGGER_THREADS)]
        triggers = [threading.Thread(target=self.trigger, args=(n,)) for n in share]
        clients = [threading.Thread(target=self.client) for _ in range(self.clients)]
        start = time.perf_counter()
        for thread in [*triggers, *clients]:
            thread.start()
        for thread in triggers:
            thread.join()
        triggered = time.perf_counter() - start
        while not self.done.is_set() and TaskRun.objects.filter(state__in=FINAL_STATES).count() < self.tasks:
            connection.close()
            time.sleep(0.2)
        self.done.set()
        for thread in clients:
            thread.join()
        if self.failure:
            raise SystemExit(f"{self.kind}: {self.failure}")
        elapsed = time.perf_counter() - start
        states = dict(TaskRun.objects.values_list("state").annotate(n=Count("id")))
        if states.get(RunState.SUCCESS) != self.tasks:
            raise SystemExit(f"{self.kind}: expected {self.tasks} SUCCESS runs, the ledger has {states}")
        return {"triggered_s": triggered, "elapsed_s": elapsed, "requests": len(self.latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--live-tasks",
        type=int,
        default=200,
        help="tasks of the live-broadcast baseline round (each broadcast also stalls the worker: at 50 clients a "
        "2,000-task live round runs for hours; its latencies settle within a few hundred tasks)",
    )
    parser.add_argument("--database", default="finops_bench_api")
    parser.add_argument("--broker-db", type=int, default=9, help="Redis db for the broker; results and cache follow")
    args = parser.parse_args()

    env = bench_env(args)
    env["CACHE_URL"] = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + f"/{args.broker_db + 2}"
    os.environ.update(env)
    ensure_database(env["DATABASE_URL"])

    import django

    django.setup()
    import redis
    from celery import current_app
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from tests.security.live import LiveServer

    call_command("migrate", verbosity=0)
    for url in (env["CELERY_BROKER_URL"], env["CELERY_RESULT_BACKEND"], env["CACHE_URL"]):
        redis.Redis.from_url(url).flushdb()
    password = "bench-api-password"  # noqa: S105  (the bench's own database)
    user, _ = get_user_model().objects.get_or_create(username="bench-api", defaults={"is_superuser": True})
    user.is_superuser, user.is_staff = True, True
    user.set_password(password)
    user.save()

    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-api-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(env, log_dir / "worker.log", queues="monitoring")
    server = None
    results = {}
    try:
        worker.wait_ready(current_app)
        server = LiveServer(
            log_dir,
            DJANGO_SETTINGS_MODULE="finops.settings",
            JWT_ACCESS_TOKEN_MINUTES="120",  # the default 5 min token would expire mid-run under load
            DEBUG="0",
            THROTTLE_TRIGGER_RATE="",
            LOG_LEVEL="WARNING",
            CACHE_URL=env["CACHE_URL"],
        )
        token = server.token("bench-api", password)
        print(f"gunicorn 2x8 threads, worker prefork concurrency=2 on monitoring; {args.clients} clients")
        for kind in ROUNDS:
            tasks = min(args.tasks, args.live_tasks) if kind == "live" else args.tasks
            round_ = Round(server.url, token, kind, tasks, args.clients)
            info = round_.run()
            lat = round_.latencies
            results[kind] = (percentile(lat, 50), percentile(lat, 95))
            print(
                f"{kind}: {info['requests']} requests in {info['elapsed_s']:.1f} s during {tasks} tasks "
                f"(all triggered at {info['triggered_s']:.1f} s), p50 {results[kind][0]:.0f} ms, "
                f"p95 {results[kind][1]:.0f} ms, p99 {percentile(lat, 99):.0f} ms, errors {round_.errors or 0}"
            )
    finally:
        if server is not None:
            server.stop()
        worker.stop()

    status_p50, status_p95 = results["status"]
    active_p50, active_p95 = results["active"]
    live_p50, live_p95 = results["live"]
    print(
        f"api tasks={args.tasks} clients={args.clients} status_p50_ms={status_p50:.0f} status_p95_ms={status_p95:.0f}"
        f" active_p50_ms={active_p50:.0f} active_p95_ms={active_p95:.0f} live_p50_ms={live_p50:.0f}"
        f" live_p95_ms={live_p95:.0f} live_tasks={min(args.tasks, args.live_tasks)}"
        f" active_vs_live_p95_ratio={active_p95 / live_p95:.3f}"
    )


if __name__ == "__main__":
    main()
