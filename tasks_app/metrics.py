"""`/metrics` in Prometheus' text format: the task system as the ledger and the broker see it at scrape time,
plus this web process's HTTP requests and latency.

The task figures are read at each scrape (a few aggregate queries, one Redis round trip), not counted in the
workers: the ledger is already the record of every run, and one scrape sees all workers without
Prometheus' multiprocess mode. HTTP figures are per web process (label `pid` is left to the scrape target).
Access: `Authorization: Bearer $METRICS_TOKEN` when METRICS_TOKEN is set, otherwise loopback clients only
(scrape through an internal port or a sidecar) that came through no proxy: behind a reverse proxy on the same host
every client's REMOTE_ADDR is loopback, so a request carrying a forwarding header, or any request once NUM_PROXIES
says a proxy is in front, needs the token. Example alert rules: deploy/prometheus-alerts.yml.
"""

import hmac
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseForbidden
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800)

HTTP_REQUESTS = Counter("finops_http_requests", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "finops_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class TaskSystemCollector:
    """Runs by task and state, durations, retries, dead letters, queues, schedules, rows ingested."""

    def collect(self):
        now = timezone.now()
        runs = GaugeMetricFamily("finops_task_runs", "Runs in the ledger by task and state", labels=["task", "state"])
        retries = CounterMetricFamily("finops_task_retries", "Retries recorded in the ledger", labels=["task"])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT task_name, state, count(*), coalesce(sum(retries), 0) FROM tasks_app_taskrun"
                " GROUP BY task_name, state"
            )
            retry_totals: dict[str, int] = {}
            for task, state, count, retried in cursor.fetchall():
                runs.add_metric([task, state], count)
                retry_totals[task] = retry_totals.get(task, 0) + int(retried)
            for task, total in retry_totals.items():
                retries.add_metric([task], total)
            yield runs
            yield retries
            yield self._durations(cursor, now)
            yield from self._dead_letters(cursor)
            yield from self._queues(cursor, now)
            yield self._schedules(cursor)
            cursor.execute(
                "SELECT coalesce(sum((result->>'rows_loaded')::bigint), 0) FROM tasks_app_taskrun"
                " WHERE task_name = 'sync_provider_cost_data' AND state = 'SUCCESS' AND result ? 'rows_loaded'"
            )
            rows = CounterMetricFamily("finops_rows_ingested", "Cost lines loaded by successful syncs")
            rows.add_metric([], cursor.fetchone()[0])
            yield rows
            cursor.execute(
                "SELECT count(*) FROM tasks_app_taskrun WHERE state = 'STARTED' AND lease_expires_at < %s", [now]
            )
            stuck = GaugeMetricFamily("finops_stuck_runs", "STARTED runs whose claim is no longer renewed")
            stuck.add_metric([], cursor.fetchone()[0])
            yield stuck

    def _durations(self, cursor, now):
        """Durations of the runs finished in the last hour, per task (a histogram of the ledger's duration_ms)."""
        buckets = ", ".join(f"count(*) FILTER (WHERE duration_ms <= {int(b * 1000)})" for b in DURATION_BUCKETS)
        cursor.execute(
            f"SELECT task_name, {buckets}, count(*), coalesce(sum(duration_ms), 0) FROM tasks_app_taskrun"
            " WHERE finished_at >= %s AND duration_ms IS NOT NULL GROUP BY task_name",
            [now - timedelta(hours=1)],
        )
        family = HistogramMetricFamily(
            "finops_task_duration_seconds", "Durations of the runs finished in the last hour", labels=["task"]
        )
        for row in cursor.fetchall():
            task, counts, total, total_ms = row[0], row[1:-2], row[-2], row[-1]
            family.add_metric(
                [task],
                [(str(float(b)), c) for b, c in zip(DURATION_BUCKETS, counts, strict=True)] + [("+Inf", total)],
                total_ms / 1000,
            )
        return family

    def _dead_letters(self, cursor):
        cursor.execute(
            "SELECT task_name, count(*), count(*) FILTER (WHERE replayed_at IS NULL)"
            " FROM tasks_app_deadletter GROUP BY task_name"
        )
        total = CounterMetricFamily("finops_dead_letters", "Runs that failed for good", labels=["task"])
        waiting = GaugeMetricFamily("finops_dead_letters_unreplayed", "Dead letters not replayed", labels=["task"])
        for task, count, unreplayed in cursor.fetchall():
            total.add_metric([task], count)
            waiting.add_metric([task], unreplayed)
        yield total
        yield waiting

    def _queues(self, cursor, now):
        from .platform import redis_client

        length = GaugeMetricFamily("finops_queue_length", "Messages waiting in the broker", labels=["queue"])
        try:
            pipe = redis_client().pipeline()
            for queue in settings.TASK_QUEUES:
                pipe.llen(queue)
            for queue, count in zip(settings.TASK_QUEUES, pipe.execute(), strict=True):
                length.add_metric([queue], count)
            up = 1
        except Exception:
            up = 0
        broker = GaugeMetricFamily("finops_broker_up", "Whether the broker answered this scrape")
        broker.add_metric([], up)
        yield length
        yield broker
        cursor.execute("SELECT queue, min(enqueued_at) FROM tasks_app_taskrun WHERE state = 'QUEUED' GROUP BY queue")
        oldest = GaugeMetricFamily(
            "finops_oldest_queued_run_age_seconds", "Age of the oldest QUEUED run per queue", labels=["queue"]
        )
        for queue, enqueued_at in cursor.fetchall():
            oldest.add_metric([queue], max((now - enqueued_at).total_seconds(), 0.0))
        yield oldest

    def _schedules(self, cursor):
        cursor.execute(
            "SELECT p.name, max(r.finished_at) FROM django_celery_beat_periodictask p"
            " LEFT JOIN tasks_app_taskrun r ON r.triggered_by = 'schedule' AND r.trigger_detail = p.name"
            " AND r.state = 'SUCCESS' WHERE p.enabled GROUP BY p.name"
        )
        family = GaugeMetricFamily(
            "finops_schedule_last_success_timestamp_seconds",
            "When each enabled schedule's run last succeeded (0: never)",
            labels=["schedule"],
        )
        for name, finished_at in cursor.fetchall():
            family.add_metric([name], finished_at.timestamp() if finished_at else 0)
        return family


