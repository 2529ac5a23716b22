"""`manage.py seed_demo`: a demo that shows the product — ~90 days of cost history ending yesterday, anomalies,
recommendations, budget alerts and task runs, all made by the project's own services.

Steps (each through the same service the scheduled tasks call):
1. Remove the previous demo data (its accounts, with their lines, rollups, inventory, anomalies and
   recommendations; its budgets, channel and task runs) when it is not current or `--reset` is given. What
   is not demo data (other accounts, teams' other members, anomaly monitors, schedules) is never touched.
2. Teams "Default" (three accounts: FOCUS exports of AWS, Azure and Google Cloud) and "Research" (one), the
   generated FOCUS files under FOCUS_IMPORT_ROOT/demo/ (costs_app/demo_data.py), loaded by `focus_file_import`
   (COPY, daily and tag rollups) — so scheduled syncs of these accounts read the same files.
3. Inventory from the cost lines (`account_resources_discover`), with the attributes a cloud connector would
   report for a few resources (attached_to, size, source volume), then `recommendations_refresh`,
   `anomalies_detect` and, on budgets sized to this month's spend, `budgets_check` (alert e-mails are sent
   through EMAIL_BACKEND: the development stack writes them to .data/mail/).
4. The task runs of those steps, a failed run and its dead letter (replaying it syncs the Research account).
5. The superuser.

It takes a few seconds (most of it the detection and the e-mails); re-running on the same day re-runs steps
3-5 only and changes nothing that was already there.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_UP, Decimal
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from costs_app import demo_data
from costs_app.models import (
    Anomaly,
    Budget,
    BudgetAlert,
    BudgetPeriod,
    ChannelKind,
    CostLineItem,
    NotificationChannel,
    Recommendation,
)
from finops.devstack import admin_password_write
from finops.errors import PermanentError
from providers_app.models import CloudAccount, Provider, Resource, Team
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind

SEED = "seed_demo"  # trigger_detail of the demo's task runs: how they are found again
TAG_KEYS = ("owner", "environment", "team")
CHANNEL = ("demo-email", "finops-demo@example.com", "Default")
# What older versions of this command made: removed as demo data too.
LEGACY_ACCOUNTS = ("demo-focus",)
LEGACY_BUDGETS = ("Demo account — monthly", "Demo compute — monthly")
LEGACY_TEAMS = ("Demo team",)
# (name, accounts, service, share of this month's spend so far): the amount is that spend / share, so the budget
# stands at `share` of its amount now: past 50 % and 80 %, past 100 %, and one well below.
BUDGETS = (
    ("Demo — Default team monthly", ("demo-aws", "demo-azure", "demo-gcp"), "", Decimal("0.85")),
    ("Demo — AWS compute monthly", ("demo-aws",), "Amazon Elastic Compute Cloud", Decimal("1.15")),
    ("Demo — Research monthly", ("demo-research",), "", Decimal("0.30")),
)


def import_dir() -> Path:
    """Where the generated files go: inside the first FOCUS_IMPORT_ROOT, so scheduled syncs may read them."""
    roots = [part for part in str(settings.FOCUS_IMPORT_ROOT or "").split(os.pathsep) if part.strip()]
    if not roots:
        raise CommandError("FOCUS_IMPORT_ROOT is empty: the demo's FOCUS files have nowhere to go")
    return Path(roots[0]).resolve() / "demo"


class Command(BaseCommand):
    help = (
        "Create or refresh the demo: 4 accounts in 2 teams with --days of cost history ending yesterday (UTC), "
        "anomalies, recommendations, budget alerts, task runs and an admin user. Never touches non-demo data."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=90, help="days of cost history, ending yesterday (UTC); 35..400, default 90"
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="rebuild the demo from scratch even if its data is current (forgets what was done to its "
            "anomalies and recommendations)",
        )
        parser.add_argument("--username", default="admin", help="demo superuser (default admin)")
        parser.add_argument(
            "--password", help="set this password (default: a random one for a new user; an existing user's is kept)"
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            help="write a generated password to this file (mode 0600) instead of printing it",
        )
        parser.add_argument("--email", default="admin@example.com")

    def handle(self, *args, days: int, reset: bool, username: str, password: str | None, email: str, **options):
        if not 35 <= days <= 400:  # a month of baseline for the detectors, and a bounded load
            raise CommandError("--days must be between 35 and 400")
        started = time.monotonic()
        now = timezone.now()
        last_day = now.date() - timedelta(days=1)
        accounts = demo_data.demo_accounts()
        current = not reset and self._current(accounts, last_day=last_day, days=days)
        if current:
            self.stdout.write(f"data      current (ends {last_day}, {days} days); --reset rebuilds it")
            # Recorded again below with this run's timings; the loads (not redone) and the failed sync stay.
            TaskRun.objects.filter(trigger_detail=SEED).exclude(task_name="sync_provider_cost_data").delete()
            by_name = {a.name: a for a in CloudAccount.objects.filter(name__in=[a.name for a in accounts])}
            generated = {
                a.name: demo_data.focus_file_write(
                    a, last_day=last_day, days=days, path=import_dir() / f"{a.name}.csv.gz"
                )
                for a in accounts
            }
        else:
            removed = self._remove(accounts)
            if removed:
                self.stdout.write(f"removed   the previous demo data ({removed})")
            by_name, generated = self._load(accounts, last_day=last_day, days=days, now=now)
        self._inventory(accounts, by_name, now=now)
        self._recommendations(by_name, now=now)
        self._anomalies(by_name, now=now)
        self._budgets(by_name, generated, last_day=last_day, now=now)
        self._failed_run(by_name, now=now)
        self._admin_user(username, password, email, options.get("password_file"))
        self.stdout.write(self.style.SUCCESS(f"done      in {time.monotonic() - started:.1f} s"))

    # --- 1. what is there ----------------------------------------------------------------------------------

    def _current(self, accounts: list[demo_data.Account], *, last_day: date, days: int) -> bool:
        """True when every demo account exists and its lines span exactly the wanted days."""
        names = [a.name for a in accounts]
        if CloudAccount.objects.filter(name__in=names).count() != len(names):
            return False
        first, last = last_day - timedelta(days=days - 1), last_day + timedelta(days=1)
        span = CostLineItem.objects.filter(account__name__in=names).aggregate(
            first=Min("charge_period_start"), last=Max("charge_period_end")
        )
        return span["first"] == _midnight(first) and span["last"] == _midnight(last)

    def _remove(self, accounts: list[demo_data.Account]) -> str:
        names = [a.name for a in accounts] + list(LEGACY_ACCOUNTS)
        with transaction.atomic():
            runs, _ = TaskRun.objects.filter(trigger_detail=SEED).delete()
            budgets, _ = Budget.objects.filter(name__in=[b[0] for b in BUDGETS] + list(LEGACY_BUDGETS)).delete()
            NotificationChannel.objects.filter(name=CHANNEL[0]).delete()
            doomed = list(CloudAccount.objects.filter(name__in=names))
            for account in doomed:
                # One DELETE per table; the ORM would collect the lines into memory first.
                CostLineItem.objects.filter(account=account)._raw_delete(CostLineItem.objects.db)
                account.delete()
            # Teams stay (people may be members); only the old demo's own team goes, if nothing is left in it.
            Team.objects.filter(name__in=LEGACY_TEAMS, accounts__isnull=True, memberships__isnull=True).delete()
        if not (doomed or budgets or runs):
            return ""
        return f"{len(doomed)} accounts, {budgets} budget rows, {runs} task-run rows"

    # --- 2. accounts and their cost data -------------------------------------------------------------------

    def _load(self, accounts: list[demo_data.Account], *, last_day: date, days: int, now: datetime):
        from costs_app.services.ingest import cost_allocation_tags_activate, focus_file_import

        activated = cost_allocation_tags_activate(keys=TAG_KEYS)  # before the load, so it builds tag rollups
        if activated:
            self.stdout.write(f"tags      activated cost allocation tags {', '.join(activated)}")
        by_name, generated = {}, {}
        for spec in accounts:
            path = import_dir() / f"{spec.name}.csv.gz"
            generated[spec.name] = demo_data.focus_file_write(spec, last_day=last_day, days=days, path=path)
            team, _ = Team.objects.get_or_create(name=spec.team)
            account = CloudAccount.objects.create(
                name=spec.name,
                provider=Provider.FOCUS,
                external_id=spec.billing_account[0],
                settings={"path": str(path)},
                team=team,
            )
            by_name[spec.name] = account
            with self._run("sync_provider_cost_data", account) as run:
                try:
                    result = focus_file_import(account=account, path=str(path))
                except PermanentError as exc:
                    raise CommandError(f"the demo data of {spec.name} was refused: {exc}") from exc
                run.result = result.as_dict()
            self.stdout.write(
                f"account   {spec.name:<14} team {spec.team:<8} {spec.provider_name:<13} {result.rows_loaded:>6} lines "
                f"{generated[spec.name].first_day}..{last_day}  ({spec.story})"
            )
        return by_name, generated

    # --- 3. what the product makes of it -------------------------------------------------------------------

    def _inventory(self, accounts: list[demo_data.Account], by_name: dict, *, now: datetime) -> None:
        from costs_app.services.inventory import account_resources_discover

        for spec in accounts:
            account = by_name[spec.name]
            with self._run("discover_provider_resources", account) as run:
                run.result = account_resources_discover(account_id=account.id, now=now).as_dict()
            # What a cloud connector would add (a FOCUS file has no column for it); discovery keeps these keys.
            for resource in Resource.objects.filter(account=account, resource_id__in=list(spec.attributes)):
                resource.attributes = {**resource.attributes, **spec.attributes[resource.resource_id]}
                resource.save(update_fields=["attributes"])

    def _recommendations(self, by_name: dict, *, now: datetime) -> None:
        from costs_app.services.optimization import recommendations_refresh

        for account in by_name.values():
            with self._run("analyze_optimization_opportunities", account) as run:
                run.result = recommendations_refresh(account_id=account.id, now=now).as_dict()
        open_ = Recommendation.objects.filter(account__in=by_name.values(), status="open")
        saving = sum((r.estimated_monthly_saving for r in open_), Decimal(0))
        rules = sorted({r.rule for r in open_})
        self.stdout.write(
            f"savings   {open_.count()} open recommendations, {saving:.2f} USD/month ({', '.join(rules)})"
        )

    def _anomalies(self, by_name: dict, *, now: datetime) -> None:
        from costs_app.services.anomalies import anomalies_detect

        for account in by_name.values():
            with self._run("detect_cost_anomalies", account) as run:
                run.result = anomalies_detect(account_id=account.id, now=now).as_dict()
        for anomaly in Anomaly.objects.filter(account__in=by_name.values()).select_related("account", "monitor"):
            causes = ", ".join(
                f"{c['dimension']} {c['key'] + '=' if c.get('key') else ''}{c['value']}"
                for c in sorted(anomaly.root_causes or [], key=lambda c: c["dimension"] != "resource")[:3]
            )
            self.stdout.write(
                f"anomaly   {anomaly.account.name} {anomaly.monitor.name}/{anomaly.dimension_value or '-'} "
                f"{anomaly.start_day}..{anomaly.end_day} +{anomaly.impact:.2f} {anomaly.currency} (causes: {causes})"
            )

    def _budgets(self, by_name: dict, generated: dict, *, last_day: date, now: datetime) -> None:
        from costs_app.services.budgets import budgets_check

        name, target, team_name = CHANNEL
        channel = NotificationChannel.objects.filter(name=name).first()
        if channel is None:
            channel = NotificationChannel(name=name, kind=ChannelKind.EMAIL, team=Team.objects.get(name=team_name))
            channel.set_target(target)
            channel.save()
        month = last_day.replace(day=1)  # this month's spend so far (last month's on the 1st: still checked)
        for budget_name, account_names, service, share in BUDGETS:
            spend = sum((generated[n].month_spend(month, service or None) for n in account_names), Decimal(0))
            amount = max((spend / share).quantize(Decimal("1"), rounding=ROUND_UP), Decimal("1"))
            budget, _ = Budget.objects.update_or_create(
                name=budget_name,
                defaults={
                    "service_names": [service] if service else [],
                    "amount": amount,
                    "currency": "USD",
                    "period": BudgetPeriod.MONTHLY,
                },
            )
            budget.accounts.set([by_name[n] for n in account_names])
            budget.channels.set([channel])
            with self._run("monitor_budget", None, kwargs={"budget_id": budget.id}) as run:
                run.result = budgets_check(budget_id=budget.id, now=now).as_dict()
            alerts = BudgetAlert.objects.filter(budget=budget).order_by("threshold")
            crossed = ", ".join(f"{a.threshold:.0f}% {a.basis}" for a in alerts) or "none yet"
            self.stdout.write(f"budget    {budget_name}: {amount} USD, {spend:.2f} spent; alerts {crossed}")
        sent = BudgetAlert.objects.filter(budget__channels=channel, notified_at__isnull=False).count()
        where = settings.EMAIL_BACKEND.rsplit(".", 2)[-2]
        if where == "filebased":
            where += f" → {getattr(settings, 'EMAIL_FILE_PATH', '?')}"
        self.stdout.write(f"mail      {sent} alerts e-mailed to {target} ({where})")

    # --- 4. the control room's material --------------------------------------------------------------------

    class _run:
        """Records one demo step as a TaskRun with its real timing, result and outcome."""

        def __init__(self, task_name: str, account: CloudAccount | None, kwargs: dict | None = None):
            self.run = TaskRun(
                task_name=task_name,
                celery_task_id=str(uuid.uuid4()),
                queue=settings.CELERY_TASK_ROUTES.get(task_name, {}).get("queue", "default"),
                kwargs=kwargs if kwargs is not None else ({"account_id": account.id} if account else {}),
                triggered_by=TriggerKind.COMMAND,
                trigger_detail=SEED,
                account=account,
                correlation_id=uuid.uuid4().hex,
                worker="seed_demo",
            )

        def __enter__(self) -> TaskRun:
            self.run.started_at = self.run.enqueued_at = timezone.now()
            self.started = time.monotonic()
            return self.run

        def __exit__(self, exc_type, exc, tb) -> None:
            self.run.finished_at = timezone.now()
            self.run.duration_ms = int((time.monotonic() - self.started) * 1000)
            self.run.state = RunState.SUCCESS if exc is None else RunState.FAILURE
            if exc is not None:
                self.run.error, self.run.error_type = str(exc)[:2000], type(exc).__name__
            self.run.save()

    def _failed_run(self, by_name: dict, *, now: datetime) -> None:
        """A sync that failed after its retries, so the control room has a failure and a dead letter to replay
        (replaying it really syncs the Research account from its file)."""
        account = by_name["demo-research"]
        if DeadLetter.objects.filter(run__trigger_detail=SEED).exists():
            return
        error = "the export folder could not be read (timed out after 30 s); gave up after 3 retries"
        run = TaskRun.objects.create(
            task_name="sync_provider_cost_data",
            celery_task_id=str(uuid.uuid4()),
            queue="cost_sync",
            kwargs={"account_id": account.id},
            triggered_by=TriggerKind.SCHEDULE,
            trigger_detail=SEED,
            account=account,
            correlation_id=uuid.uuid4().hex,
            state=RunState.FAILURE,
            enqueued_at=now - timedelta(hours=3, minutes=12),
            started_at=now - timedelta(hours=3, minutes=12),
            finished_at=now - timedelta(hours=3, minutes=4),
            duration_ms=30_412,
            worker="demo-worker@finops",
            retries=3,
            error=error,
            error_type="TransientError",
        )
        DeadLetter.objects.create(
            run=run,
            task_name=run.task_name,
            kwargs=run.kwargs,
            queue=run.queue,
            error=error,
            error_type="TransientError",
            retries=3,
            created_at=run.finished_at,
        )
        self.stdout.write("runs      demo task runs recorded, one failed sync with a dead letter to replay")

    # --- 5. the superuser ----------------------------------------------------------------------------------

    def _admin_user(self, username: str, password: str | None, email: str, password_file: Path | None) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = password or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email=email, password=password)
            if password_file is not None:
                admin_password_write(password, password_file)
                self.stdout.write(self.style.SUCCESS(f"admin     created {username!r}; password in {password_file}"))
            else:
                self.stdout.write(self.style.SUCCESS(f"admin     created {username!r} with password {password!r}"))
            return
        changed = []
        if not (user.is_staff and user.is_superuser and user.is_active):
            user.is_staff = user.is_superuser = user.is_active = True
            changed.append("made an active superuser")
        if password:
            user.set_password(password)
            changed.append(f"password set to {password!r}")
        if changed:
            user.save()
            self.stdout.write(self.style.SUCCESS(f"admin     {username!r}: {', '.join(changed)}"))
        else:
            self.stdout.write(f"admin     {username!r} exists; password unchanged (pass --password to set it)")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
