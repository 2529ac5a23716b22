"""`manage.py export_focus --account NAME --out FILE`: stored cost lines as a FOCUS 1.2 CSV or Parquet file."""

from django.core.management.base import BaseCommand, CommandError

from finops.errors import PermanentError
from providers_app.models import CloudAccount


class Command(BaseCommand):
    help = "Write an account's cost lines of a billing-period range (YYYY-MM, inclusive) as FOCUS 1.2."

    def add_arguments(self, parser):
        parser.add_argument("--account", required=True)
        parser.add_argument("--start", help="first billing period, YYYY-MM (default: the earliest)")
        parser.add_argument("--end", help="last billing period, YYYY-MM (default: the latest)")
        parser.add_argument("--out", required=True, help="file to write")
        parser.add_argument("--format", choices=["csv", "parquet"], help="default: from the file name, else csv")

    def handle(self, *args, account, start, end, out, format, **options):  # noqa: A002
        from costs_app.services.export import focus_export

        target = CloudAccount.objects.filter(name=account).first()
        if target is None:
            raise CommandError(f"no account named {account!r}")
        fmt = format or ("parquet" if out.lower().endswith(".parquet") else "csv")
        try:
            rows = focus_export(account=target, start=start, end=end, out=out, fmt=fmt)
        except PermanentError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"wrote {rows} rows of FOCUS 1.2 ({fmt}) to {out}")
