"""`manage.py monitor_tasks`: the seed's monitor (active, workers, status, watch, cancel), queues, failed, health."""

import json
import time
from datetime import datetime

import redis
from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import F
from django.utils import timezone

from finops.redis_url import redis_from_url
from tasks_app import selectors
from tasks_app.models import FINAL_STATES, DeadLetter, RunState, TaskRun
from tasks_app.services.runs import run_cancel

INSPECT_TIMEOUT = 1.0
RECENT_FINISHED = 10

# kombu's Redis transport keeps a queue as a list named after it; messages sent with a priority go to
# sibling lists "<queue>\x06\x16<step>" (steps 3, 6, 9; step 0 is the plain list). Unacked deliveries
# (fetched by a worker, not yet acknowledged) sit in the "unacked" hash until the ack.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED_KEY = "unacked"


def broker_queue_lengths(queues=None) -> tuple[dict[str, int], int]:
    """({queue: messages waiting}, unacked deliveries) read straight from the Redis broker."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        raise CommandError(f"queue lengths are read from a Redis broker; the broker is {url.split(':', 1)[0]}")
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    queues = list(queues or settings.TASK_QUEUES)
    client = redis_from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for step in KOMBU_PRIORITY_STEPS:
                    pipe.llen(prefix + (queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}"))
            pipe.hlen(prefix + KOMBU_UNACKED_KEY)
            counts = pipe.execute()
    except redis.RedisError as exc:
        raise CommandError(f"cannot read the broker at {_safe_url(url)}: {exc}") from exc
    finally:
        client.close()
    steps = len(KOMBU_PRIORITY_STEPS)
    lengths = {queue: sum(counts[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}
    return lengths, counts[-1]


def _safe_url(url: str) -> str:
    # A broker URL may carry a password; never print it.
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h ago"
    return moment.strftime("%Y-%m-%d %H:%M")


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.2f}s" if ms < 120_000 else f"{ms // 60_000}m{(ms // 1000) % 60:02d}s"


def _table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shorten(text, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Command(BaseCommand):
    help = "Watch and steer the task system: active runs, workers, one task's status, queues, failures, cancel."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        sub.add_parser("active", help="runs the ledger says are queued/running/retrying, and what workers execute")
        sub.add_parser("workers", help="per worker: ping, pool, concurrency, tasks processed, queues, memory")
        status = sub.add_parser("status", help="one task: its ledger row and what Celery's result backend says")
        status.add_argument("task_id")
        watch = sub.add_parser("watch", help="re-print active runs, recent results and queue lengths until Ctrl-C")
        watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
        watch.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (0: until Ctrl-C)")
        cancel = sub.add_parser("cancel", help="cancel a task: a queued one never starts, a running one is stopped")
        cancel.add_argument("task_id")
        sub.add_parser("queues", help="messages waiting in each queue on the broker")
        failed = sub.add_parser("failed", help="recent failed runs and dead letters")
        failed.add_argument("--limit", type=int, default=20, help="how many of each (default 20)")
        sub.add_parser("health", help="database, broker, result backend, workers, beat: each checked for real")
        sub.add_parser("beat", help="fails unless a beat leads and its heartbeat is fresh (the beat health check)")

    def handle(self, *args, subcommand: str, **options):
        handler = getattr(self, f"do_{subcommand}")
        handler(**options)

    # --- subcommands ---

    def do_active(self, **options):
        active = selectors.active_tasks(timeout=INSPECT_TIMEOUT)
        self._print_active_runs(active.runs, active.runs_total)
        self.stdout.write("")
        if active.inspect_error:
            self.stdout.write(self.style.WARNING(f"Workers: {active.inspect_error}"))
            return
        if not active.workers:
            self.stdout.write(self.style.WARNING(f"Workers: none answered within {INSPECT_TIMEOUT:g}s"))
            return
        self.stdout.write(self.style.MIGRATE_HEADING(f"On workers ({len(active.workers)} answering)"))
        if not active.worker_tasks:
            self.stdout.write("  nothing executing, reserved or scheduled")
            return
        now = time.time()
        rows = [
            [
                t.worker,
                t.kind,
                t.task_id,
                t.name,
                f"{now - t.time_start:.1f}s" if t.time_start else (t.eta or "-"),
                _shorten(json.dumps(t.kwargs, default=str) if t.kwargs else "", 50),
            ]
            for t in active.worker_tasks
        ]
        self.stdout.write(_table(rows, ["WORKER", "KIND", "TASK ID", "NAME", "RUNNING/ETA", "KWARGS"]))

    def do_workers(self, **options):
        try:
            names = selectors.workers_ping(timeout=INSPECT_TIMEOUT)
        except selectors.BrokerUnavailable as exc:
            raise CommandError(str(exc)) from exc
        if not names:
            raise CommandError(
                f"no worker answered a ping within {INSPECT_TIMEOUT:g}s (is `celery -A finops worker` up?)"
            )
        inspect = current_app.control.inspect(destination=names, limit=len(names), timeout=INSPECT_TIMEOUT)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        self.stdout.write(self.style.MIGRATE_HEADING(f"{len(names)} worker(s) answering"))
        for name in names:
            info = stats.get(name) or {}
            pool = info.get("pool") or {}
            totals = info.get("total") or {}
            rusage = info.get("rusage") or {}
            self.stdout.write(self.style.SUCCESS(f"\n{name}: pong"))
            fields = [
                ("pid", info.get("pid", "?")),
                ("uptime", f"{info.get('uptime', 0)}s"),
                # "celery.concurrency.prefork:TaskPool" → "prefork"
                ("pool", pool.get("implementation", "?").split(":")[0].rsplit(".", 1)[-1]),
                ("concurrency", pool.get("max-concurrency", "?")),
                ("child processes", ", ".join(str(p) for p in pool.get("processes") or []) or "-"),
                ("prefetch", info.get("prefetch_count", "?")),
                ("executing now", len(active.get(name) or [])),
                ("processed", sum(totals.values())),
                ("queues", ", ".join(sorted(q["name"] for q in queues.get(name) or [])) or "-"),
                # ru_maxrss is in kilobytes on Linux: the main process's peak, not the pool children's.
                ("max RSS (main)", f"{rusage['maxrss'] / 1024:.0f} MB" if "maxrss" in rusage else "?"),
            ]
            for label, value in fields:
                self.stdout.write(f"  {label:<16} {value}")
            for task_name, count in sorted(totals.items()):
                self.stdout.write(f"    {task_name:<36} {count}")

    def do_status(self, *, task_id: str, **options):
        status = selectors.task_status(task_id=task_id)
        if status is None:
            raise CommandError(f"unknown task id {task_id}: neither the ledger nor the result backend knows it")
        run = status.run
        now = timezone.now()
        self.stdout.write(self.style.MIGRATE_HEADING(f"Task {task_id}"))
        lines = [("state", self._state(status.state)), ("known to", ", ".join(status.known_to))]
        if run is not None:
            lines += [
                ("task", run.task_name),
                ("queue", run.queue),
                ("kwargs", json.dumps(run.kwargs, default=str)),
                ("triggered by", f"{run.triggered_by} {run.trigger_detail}".strip()),
                ("user", run.user.get_username() if run.user_id else "-"),
                ("correlation id", run.correlation_id or "-"),
                ("enqueued", f"{run.enqueued_at:%Y-%m-%d %H:%M:%S} UTC ({_ago(run.enqueued_at, now)})"),
                ("started", _ago(run.started_at, now)),
                ("finished", _ago(run.finished_at, now)),
                ("duration", _duration(run.duration_ms)),
                ("worker", run.worker or "-"),
                ("retries", run.retries),
                ("redeliveries", run.redeliveries),
            ]
        lines.append(("celery state", status.celery_state or "unreadable"))
        for label, value in lines:
            self.stdout.write(f"  {label:<15} {value}")
        if status.result is not None:
            self.stdout.write("  result:")
            self.stdout.write(_indent(json.dumps(status.result, indent=2, default=str)))
        if status.error:
            self.stdout.write(self.style.ERROR("  error:"))
            self.stdout.write(_indent(status.error))

    def do_watch(self, *, interval: float, iterations: int, **options):
        if interval <= 0:
            raise CommandError("--interval must be positive")
        clear = self.stdout.isatty()
        count = 0
        try:
            while True:
                if clear:
                    self.stdout.write("\033[2J\033[H", ending="")
                self._print_snapshot()
                count += 1
                if iterations and count >= iterations:
                    break
                self.stdout.write(f"\n(refreshing every {interval:g}s, Ctrl-C to stop)")
                self.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            self.stdout.write("\nstopped")

    def do_cancel(self, *, task_id: str, **options):
        outcome = run_cancel(celery_task_id=task_id)
        if not outcome.cancelled:
            raise CommandError(f"{task_id} not cancelled: {outcome.message}")
        name = outcome.run.task_name if outcome.run else "(not in the ledger)"
        self.stdout.write(self.style.SUCCESS(f"cancelled {task_id} {name}: {outcome.message}"))

    def do_queues(self, **options):
        lengths, unacked = broker_queue_lengths()
        self._print_queues(lengths, unacked)

    def do_failed(self, *, limit: int, **options):
        now = timezone.now()
        runs = TaskRun.objects.filter(state=RunState.FAILURE).order_by(
            F("finished_at").desc(nulls_last=True), "-enqueued_at"
        )[:limit]
        rows = [
            [
                r.celery_task_id,
                r.task_name,
                _ago(r.finished_at or r.enqueued_at, now),
                r.retries,
                r.error_type,
                _shorten(r.error, 60),
            ]
            for r in runs
        ]
        self.stdout.write(self.style.MIGRATE_HEADING(f"Failed runs (latest {limit})"))
        self.stdout.write(
            _table(rows, ["TASK ID", "TASK", "FINISHED", "RETRIES", "ERROR TYPE", "ERROR"]) if rows else "  none"
        )
        letters = DeadLetter.objects.select_related("run", "replay_run").order_by("-created_at")[:limit]
        rows = [
            [
                d.id,
                d.run.celery_task_id,
                d.task_name,
                _ago(d.created_at, now),
                d.replay_run.celery_task_id if d.replay_run_id else "-",
                _shorten(d.error, 60),
            ]
            for d in letters
        ]
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(f"Dead letters (latest {limit}; replay in the admin or API)"))
        self.stdout.write(
            _table(rows, ["ID", "TASK ID", "TASK", "DEAD SINCE", "REPLAYED AS", "ERROR"]) if rows else "  none"
        )

    def do_health(self, **options):
        from tasks_app.services.health import system_health

        health = system_health(worker_timeout=INSPECT_TIMEOUT)
        self.stdout.write(self.style.MIGRATE_HEADING(f"Task system health: {health['status']}"))
        for name, check in health["checks"].items():
            mark = self.style.SUCCESS("ok  ") if check["ok"] else self.style.ERROR("FAIL")
            detail = check.get("error") or ", ".join(
                f"{k}={v}" for k, v in check.items() if k not in ("ok", "latency_ms", "error")
            )
            self.stdout.write(f"  {mark} {name:<15} {check.get('latency_ms', 0):>7.1f} ms  {detail}")
        if health["failing"]:
            raise CommandError(f"unhealthy: {', '.join(health['failing'])}")

    def do_beat(self, **options):
        """The beat container's health check: the leader's heartbeat in Redis is younger than BEAT_HEARTBEAT_MAX_AGE."""
        from tasks_app.services.health import beat_heartbeat

        try:
            beat = beat_heartbeat(time.time())
        except Exception as exc:
            raise CommandError(f"beat unhealthy: {exc}") from None
        self.stdout.write(f"beat ok: leader {beat['leader']}, heartbeat {beat['age_s']} s old")

    # --- pieces ---

    def _state(self, state: str) -> str:
        style = {
            RunState.SUCCESS: self.style.SUCCESS,
            RunState.FAILURE: self.style.ERROR,
            RunState.CANCELLED: self.style.WARNING,
            RunState.RETRY: self.style.WARNING,
        }.get(state)
        return style(state) if style else state

    def _print_active_runs(self, runs, total: int) -> None:
        now = timezone.now()
        self.stdout.write(self.style.MIGRATE_HEADING(f"Active runs in the ledger: {total}"))
        if not runs:
            self.stdout.write("  none")
            return
        rows = [
            [
                r.celery_task_id,
                r.task_name,
                r.state,
                r.queue,
                r.triggered_by,
                _ago(r.enqueued_at, now),
                _ago(r.started_at, now),
                r.worker or "-",
                r.retries,
            ]
            for r in runs
        ]
        headers = ["TASK ID", "TASK", "STATE", "QUEUE", "TRIGGER", "ENQUEUED", "STARTED", "WORKER", "RETRIES"]
        self.stdout.write(_table(rows, headers))
        if total > len(runs):
            self.stdout.write(f"  … and {total - len(runs)} more")

    def _print_queues(self, lengths: dict[str, int], unacked: int) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING("Broker queues (messages waiting)"))
        rows = [[queue, count] for queue, count in lengths.items()]
        rows.append(["(total)", sum(lengths.values())])
        self.stdout.write(_table(rows, ["QUEUE", "MESSAGES"]))
        self.stdout.write(f"  unacked (delivered to a worker, not yet acknowledged): {unacked}")

    def _print_snapshot(self) -> None:
        now = timezone.now()
        self.stdout.write(self.style.MIGRATE_HEADING(f"Task system at {now:%Y-%m-%d %H:%M:%S} UTC"))
        runs = selectors.active_runs_list()
        self._print_active_runs(list(runs[:50]), runs.count())
        self.stdout.write("")
        finished = TaskRun.objects.filter(state__in=FINAL_STATES).order_by(F("finished_at").desc(nulls_last=True))[
            :RECENT_FINISHED
        ]
        self.stdout.write(self.style.MIGRATE_HEADING(f"Recently finished (latest {RECENT_FINISHED})"))
        rows = [
            [
                r.celery_task_id,
                r.task_name,
                r.state,
                _ago(r.finished_at, now),
                _duration(r.duration_ms),
                _shorten(r.error, 40),
            ]
            for r in finished
        ]
        self.stdout.write(
            _table(rows, ["TASK ID", "TASK", "STATE", "FINISHED", "DURATION", "ERROR"]) if rows else "  none"
        )
        self.stdout.write("")
        try:
            lengths, unacked = broker_queue_lengths()
        except CommandError as exc:
            self.stdout.write(self.style.ERROR(str(exc)))
        else:
            self._print_queues(lengths, unacked)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
