"""Reads for the control room (admin page /admin/control-room/, JSON at /api/v1/tasks/control-room): one snapshot of
the task system as the signed-in user may see it.

1. Health that is organisation-wide (workers, queues, beat) follows the health endpoint: everyone sees whether it
   is ok, platform admins see the details (worker names, queues, concurrency, active tasks, queue lengths).
2. Schedules are organisation-wide settings (PeriodicTaskAdmin is for platform admins): platform admins only.
3. Runs, statistics and dead letters come from the user's scope (selectors.runs_for / dead_letters_for).
4. Statistics are one aggregate query per window: success rate and duration p50/p95 (percentile_cont) per task.
Nothing here writes; the buttons of the page post to the admin actions (tasks_app/admin_control_room.py).
"""

import json
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Aggregate, Count, FloatField, Q
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from providers_app.selectors import is_platform_admin

from .beat import HEARTBEAT_KEY, LEADER_KEY
from .models import ACTIVE_STATES, RunState, TaskRun
from .selectors import dead_letters_for, runs_for

TRIGGER_PERMISSION = "tasks_app.trigger_tasks"
RECENT_RUNS = 15
DEAD_LETTERS = 10
WINDOWS = (("24h", timedelta(hours=24)), ("7d", timedelta(days=7)))


class PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate: percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _workers_and_queues(platform: bool) -> dict:
    from .platform import WORKER_STATE_KEY, redis_client

    try:
        client = redis_client()
        keys = sorted(client.scan_iter(match=WORKER_STATE_KEY + "*", count=500))
        snapshots = [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
        pipe = client.pipeline()
        for queue in settings.TASK_QUEUES:
            pipe.llen(queue)
        lengths = dict(zip(settings.TASK_QUEUES, pipe.execute(), strict=True))
        beat_raw, leader = client.get(HEARTBEAT_KEY), client.get(LEADER_KEY)
    except Exception as exc:
        return {"broker_ok": False, "error": f"broker unreachable: {type(exc).__name__}" if not platform else str(exc)}
    now = time.time()
    beat_age = round(now - float(beat_raw), 1) if beat_raw else None
    beat = {"ok": beat_age is not None and beat_age <= settings.BEAT_HEARTBEAT_MAX_AGE, "age_s": beat_age}
    out = {"broker_ok": True, "workers_ok": bool(snapshots), "beat": beat}
    if not platform:
        return out
    beat["leader"] = (leader or b"").decode()
    beat["max_age_s"] = settings.BEAT_HEARTBEAT_MAX_AGE
    out["workers"] = [
        {
            "name": snap["hostname"],
            "queues": snap.get("queues") or [],
            "concurrency": snap.get("concurrency"),
            "seen_s_ago": round(now - float(snap.get("at", now)), 1),
            "active": [
                {"task": task.get("name") or task.get("type") or "", "id": task.get("id", "")}
                for task in snap.get("active") or []
            ],
            "reserved": len(snap.get("reserved") or []),
        }
        for snap in snapshots
    ]
    out["queues"] = [{"name": name, "length": length} for name, length in lengths.items()]
    return out


def next_run_at(task: PeriodicTask, now):
    """When beat sends `task` next (None: disabled, a one-off already sent, or a schedule celery cannot estimate)."""
    if not task.enabled or (task.one_off and task.total_run_count):
        return None
    try:
        schedule = task.schedule
        remaining = schedule.remaining_estimate(task.last_run_at or task.start_time or task.date_changed or now)
    except Exception:  # a schedule without a type, or one celery cannot estimate: shown as unknown
        return None
    return max(now + remaining, now)


def _schedules(now) -> list[dict]:
    tasks = list(PeriodicTask.objects.select_related("interval", "crontab", "solar", "clocked").order_by("name")[:100])
    names = [task.name for task in tasks]
    # The latest run of each schedule (by beat, or by "run now" in the admin, both name it in trigger_detail).
    latest = {
        run.trigger_detail: run
        for run in TaskRun.objects.filter(trigger_detail__in=names, enqueued_at__gte=now - timedelta(days=35))
        .order_by("trigger_detail", "-enqueued_at")
        .distinct("trigger_detail")
        .only("id", "trigger_detail", "state", "enqueued_at")
    }
    rows = []
    for task in tasks:
        run = latest.get(task.name)
        rows.append(
            {
                "id": task.id,
                "name": task.name,
                "task": task.task,
                "enabled": task.enabled,
                "schedule": str(task.scheduler) if task.scheduler else "",
                "last_run_at": _iso(task.last_run_at),
                "next_run_at": _iso(next_run_at(task, now)),
                "last_state": run.state if run else None,
                "last_run_url": reverse("admin:tasks_app_taskrun_change", args=[run.pk]) if run else None,
                "url": reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]),
            }
        )
    return rows


def _stats(runs, now) -> dict:
    out = {}
    for label, span in WINDOWS:
        rows = (
            runs.filter(enqueued_at__gte=now - span, state__in=(RunState.SUCCESS, RunState.FAILURE))
            .order_by()
            .values("task_name")
            .annotate(
                finished=Count("id"),
                succeeded=Count("id", filter=Q(state=RunState.SUCCESS)),
                p50=PercentileCont("duration_ms", 0.5),
                p95=PercentileCont("duration_ms", 0.95),
            )
            .order_by("task_name")
        )
        out[label] = [
            {
                "task": row["task_name"],
                "finished": row["finished"],
                "success_rate": round(100 * row["succeeded"] / row["finished"], 1) if row["finished"] else None,
                "p50_ms": round(row["p50"]) if row["p50"] is not None else None,
                "p95_ms": round(row["p95"]) if row["p95"] is not None else None,
            }
            for row in rows
        ]
    return out


def control_room_snapshot(*, user) -> dict:
    now = timezone.now()
    platform = is_platform_admin(user)
    can_trigger = user.has_perm(TRIGGER_PERMISSION)
    runs = runs_for(user)
    recent = runs.select_related("account").order_by("-enqueued_at")[:RECENT_RUNS]
    letters = (
        dead_letters_for(user)
        .filter(replayed_at__isnull=True)
        .select_related("run__account")
        .order_by("-created_at")[:DEAD_LETTERS]
    )
    return {
        "generated_at": now.isoformat(),
        "platform_admin": platform,
        "can_trigger": can_trigger,
        "system": _workers_and_queues(platform),
        "schedules": _schedules(now) if platform else [],
        "recent_runs": [
            {
                "id": str(run.id),
                "task": run.task_name,
                "account": run.account.name if run.account_id else None,
                "state": run.state,
                "triggered_by": run.triggered_by,
                "enqueued_at": _iso(run.enqueued_at),
                "duration_ms": run.duration_ms,
                "error": (run.error or "")[:200],
                "cancellable": run.state in ACTIVE_STATES,
                "url": reverse("admin:tasks_app_taskrun_change", args=[run.pk]),
            }
            for run in recent
        ],
        "stats": _stats(runs, now),
        "dead_letters": [
            {
                "id": letter.id,
                "task": letter.task_name,
                "account": letter.run.account.name if letter.run.account_id else None,
                "error": (letter.error or "")[:200],
                "created_at": _iso(letter.created_at),
                "url": reverse("admin:tasks_app_deadletter_change", args=[letter.pk]),
            }
            for letter in letters
        ],
        "dead_letters_waiting": dead_letters_for(user).filter(replayed_at__isnull=True).count(),
    }
