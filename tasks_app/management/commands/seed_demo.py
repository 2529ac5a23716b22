"""`manage.py seed_demo`: the quickstart's demo — a FOCUS account with data, budgets, a channel and an admin user."""

import csv
import gzip
import secrets
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from costs_app.models import Budget, BudgetPeriod, ChannelKind, NotificationChannel
from finops.errors import PermanentError
from providers_app.models import CloudAccount, Provider, Team

DEMO_ACCOUNT = "demo-focus"
DEMO_TEAM = "Demo team"
DEMO_FILE = Path(settings.BASE_DIR) / "demo" / "focus_demo.csv.gz"
# Where the demo data, moved to the current month, is written (gitignored).
REBASED_DIR = Path(settings.BASE_DIR) / "imports" / "demo"  # inside the default FOCUS_IMPORT_ROOT
DATE_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
DEMO_CHANNEL = ("demo-email", "finops-demo@example.com")
# (name, scoped to the demo account?, service, amount). Sized to the demo data's month (about 20.52 USD in
# total, 16.04 of it EC2), so in that billing period one budget passes 80 % and the other 100 %. Both have the
# default thresholds: 50, 80 and 100 % of actual spend and 100 % of forecasted spend.
DEMO_BUDGETS = (
    ("Demo account — monthly", True, "", Decimal("25.00")),
    ("Demo compute — monthly", True, "Amazon Elastic Compute Cloud", Decimal("15.00")),
)


class Command(BaseCommand):
    help = "Create (or refresh) the demo account, its FOCUS cost data, budgets, an email channel and an admin user."

    def add_arguments(self, parser):
        parser.add_argument("--data", type=Path, default=DEMO_FILE, help=f"FOCUS file to load (default {DEMO_FILE})")
        parser.add_argument("--username", default="admin", help="demo superuser (default admin)")
        parser.add_argument(
            "--password",
            help="set this password (default: a random one for a new user; an existing user's is kept)",
        )
        parser.add_argument("--email", default="admin@example.com")
        parser.add_argument(
            "--original-dates",
            action="store_true",
            help="load the data with its own dates (September 2024) instead of moving its first month to this month",
        )

    def handle(self, *args, data: Path, username: str, password: str | None, email: str, **options):
        path = data.expanduser().resolve()
        if not path.exists():
            raise CommandError(f"demo data not found: {path}")
        if not options["original_dates"]:
            # Budgets watch the current period and discovery the recent data: a demo from 2024 would show nothing.
            path = rebased_copy(path, REBASED_DIR / path.name, today=timezone.now().date())
        with transaction.atomic():
            team, _ = Team.objects.get_or_create(name=DEMO_TEAM)
            account = self._account(path, team)
            channel = self._channel(team)
            budgets = self._budgets(account, channel)
        self.stdout.write(f"account   {account.name} (team {team.name}, provider {account.provider}, data {path})")
        self.stdout.write(f"channel   {channel.name} ({channel.kind} → {channel.target_hint})")
        for budget in budgets:
            thresholds = ", ".join(t.label(budget.currency) for t in budget.threshold_list())
            scope = budget.scope_label([a.name for a in budget.accounts.all()])
            self.stdout.write(f"budget    {budget}, {scope}, thresholds {thresholds}")
        self._import(account, path)
        self._admin_user(username, password, email)

    def _account(self, path: Path, team: Team) -> CloudAccount:
        account, created = CloudAccount.objects.get_or_create(
            name=DEMO_ACCOUNT,
            defaults={"provider": Provider.FOCUS, "external_id": "demo", "settings": {"path": str(path)}, "team": team},
        )
        if account.team_id is None:
            account.team = team
            account.save(update_fields=["team", "updated_at"])
        if not created and account.settings.get("path") != str(path):
            account.settings = {**account.settings, "path": str(path)}
            account.save(update_fields=["settings", "updated_at"])
        return account

    def _channel(self, team: Team) -> NotificationChannel:
        name, target = DEMO_CHANNEL
        channel = NotificationChannel.objects.filter(name=name).first()
        if channel is None:
            channel = NotificationChannel(name=name, kind=ChannelKind.EMAIL, team=team)
            channel.set_target(target)
            channel.save()
        return channel

    def _budgets(self, account: CloudAccount, channel: NotificationChannel) -> list[Budget]:
        budgets = []
        for name, scoped, service, amount in DEMO_BUDGETS:
            budget, created = Budget.objects.get_or_create(
                name=name,
                defaults={
                    "service_names": [service] if service else [],
                    "amount": amount,
                    "currency": "USD",
                    "period": BudgetPeriod.MONTHLY,
                },
            )
            if created and scoped:
                budget.accounts.add(account)
            budget.channels.add(channel)
            budgets.append(budget)
        return budgets

    def _import(self, account: CloudAccount, path: Path) -> None:
        from costs_app.services.ingest import focus_file_import

        try:
            # Replaces the account's rows per billing period, so running seed_demo again never duplicates.
            result = focus_file_import(account=account, path=path)
        except PermanentError as exc:
            raise CommandError(f"the demo data was refused: {exc}") from exc
        summary = result.as_dict()
        periods = ", ".join(f"{period}: {rows}" for period, rows in (summary.get("periods") or {}).items())
        cost = ", ".join(f"{amount} {currency}" for currency, amount in (summary.get("billed_cost") or {}).items())
        self.stdout.write(
            f"imported  {summary['rows_loaded']} of {summary.get('rows_read', '?')} rows "
            f"(per billing period {periods or '-'}; billed {cost or '-'})"
        )
        for violation in (summary.get("report") or {}).get("violations") or []:
            self.stdout.write(
                f"check     {violation.get('severity', '')} {violation.get('column', '')} {violation.get('rule', '')}:"
                f" {violation.get('count', '?')} row(s) {violation.get('problem', '')}"
            )

    def _admin_user(self, username: str, password: str | None, email: str) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = password or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email=email, password=password)
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


def rebased_copy(source: Path, target: Path, *, today: date) -> Path:
    """Write `source` (a FOCUS CSV, optionally gzipped) with its dates moved by whole months so that its
    earliest billing period is the month of `today`. Cells other than the four period columns are untouched."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    columns = [header.index(name) for name in DATE_COLUMNS if name in header]
    first = min(_parse(row[header.index("BillingPeriodStart")]) for row in body)
    shift = relativedelta(months=(today.year - first.year) * 12 + today.month - first.month)
    for row in body:
        for index in columns:
            if row[index] not in ("", "NULL"):
                row[index] = (_parse(row[index]) + shift).strftime("%Y-%m-%d %H:%M:%S")
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(target, "wt", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_MINIMAL).writerows([header, *body])
    return target


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=UTC)
