"""`manage.py import_focus PATH --account NAME`: load a FOCUS export, via the sync's service."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from finops.errors import PermanentError
from providers_app.models import CloudAccount, Provider
from providers_app.services.teams import team_default


class Command(BaseCommand):
    help = "Load a FOCUS 1.0/1.2 file or folder (CSV, CSV.gz, Parquet) into a focus account (created if missing)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="a FOCUS file, or a folder of *.csv, *.csv.gz, *.parquet files")
        parser.add_argument("--account", required=True, help="account name; a focus account is created if missing")
        parser.add_argument("--json", action="store_true", help="print the whole result, rule report included, as JSON")

    def handle(self, *args, path: str, account: str, **options):
        from costs_app.services.ingest import focus_file_import

        source = Path(path).resolve()
        if not source.exists():
            raise CommandError(f"{path} does not exist")
        target, created = CloudAccount.objects.get_or_create(
            name=account,
            defaults={"provider": Provider.FOCUS, "settings": {"path": str(source)}, "team": team_default()},
        )
        if target.provider != Provider.FOCUS:
            raise CommandError(f"account {account!r} is a {target.provider} account, not a focus one")
        if created:
            self.stdout.write(f"created focus account {account!r} reading {source}")
        elif not (target.settings or {}).get("path"):
            target.settings = {**(target.settings or {}), "path": str(source)}
            target.save(update_fields=["settings", "updated_at"])
        self._warn_outside_root(target)
        try:
            result = focus_file_import(account=target, path=str(source))
        except PermanentError as exc:
            raise CommandError(str(exc)) from exc
        if options.get("json"):
            self.stdout.write(json.dumps(result.as_dict(), indent=2, default=str))
            return
        self._print(result.as_dict())

    def _warn_outside_root(self, account: CloudAccount) -> None:
        """The operator may load any path they type; the account's scheduled syncs read only under the root."""
        from providers_app.connectors.focus import focus_settings_problem

        problem = focus_settings_problem(account.settings)
        if problem:
            self.stderr.write(
                f"warning: account {account.name!r} settings.{problem}: this import reads it because you typed it, "
                "but its scheduled syncs and connection checks will refuse it"
            )

    def _print(self, result: dict) -> None:
        write = self.stdout.write
        write(f"read {result['rows_read']} rows from {len(result['files'])} file(s); loaded {result['rows_loaded']}")
        for period, rows in result["periods"].items():
            write(f"  {period}: {rows} rows")
        if result["rows_replaced"]:
            write(f"replaced {result['rows_replaced']} previously imported rows of the same periods")
        for currency, total in result["billed_cost"].items():
            write(f"BilledCost total: {total} {currency}")
        report = result["report"]
        for version_file, version in report["versions"].items():
            write(f"{version_file}: FOCUS {version}")
        for warning in result["warnings"]:
            write(f"warning: {warning}")
        if not report["violations"]:
            write("FOCUS rule checks: no violations")
        for violation in report["violations"]:
            rows = ", ".join(str(e["row"]) for e in violation["examples"])
            write(
                f"{violation['severity']}: {violation['rule']} {violation['column']}: {violation['count']} row(s) "
                f"{violation['problem']} (e.g. rows {rows})"
            )
