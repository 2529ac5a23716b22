"""The seed's six tasks and the platform's own. Thin: ids in, one service call, counts out."""

from celery import shared_task
from django.utils import timezone

from costs_app.services import anomalies, budgets, ingest, inventory, optimization
from finops import correlation
from providers_app.models import CloudAccount
from providers_app.services.accounts import account_connection_check

from .models import TriggerKind
from .platform import FinOpsTask
from .services import retention, runs


def _fan_out(task: FinOpsTask, **kwargs) -> dict:
    """No account given: one child run per active account, each with its own lock, retries and ledger row."""
    parent_run = getattr(task.request, "run_id", None)
    children = [
        runs.task_enqueue(
            task_name=task.name,
            kwargs={**kwargs, "account_id": account_id},
            triggered_by=TriggerKind.PARENT,
            trigger_detail=task.request.id or "",
            parent_id=parent_run,
        ).celery_task_id
        for account_id in CloudAccount.objects.filter(is_active=True).values_list("id", flat=True)
    ]
    return {"accounts": len(children), "children": children}


@shared_task(name="sync_provider_cost_data", base=FinOpsTask, bind=True, lock_on="account_id")
def sync_provider_cost_data(
    self, account_id: int | None = None, billing_period: str | None = None, force: bool = False
) -> dict:
    if account_id is None:
        return _fan_out(self, billing_period=billing_period, force=force)
    return ingest.account_cost_sync(account_id=account_id, billing_period=billing_period, force=force).as_dict()


@shared_task(name="discover_provider_resources", base=FinOpsTask, bind=True, lock_on="account_id")
def discover_provider_resources(self, account_id: int | None = None) -> dict:
    if account_id is None:
        return _fan_out(self)
    return inventory.account_resources_discover(account_id=account_id, now=timezone.now()).as_dict()


@shared_task(name="monitor_budget", base=FinOpsTask, bind=True, lock_on="account_id")
def monitor_budget(
    self, account_id: int | None = None, budget_id: int | None = None, deliveries_only: bool = False
) -> dict:
    now = timezone.now()
    if deliveries_only:
        result = budgets.budget_alerts_deliver(now=now)
    else:
        result = budgets.budgets_check(account_id=account_id, budget_id=budget_id, now=now)
    if result.next_delivery_at is not None:
        _deliveries_follow_up(self, at=result.next_delivery_at, now=now)
    return result.as_dict()


def _deliveries_follow_up(task: FinOpsTask, *, at, now) -> None:
    """A delivery waits to be retried: one deliveries-only run at that time (not an hour later, at the next check).

    A Redis key remembers the follow-up already scheduled, so concurrent runs do not stack them up.
    """
    from .platform import redis_client

    key = "finops:monitor_budget:deliveries-follow-up"
    scheduled = redis_client().get(key)
    # A follow-up due before this one is enough; one due in the past is running (or this is it).
    if scheduled is not None and now.timestamp() < float(scheduled) <= at.timestamp() + 1:
        return
    delay = max((at - now).total_seconds(), 1.0)
    redis_client().set(key, at.timestamp(), ex=int(delay) + 60)
    runs.task_enqueue(
        task_name=task.name,
        kwargs={"deliveries_only": True},
        triggered_by=TriggerKind.PARENT,
        trigger_detail=task.request.id or "",
        parent_id=getattr(task.request, "run_id", None),
        countdown=delay,
    )


@shared_task(name="analyze_optimization_opportunities", base=FinOpsTask, bind=True, lock_on="account_id")
def analyze_optimization_opportunities(self, account_id: int | None = None) -> dict:
    return optimization.recommendations_refresh(account_id=account_id, now=timezone.now()).as_dict()


@shared_task(name="detect_cost_anomalies", base=FinOpsTask, bind=True, lock_on="account_id")
def detect_cost_anomalies(self, account_id: int | None = None) -> dict:
    return anomalies.anomalies_detect(account_id=account_id, now=timezone.now()).as_dict()


@shared_task(name="cleanup_old_data", base=FinOpsTask, bind=True)
def cleanup_old_data(self, dry_run: bool = False, classes: list[str] | None = None) -> dict:
    return retention.old_data_cleanup(now=timezone.now(), dry_run=dry_run, classes=classes).as_dict()


@shared_task(name="check_provider_connection", base=FinOpsTask, bind=True)
def check_provider_connection(self, account_id: int) -> dict:
    """ "Test connection": succeeds with {"ok": false, "summary": …} when the connection is bad (a finding,
    not a failure of the task); fails only when the account does not exist."""
    return account_connection_check(account_id=account_id)


@shared_task(name="platform_noop", base=FinOpsTask, bind=True)
def platform_noop(self, value: int = 0) -> int:
    """Does nothing but pass through the full platform path: for benchmarks and smoke checks."""
    return value


@shared_task(name="platform_probe", base=FinOpsTask, bind=True, lock_on="account_id")
def platform_probe(
    self,
    fail_transient: int = 0,
    fail_permanent: bool = False,
    sleep: float = 0.0,
    account_id: int | None = None,
    fail_while_flag: str | None = None,
    mark: str | None = None,
    query: bool = False,
) -> dict:
    """A task whose failure and duration are controlled by its arguments, for drills and integration tests.

    fail_transient=N fails transiently on the first N attempts; sleep holds the worker that long;
    query=True reads the database once after the sleep (a connection lost meanwhile surfaces there);
    account_id takes the per-account lock like the real tasks; fail_while_flag=F fails permanently
    while the Redis key finops:probe:flag:F exists (a fault an operator fixes, then replays);
    mark=M leaves countable side effects: each attempt's start time in finops:probe:M:attempts and,
    only once the work is complete, one INCR of finops:probe:M:done and the [start, end] span.
    """
    import json
    import time

    import redis
    from django.conf import settings

    from finops.errors import PermanentError, TransientError

    from .platform import fence, redis_client

    # Marks go to the broker's Redis unless PROBE_MARKS_URL names another (drills that wipe the broker).
    marks = redis.Redis.from_url(settings.PROBE_MARKS_URL) if settings.PROBE_MARKS_URL else redis_client()
    started = time.time()
    if mark:
        marks.rpush(f"finops:probe:{mark}:attempts", repr(started))
    if sleep:
        time.sleep(sleep)
    if query:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    if fail_permanent:
        raise PermanentError("probe asked to fail permanently")
    if fail_while_flag and redis_client().exists(f"finops:probe:flag:{fail_while_flag}"):
        raise PermanentError(f"probe blocked while flag {fail_while_flag} is set")
    if self.request.retries < fail_transient:
        raise TransientError(f"probe transient failure on attempt {self.request.retries + 1}")
    if mark:
        # Last, so a run killed or cancelled mid-work leaves no "done" behind; and only while this execution
        # still holds its claim (a frozen one resumed after its run was handed over must not count).
        fence()
        pipe = marks.pipeline()
        pipe.incr(f"finops:probe:{mark}:done")
        pipe.rpush(f"finops:probe:{mark}:spans", json.dumps([started, time.time()]))
        pipe.execute()
    return {"attempts": self.request.retries + 1, "correlation_id": correlation.get()}


# Not FinOps tasks: frequent housekeeping that would only flood the audit trail.
@shared_task(name="reconcile_task_runs", ignore_result=True)
def reconcile_task_runs() -> dict:
    return runs.runs_reconcile(now=timezone.now()).as_dict()


@shared_task(name="bare_noop")
def bare_noop(value: int = 0) -> int:
    """A plain Celery task, the benchmark's baseline."""
    return value
