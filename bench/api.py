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

Each client sends its next request as soon as the previous one is answered. The last line is key=value; its
`cpu_loop_ms` is one core's speed during the run (a fixed loop), to compare runs on different machines.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import queue
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


# compose's access log line, ending with the server's own time for the request (ms from parsed to answered): what the
# server spent on it, against the clients' figures, which also hold the wait for a free server thread and for the CPU.
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)s'
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> list[int]:
    """The machine's CPU time by kind so far (/proc/stat's first line), in clock ticks."""
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1 : 1 + len(CPU_FIELDS)]]


def cpu_shares(before: list[int], after: list[int]) -> str:
    """How the machine's CPU went during a round: busy, idle and stolen (a virtual machine's host running other
    guests on its cores: time this machine's processes were ready but did not run, which no code here can win
    back), as percentages."""
    spent = dict(zip(CPU_FIELDS, (b - a for a, b in zip(before, after, strict=True)), strict=True))
    total = sum(spent.values()) or 1
    busy = spent["user"] + spent["nice"] + spent["system"] + spent["irq"] + spent["softirq"]
    idle, stolen = spent["idle"] + spent["iowait"], spent["steal"]
    return f"cpu busy {100 * busy / total:.0f} %, idle {100 * idle / total:.0f} %, stolen {100 * stolen / total:.0f} %"


