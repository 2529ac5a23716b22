"""The seed's schedules live in the database and a running beat follows edits to them without a restart."""

import importlib
import time

import pytest
from django.apps import apps
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks_app.models import RunState, TaskRun, TriggerKind
from tests.celery_procs import child_env, flush_broker, start_beat, start_worker, wait_for

# Reading tests use the plain django_db marker: pytest-django runs them before any transactional test
# has flushed the tables, so they see exactly what `migrate` left. Beat tests are transactional (the beat
# process must see committed rows) and put the migration's schedules back with its own function.
pytestmark = [pytest.mark.integration]

default_schedules = importlib.import_module("tasks_app.migrations.0002_default_schedules")


@pytest.fixture
def seeded_schedules(transactional_db):
    default_schedules.create(apps, None)


# task -> (minute, hour, day_of_week, day_of_month, month_of_year) in UTC, and queue: the seed's, exactly.
SEED_SCHEDULES = {
    "sync_provider_cost_data": (("0", "*/6", "*", "*", "*"), "cost_sync"),
    "discover_provider_resources": (("0", "2", "*", "*", "*"), "resource_discovery"),
    "monitor_budget": (("0", "*", "*", "*", "*"), "monitoring"),
    "analyze_optimization_opportunities": (("0", "3", "*", "*", "*"), "analysis"),
    "detect_cost_anomalies": (("0", "*/4", "*", "*", "*"), "analysis"),
    "cleanup_old_data": (("0", "1", "0", "*", "*"), "maintenance"),
}


@pytest.mark.django_db
def test_data_migration_created_the_seed_schedules_and_routes():
    # when
    periodic = {
        task.task: task for task in PeriodicTask.objects.select_related("crontab").exclude(task__startswith="celery.")
    }
    # then: the six seed tasks, with their crontabs in UTC, enabled, routed to the seed's queues
    seeded = {name: task for name, task in periodic.items() if name in SEED_SCHEDULES}
    assert set(seeded) == set(SEED_SCHEDULES)
    for name, ((minute, hour, day_of_week, day_of_month, month), queue) in SEED_SCHEDULES.items():
        task = seeded[name]
        assert task.enabled, name
        assert task.interval is None and task.crontab is not None, name
        cron = task.crontab
        assert (cron.minute, cron.hour, cron.day_of_week, cron.day_of_month, cron.month_of_year) == (
            minute,
            hour,
            day_of_week,
            day_of_month,
            month,
        ), name
        assert str(cron.timezone) == "UTC", name
        assert settings.CELERY_TASK_ROUTES[name] == {"queue": queue}
    # and the ledger reconciler runs every minute
    reconciler = periodic["reconcile_task_runs"]
    assert reconciler.enabled and reconciler.interval.every == 60 and reconciler.interval.period == "seconds"


@pytest.mark.django_db
def test_crontabs_fire_at_the_seed_times():
    # given
    from datetime import UTC, datetime, timedelta

    def next_runs(task_name: str, start: datetime, count: int) -> list[datetime]:
        schedule = PeriodicTask.objects.get(task=task_name).crontab.schedule
        runs, now = [], start
        for _ in range(count):
            # remaining_delta(last_run_at) -> (last_run_at, delta to the next fire time, now)
            last, delta, _ = schedule.remaining_delta(now)
            now = last + delta
            runs.append(now.astimezone(UTC))
            now = now + timedelta(seconds=1)
        return runs

    start = datetime(2024, 9, 4, 0, 30, tzinfo=UTC)  # a Wednesday
    # then
    assert [r.hour for r in next_runs("sync_provider_cost_data", start, 4)] == [6, 12, 18, 0]
    assert [r.hour for r in next_runs("detect_cost_anomalies", start, 3)] == [4, 8, 12]
    assert [(r.day, r.hour) for r in next_runs("discover_provider_resources", start, 2)] == [(4, 2), (5, 2)]
    assert [(r.day, r.hour) for r in next_runs("analyze_optimization_opportunities", start, 2)] == [(4, 3), (5, 3)]
    assert [(r.hour, r.minute) for r in next_runs("monitor_budget", start, 2)] == [(1, 0), (2, 0)]
    cleanup = next_runs("cleanup_old_data", start, 2)
    assert [(r.strftime("%A"), r.hour) for r in cleanup] == [("Sunday", 1), ("Sunday", 1)]
    assert cleanup[1] - cleanup[0] == timedelta(days=7)


def scheduled_runs(task_name: str):
    return TaskRun.objects.filter(task_name=task_name, triggered_by=TriggerKind.SCHEDULE)


def test_running_beat_picks_up_an_edited_schedule_without_restart(seeded_schedules, tmp_path):
    # given: a worker and a beat running on the seed's schedules (monitor_budget: hourly)
    flush_broker()
    worker = start_worker(tmp_path, queues="monitoring", env=child_env(LOG_LEVEL="INFO"))
    beat = start_beat(tmp_path)
    try:
        time.sleep(3)
        assert not scheduled_runs("monitor_budget").exists()

        # when: the admin changes monitor_budget to every second (as the admin form saves it)
        every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.get(task="monitor_budget")
        task.crontab = None
        task.interval = every_second
        task.save()

        # then: the running beat sends it, within the scheduler's refresh interval
        wait_for(lambda: scheduled_runs("monitor_budget").count() >= 3, timeout=20, what="scheduled runs")
        run = scheduled_runs("monitor_budget").filter(state=RunState.SUCCESS).first() or wait_for(
            lambda: scheduled_runs("monitor_budget").filter(state=RunState.SUCCESS).first(), what="a scheduled success"
        )
        assert run.trigger_detail == task.name
        assert run.queue == "monitoring"
        assert "monitor_budget" in worker.log

        # when: it is disabled
        task.enabled = False
        task.save()
        time.sleep(7)  # longer than the scheduler's max_interval: the change has been seen
        settled = scheduled_runs("monitor_budget").count()
        time.sleep(4)
        # then: no more runs are sent
        assert scheduled_runs("monitor_budget").count() == settled
        assert "Sending due task" in beat.log
    finally:
        beat.stop()
        worker.stop()


def test_running_beat_picks_up_a_new_schedule(seeded_schedules, tmp_path):
    # given
    flush_broker()
    worker = start_worker(tmp_path, queues="default")
    beat = start_beat(tmp_path)
    try:
        # when: a new schedule is added while beat runs
        every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name="platform heartbeat", task="platform_noop", interval=every_second, kwargs="{}")
        # then
        wait_for(lambda: scheduled_runs("platform_noop").filter(state=RunState.SUCCESS).count() >= 2, timeout=20)
        run = scheduled_runs("platform_noop").first()
        assert run.trigger_detail == "platform heartbeat"
        assert run.correlation_id
    finally:
        beat.stop()
        worker.stop()