class ReplicaCollector:
    """The read replica, when DATABASE_REPLICA_URL is set: used or not (down or lagging: reads on the primary), lag."""

    def collect(self):
        from finops.db_router import replica_status

        status = replica_status()
        if status is None:
            return
        up = GaugeMetricFamily("finops_replica_up", "Whether reporting reads may use the read replica (1) or not (0)")
        up.add_metric([], 1 if status.available else 0)
        yield up
        if status.lag_s is not None:
            lag = GaugeMetricFamily("finops_replica_lag_seconds", "Read replica's replay lag at its last check")
            lag.add_metric([], status.lag_s)
            yield lag


_registry = CollectorRegistry(auto_describe=False)
_registry.register(TaskSystemCollector())
_registry.register(ReplicaCollector())


# Set by a reverse proxy: a request carrying one came from elsewhere, whatever its REMOTE_ADDR.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_HOST")


def _local_client(request) -> bool:
    """A client on this host talking to gunicorn directly (not a proxy relaying someone else)."""
    if settings.REST_FRAMEWORK.get("NUM_PROXIES") is not None:
        return False
    if any(header in request.META for header in PROXY_HEADERS):
        return False
    return request.META.get("REMOTE_ADDR") in ("127.0.0.1", "::1")


def metrics_view(request):
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponseForbidden("metrics: bearer token required\n")
    elif not _local_client(request):
        return HttpResponseForbidden("metrics: loopback clients without a proxy only, unless METRICS_TOKEN is set\n")
    body = generate_latest(_registry) + generate_latest(REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts requests and times them, labelled by the matched URL pattern (not the raw path: bounded labels)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response