def server_times(log_path: Path, offset: int, path_part: str) -> list[float]:
    """The server's own times (ms) of the requests logged after `offset` whose request line holds `path_part`."""
    times = []
    with open(log_path, "rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            if f" {path_part}" in line and line.rsplit(" ", 1)[-1].isdigit():
                times.append(float(line.rsplit(" ", 1)[-1]))
    return times


def cpu_loop_ms() -> float:
    """One core's speed as this run found it: a fixed pure-Python loop, the best of three, in ms.

    Machines of one kind differ, and one VM's speed drifts with its host's load without any `steal` showing (seen:
    the same loop 2.5 s, then 3.2-3.5 s an hour later on an idle machine); closed-loop latencies scale with it, so a
    p95 is read together with this figure.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _client_process(url, token, kind, threads, ids_queue, go, stop, results) -> None:
    """One of the client processes: `threads` closed-loop clients, each on its own keep-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    headers = {"Authorization": f"Bearer {token}"}
    ids: list[str] = []
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    seen = {"runs_total_max": 0, "runs_listed_max": 0, "bytes_max": 0}

    def feed() -> None:  # the task ids triggered so far, for `status`
        while not stop.is_set():
            try:
                batch = ids_queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with lock:
                ids.extend(batch)

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine: list[float] = []
        count = 0
        go.wait()  # measured from the moment the load starts, as the triggers
        while not stop.is_set():
            if kind == "status":
                with lock:
                    task_id = random.choice(ids) if ids else None
                if task_id is None:
                    time.sleep(0.01)
                    continue
                path = f"/api/v1/tasks/status/{task_id}"
            else:
                path = ROUNDS[kind]
            start = time.perf_counter()
            for attempt in (1, 2):  # a keep-alive connection the server closed is opened again, timer running
                try:
                    conn.request("GET", path, headers=headers)
                    response = conn.getresponse()
                    body = response.read()
                    break
                except (ConnectionError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    if attempt == 2:
                        with lock:
                            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        body, response = None, None
            elapsed = time.perf_counter() - start
            if response is None:
                continue
            if response.status != 200:
                with lock:
                    errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                continue
            mine.append(elapsed * 1000)
            count += 1
            if kind != "status" and count % 50 == 1:  # how big the answer is during the load
                answer = json.loads(body)
                with lock:
                    seen["runs_total_max"] = max(seen["runs_total_max"], answer["runs_total"])
                    seen["runs_listed_max"] = max(seen["runs_listed_max"], len(answer["runs"]))
                    seen["bytes_max"] = max(seen["bytes_max"], len(body))
        conn.close()
        with lock:
            latencies.extend(mine)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    results.put({"latencies": latencies, "errors": errors, **seen})


class Round:
    """One load of N triggered tasks with `clients` closed-loop clients (spread over `processes` processes)
    hammering one endpoint until every task is final."""

    def __init__(self, url: str, token: str, kind: str, tasks: int, clients: int, processes: int):
        self.url, self.kind, self.tasks, self.clients, self.processes = url, kind, tasks, clients, processes
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.seen: dict[str, int] = {}
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

    def run(self) -> dict:
        from django.db import connection
        from django.db.models import Count

        from tasks_app.models import FINAL_STATES, RunState, TaskRun

        empty_ledger()
        ctx = multiprocessing.get_context("spawn")
        go, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
        id_queues = [ctx.Queue() for _ in range(self.processes)]
        share = [self.clients // self.processes + (i < self.clients % self.processes) for i in range(self.processes)]
        procs = [
            ctx.Process(target=_client_process, args=(self.url, self.token, self.kind, n, q, go, stop, results))
            for n, q in zip(share, id_queues, strict=True)
        ]
        for proc in procs:
            proc.start()
        time.sleep(2.0)  # the client processes start (spawn, imports) before the load does
        share = [self.tasks // TRIGGER_THREADS + (i < self.tasks % TRIGGER_THREADS) for i in range(TRIGGER_THREADS)]
        triggers = [threading.Thread(target=self.trigger, args=(n,)) for n in share]
        start = time.perf_counter()
        go.set()
        for thread in triggers:
            thread.start()
        sent = 0
        while any(t.is_alive() for t in triggers):
            sent = self._send_ids(id_queues, sent)
            time.sleep(0.05)
        self._send_ids(id_queues, sent)
        triggered = time.perf_counter() - start
        while not self.done.is_set() and TaskRun.objects.filter(state__in=FINAL_STATES).count() < self.tasks:
            connection.close()
            time.sleep(0.2)
        stop.set()
        elapsed = time.perf_counter() - start
        for _ in procs:
            outcome = results.get(timeout=120)
            self.latencies += outcome.pop("latencies")
            for key, n in outcome.pop("errors").items():
                self.errors[key] = self.errors.get(key, 0) + n
            for key, n in outcome.items():
                self.seen[key] = max(self.seen.get(key, 0), n)
        for proc in procs:
            proc.join(timeout=30)
        if self.failure:
            raise SystemExit(f"{self.kind}: {self.failure}")
        states = dict(TaskRun.objects.values_list("state").annotate(n=Count("id")))
        if states.get(RunState.SUCCESS) != self.tasks:
            raise SystemExit(f"{self.kind}: expected {self.tasks} SUCCESS runs, the ledger has {states}")
        return {"triggered_s": triggered, "elapsed_s": elapsed, "requests": len(self.latencies)}

    def _send_ids(self, id_queues, sent: int) -> int:
        with self.lock:
            batch = self.ids[sent:]
        if batch:
            for q in id_queues:
                q.put(batch)
        return sent + len(batch)


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
    parser.add_argument(
        "--client-processes",
        type=int,
        default=5,
        help="processes the clients are spread over (threads in each: clients / processes), so that one process' GIL "
        "does not queue the clients' own work into the measured latencies",
    )
    parser.add_argument(
        "--rounds", default=",".join(ROUNDS), help="which rounds, comma-separated (default: all, the full comparison)"
    )
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (WEB_WORKERS)")
    parser.add_argument("--web-threads", type=int, default=8, help="threads per process (WEB_THREADS)")
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

    from tests.security.live import LiveServer, web_command

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
            # docker-compose.yml's web command, with its WEB_WORKERS / WEB_THREADS
            web_command(workers=args.web_workers, threads=args.web_threads, access_log_format=ACCESS_LOG_FORMAT),
            DJANGO_SETTINGS_MODULE="finops.settings",
            JWT_ACCESS_TOKEN_MINUTES="120",  # the default 5 min token would expire mid-run under load
            DEBUG="0",
            THROTTLE_TRIGGER_RATE="",
            LOG_LEVEL="WARNING",
            CACHE_URL=env["CACHE_URL"],
        )
        token = server.token("bench-api", password)
        loop_before = cpu_loop_ms()
        print(
            f"gunicorn {args.web_workers}x{args.web_threads} threads, worker prefork concurrency=2 on monitoring; "
            f"{args.clients} clients in {args.client_processes} processes (http.client keep-alive)"
        )
        for kind in args.rounds.split(","):
            tasks = min(args.tasks, args.live_tasks) if kind == "live" else args.tasks
            round_ = Round(server.url, token, kind, tasks, args.clients, args.client_processes)
            log_offset, cpu_before = server.log_path.stat().st_size, cpu_times()
            info = round_.run()
            cpu = cpu_shares(cpu_before, cpu_times())
            served = server_times(
                server.log_path, log_offset, "/api/v1/tasks/" + ("status/" if kind == "status" else "active")
            )
            lat = round_.latencies
            results[kind] = (percentile(lat, 50), percentile(lat, 95))
            print(
                f"{kind}: {info['requests']} requests in {info['elapsed_s']:.1f} s during {tasks} tasks "
                f"(all triggered at {info['triggered_s']:.1f} s), p50 {results[kind][0]:.0f} ms, "
                f"p95 {results[kind][1]:.0f} ms, p99 {percentile(lat, 99):.0f} ms, errors {round_.errors or 0}"
                + (
                    f"; answers sampled: runs_total up to {round_.seen['runs_total_max']}, runs listed up to "
                    f"{round_.seen['runs_listed_max']}, up to {round_.seen['bytes_max']} bytes"
                    if round_.seen and kind != "status"
                    else ""
                )
            )
            if served:
                print(
                    f"  {kind}: server's own time p50 {percentile(served, 50):.0f} ms, "
                    f"p95 {percentile(served, 95):.0f} ms (gunicorn's access log); {cpu}"
                )
        loop_after = cpu_loop_ms()
        print(
            f"cpu loop (one core's speed, lower is faster): {loop_before:.0f} ms before the rounds, "
            f"{loop_after:.0f} after"
        )
    finally:
        if server is not None:
            server.stop()
        worker.stop()

    figures = " ".join(
        f"{kind}_p50_ms={results[kind][0]:.0f} {kind}_p95_ms={results[kind][1]:.0f}"
        for kind in ROUNDS
        if kind in results
    )
    if "live" in results:
        figures += f" live_tasks={min(args.tasks, args.live_tasks)}"
        if "active" in results:
            figures += f" active_vs_live_p95_ratio={results['active'][1] / results['live'][1]:.3f}"
    figures += f" cpu_loop_ms={(loop_before + loop_after) / 2:.0f}"
    print(f"api tasks={args.tasks} clients={args.clients} client_processes={args.client_processes} {figures}")


if __name__ == "__main__":
    main()
