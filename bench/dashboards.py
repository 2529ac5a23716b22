"""Server time of the cost dashboards' pages and JSON endpoints on millions of rollup rows.

    python bench/dashboards.py --accounts 70        # ~3 M daily rollup rows and ~6 M tag rollup rows

Runs against the configured PostgreSQL server in a database of its own (`finops_bench_dashboards`, created and
migrated if missing). The data are bench/budgets.py's generator: daily rollups from 1 December of the previous
year to --today for --accounts accounts × 2 sub-accounts × 12 services × 5 regions (weekday-heavy), and their tag
rollups for two keys (team, env); plus a budget per account, 50 open recommendations per account and, with
--anomalies, the anomalies the detector finds (none on this noise-free data: the series endpoint is timed on a
stored anomaly row).

Each page and endpoint is requested through Django's test client (the full view, middleware and rendering; no
network) as two users — a platform admin (every account) and a team viewer (5 accounts of a team) — and the best of
--repeat runs is kept. Periods: the default (the last 30 days), 90 days, and the maximum (400 days), with filters.

Baseline, same run: the least any spend answer must do — one `SUM(billed_cost)` over the same rows (the whole
period, all the user's accounts). ratio = the slowest JSON answer / that scan. The last line is key=value.
"""

import argparse
import os
import sys
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.budgets import _with_db, ensure_database, generate_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=70)
    parser.add_argument("--today", type=date.fromisoformat, default=date(2025, 11, 20))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database", default="finops_bench_dashboards")
    parser.add_argument("--reuse", action="store_true", help="keep the data of an earlier run with the same options")
    args = parser.parse_args()

    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "finops.settings",
            "DEBUG": os.environ.get("DEBUG", "1"),
            "DATABASE_URL": _with_db(base_db, args.database),
            "LOG_LEVEL": "ERROR",
            "ALLOWED_HOSTS": "testserver",
        }
    )
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from time_machine import travel

    from costs_app.models import Budget, CostDailyRollup, Recommendation
    from providers_app.models import CloudAccount, Role, Team
    from providers_app.services.teams import team_member_set

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    if args.reuse and CostDailyRollup.objects.exists():
        accounts = list(CloudAccount.objects.order_by("id"))
        rollups = CostDailyRollup.objects.count()
    else:
        Recommendation.objects.all().delete()
        accounts, rollups = generate_data(accounts=args.accounts, today=args.today)
        Budget.objects.all().delete()
        for account in accounts:
            budget = Budget.objects.create(name=f"bench {account.name}", amount=Decimal(250_000))
            budget.accounts.add(account)
        Recommendation.objects.bulk_create(
            Recommendation(
                account=account, rule=rule, provider_resource_id=f"r-{account.pk}-{i}", title=f"bench {i}",
                currency="USD", estimated_monthly_saving=Decimal(10 + i),
            )
            for account in accounts
            for i, rule in enumerate(["idle_instances", "unattached_volumes", "old_snapshots", "rightsizing"] * 13)
            if i < 50
        )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM costs_app_costtagrollup")
        tag_rows = cursor.fetchone()[0]
    print(f"data: {rollups} daily rollup rows, {tag_rows} tag rollup rows, {len(accounts)} accounts "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip

    User = get_user_model()
    admin = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser(
        "bench-admin", "a@example.com", "bench-pass-1"
    )
    team, _ = Team.objects.get_or_create(name="Bench team")
    CloudAccount.objects.filter(pk__in=[a.pk for a in accounts[:5]]).update(team=team)
    viewer = User.objects.filter(username="bench-viewer").first() or User.objects.create_user(
        "bench-viewer", "v@example.com", "bench-pass-1", is_staff=True
    )
    team_member_set(team=team, user=viewer, role=Role.VIEWER)
    budget = Budget.objects.filter(accounts=accounts[0]).first()

    today = args.today
    d30, d90, d400 = (str(today - timedelta(days=n - 1)) for n in (30, 90, 400))
    account = accounts[0].pk
    requests = [
        ("page spend", "/admin/dashboards/spend/", {}),
        ("page budgets", "/admin/dashboards/budgets/", {}),
        ("page anomalies", "/admin/dashboards/anomalies/", {}),
        ("page savings", "/admin/dashboards/savings/", {}),
        ("api spend 30d", "/api/v1/dashboards/spend/", {}),
        ("api spend 90d by account", "/api/v1/dashboards/spend/", {"date_from": d90, "group_by": "account"}),
        ("api spend 400d", "/api/v1/dashboards/spend/", {"date_from": d400}),
        ("api spend 400d one account", "/api/v1/dashboards/spend/", {"date_from": d400, "account": account}),
        ("api spend 400d service+region", "/api/v1/dashboards/spend/",
         {"date_from": d400, "service": "AWS Lambda", "region": "us-east-1"}),
        ("api spend 400d tag", "/api/v1/dashboards/spend/", {"date_from": d400, "tag": "team=web"}),
        ("api spend tags 30d", "/api/v1/dashboards/spend/tags/", {}),
        ("api spend tags 400d", "/api/v1/dashboards/spend/tags/", {"date_from": d400}),
        ("api budgets", "/api/v1/dashboards/budgets/", {}),
        ("api budget burn", f"/api/v1/dashboards/budgets/{budget.pk}/burn/", {}),
        ("api savings", "/api/v1/dashboards/savings/", {}),
    ]  # fmt: skip

    def scan(user_accounts) -> float:
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            queryset = CostDailyRollup.objects.filter(day__range=(d400, today))
            if user_accounts is not None:
                queryset = queryset.filter(account_id__in=user_accounts)
            list(queryset.values("billing_currency").annotate(total=django.db.models.Sum("billed_cost")))
            runs.append(time.perf_counter() - start)
        return min(runs)

    slowest_page = slowest_api = 0.0
    ratios = []
    with travel(f"{today} 12:00:00+00:00", tick=True):
        for label, user, scope in (
            ("platform admin", admin, None),
            ("team viewer", viewer, [a.pk for a in accounts[:5]]),
        ):
            client = Client()
            client.force_login(user)
            baseline = scan(scope)
            print(f"--- {label}: baseline SUM over 400 days of its rollups {baseline * 1000:.0f} ms")
            for name, url, params in requests:
                best, queries = None, 0
                for _ in range(args.repeat):
                    with CaptureQueriesContext(connection) as captured:
                        start = time.perf_counter()
                        answer = client.get(url, params)
                        took = time.perf_counter() - start
                    assert answer.status_code == 200, (name, answer.status_code, answer.content[:300])
                    if best is None or took < best:
                        best, queries = took, len(captured)
                print(f"{name:32s} {best * 1000:7.0f} ms  {queries:2d} queries")
                if name.startswith("page"):
                    slowest_page = max(slowest_page, best)
                else:
                    slowest_api = max(slowest_api, best)
                    ratios.append(best / baseline)
    print(
        f"dashboards rollup_rows={rollups} tag_rollup_rows={tag_rows} slowest_page_seconds={slowest_page:.3f} "
        f"slowest_api_seconds={slowest_api:.3f} ratio={max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
