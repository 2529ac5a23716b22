"""`manage.py run_task NAME`: enqueue one of the six tasks through the ledger, and optionally wait for its outcome."""

import json
import re
import time

from django.core.management.base import BaseCommand, CommandError

from providers_app.models import CloudAccount
from tasks_app.models import FINAL_STATES, RetentionDataClass, RunState, TaskRun, TriggerKind
from tasks_app.services.runs import SCHEDULED_TASKS, task_enqueue

PER_ACCOUNT = {
    "sync_provider_cost_data",
    "discover_provider_resources",
    "monitor_budget",
    "analyze_optimization_opportunities",
    "detect_cost_anomalies",
    "check_provider_connection",
}
TASKS = (*SCHEDULED_TASKS, "check_provider_connection")
POLL_INTERVAL = 0.25


class Command(BaseCommand):
    help = (
        "Enqueue one of the six FinOps tasks, or check_provider_connection (a connection test; needs --account), "
        "recorded in the ledger as triggered by a command."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", choices=TASKS, metavar="NAME", help=", ".join(TASKS))
        parser.add_argument("--account", help="account name (default: every active account)")
        parser.add_argument("--billing-period", help="YYYY-MM, for sync_provider_cost_data")
        parser.add_argument(
            "--force", action="store_true", help="sync_provider_cost_data only: reload unchanged exports"
        )
        parser.add_argument("--dry-run", action="store_true", help="cleanup_old_data only: count, delete nothing")
        parser.add_argument(
            "--classes",
            help="cleanup_old_data only: comma-separated data classes (" + ", ".join(RetentionDataClass.values) + ")",
        )
        parser.add_argument("--wait", action="store_true", help="wait for the outcome and print it")
        parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait (default 600)")

    def handle(
        self,
        *args,
        name: str,
        account: str | None,
        billing_period: str | None,
        force: bool,
        dry_run: bool,
        classes: str | None,
        wait: bool,
        timeout: float,
        **options,
    ):
        kwargs = self._task_kwargs(
            name, account=account, billing_period=billing_period, dry_run=dry_run, classes=classes
        )
        if force:
            if name != "sync_provider_cost_data":
                raise CommandError("--force applies to sync_provider_cost_data only")
            kwargs["force"] = True
        run = task_enqueue(task_name=name, kwargs=kwargs, triggered_by=TriggerKind.COMMAND, trigger_detail="run_task")
        self.stdout.write(f"enqueued {name} on queue {run.queue}")
        self.stdout.write(f"task id: {run.celery_task_id}")
        if not wait:
            self.stdout.write(f"follow it with: manage.py monitor_tasks status {run.celery_task_id}")
            return
        deadline = time.monotonic() + timeout
        run = self._wait(run, deadline)
        failed = self._report(run)
        # A fan-out run (no --account) succeeds once it has enqueued its children; the work is theirs.
        children = (run.result or {}).get("children") if isinstance(run.result, dict) else None
        for child_id in children or []:
            child = self._wait(TaskRun.objects.get(celery_task_id=child_id), deadline)
            self.stdout.write("")
            failed |= self._report(child, heading=f"child {child_id}")
        if failed:
            raise CommandError(f"{name} did not succeed")

    def _task_kwargs(
        self, name: str, *, account: str | None, billing_period: str | None, dry_run: bool, classes: str | None = None
    ) -> dict:
        kwargs: dict = {}
        if account is not None:
            if name not in PER_ACCOUNT:
                raise CommandError(f"{name} does not take --account")
            account_id = CloudAccount.objects.filter(name=account).values_list("id", flat=True).first()
            if account_id is None:
                known = ", ".join(CloudAccount.objects.values_list("name", flat=True)[:20]) or "none"
                raise CommandError(f"no account named {account!r} (known: {known})")
            kwargs["account_id"] = account_id
        if name == "check_provider_connection" and account is None:
            raise CommandError("check_provider_connection needs --account")
        if billing_period is not None:
            if name != "sync_provider_cost_data":
                raise CommandError("--billing-period applies to sync_provider_cost_data only")
            if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", billing_period):
                raise CommandError(f"--billing-period must be YYYY-MM, got {billing_period!r}")
            kwargs["billing_period"] = billing_period
        if dry_run:
            if name != "cleanup_old_data":
                raise CommandError("--dry-run applies to cleanup_old_data only")
            kwargs["dry_run"] = True
        if classes is not None:
            if name != "cleanup_old_data":
                raise CommandError("--classes applies to cleanup_old_data only")
            wanted = [c.strip() for c in classes.split(",") if c.strip()]
            unknown = sorted(set(wanted) - set(RetentionDataClass.values))
            if unknown or not wanted:
                raise CommandError(
                    f"--classes: unknown data class {', '.join(unknown) or '(none given)'}; "
                    f"known: {', '.join(RetentionDataClass.values)}"
                )
            kwargs["classes"] = wanted
        return kwargs

    def _wait(self, run: TaskRun, deadline: float) -> TaskRun:
        while True:
            run.refresh_from_db()
            if run.state in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise CommandError(
                    f"timed out waiting for {run.celery_task_id} (still {run.state}); is a worker consuming "
                    f"queue {run.queue!r}? It keeps running; check with monitor_tasks status {run.celery_task_id}",
                    returncode=2,
                )
            time.sleep(POLL_INTERVAL)

    def _report(self, run: TaskRun, heading: str = "outcome") -> bool:
        """Print the run's outcome; True when it did not succeed."""
        style = self.style.SUCCESS if run.state == RunState.SUCCESS else self.style.ERROR
        self.stdout.write(f"{heading}: {style(run.state)}")
        if run.duration_ms is not None:
            self.stdout.write(f"duration: {run.duration_ms / 1000:.2f}s, retries: {run.retries}")
        if run.result is not None:
            self.stdout.write("result: " + json.dumps(run.result, indent=2, default=str))
        if run.error:
            self.stdout.write(self.style.ERROR(f"error ({run.error_type or 'error'}): {run.error}"))
        return run.state != RunState.SUCCESS
