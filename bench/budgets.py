"""Budget monitoring cost: one `budgets_check` over N budgets of mixed scopes against a naive per-budget loop.

    python bench/budgets.py --budgets 10000

Runs against the configured PostgreSQL server, in a database of its own (`finops_bench_budgets` by default,
created and migrated if missing), so it never touches real data. It generates daily rollups from 1 January
to --today for --accounts accounts × 2 sub-accounts × 12 services × 5 regions (weekday-heavy, deterministic),
their tag rollups for two active cost allocation tags (team, env), and N budgets mixing every scope
(all spend, accounts, sub-accounts, services, regions, tags, and combinations), every period (monthly,
quarterly, annual, fixed ranges) and threshold kinds (the defaults with a forecast, absolute amounts),
all sending to one e-mail channel (Django's in-memory mail backend: no network in the figures).

Measured, with `now` = --today 12:00 UTC (steady and spend are the best of --repeat runs, naive of one fewer):
- first:  the first check — spend and forecast of every budget, alerts created, every message sent;
- steady: the same check again, as every hourly run after it (nothing new to alert or send);
- spend:  `budgets_spend` alone (the two aggregate queries and the forecast, no writes);
- naive:  the baseline — the obvious per-budget loop (for each budget: its accounts, its data day, its period spend,
          its daily series for the forecast: four ORM queries) on --sample budgets, extrapolated to N.
          Its results are compared with the set-based ones: they must agree on every sampled budget.
The last line is the figures as key=value; ratio = steady seconds / naive seconds.
"""

import argparse
import os
import random
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVICES = [
    "Amazon Elastic Compute Cloud",
    "Amazon Simple Storage Service",
    "Amazon Relational Database Service",
    "AWS Lambda",
    "Amazon CloudFront",
    "Amazon DynamoDB",
    "Amazon Elastic Kubernetes Service",
    "Amazon ElastiCache",
    "Amazon Virtual Private Cloud",
    "AWS Key Management Service",
    "Amazon Simple Queue Service",
    "Amazon CloudWatch",
]
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"]
TAGS = {"team": ["web", "api", "data", "ml", ""], "env": ["prod", "staging", "dev", ""]}


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def generate_data(*, accounts: int, today: date) -> tuple[list, int]:
    """Accounts, rollups and tag rollups from 1 January of the previous year's December to today, in SQL."""
    from django.db import connection

    from costs_app.models import CostAllocationTag
    from providers_app.models import CloudAccount

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE costs_app_costtagrollup, costs_app_costdailyrollup, costs_app_alertdelivery, "
            "costs_app_budgetalert, costs_app_budget_accounts, costs_app_budget_channels, costs_app_budget, "
            "costs_app_notificationchannel, costs_app_costallocationtag, providers_app_cloudaccount CASCADE"
        )
    rows = CloudAccount.objects.bulk_create(
        CloudAccount(provider="focus", name=f"bench-{i:02d}", external_id=f"{100000000000 + i}")
        for i in range(accounts)
    )
    for key in TAGS:
        CostAllocationTag.objects.create(key=key)
    first = date(today.year - 1, 12, 1)
    with connection.cursor() as cursor:
        # Spend per row: service weight × a hash in [1, 2) × 0.4 at weekends, a few dollars to a few hundred.
        cursor.execute(
            """
            INSERT INTO costs_app_costdailyrollup
                (account_id, day, billing_period_start, service_name, service_category, sub_account_id, region_id,
                 billing_currency, billed_cost, effective_cost, list_cost, line_count)
            SELECT a.id, d::date, date_trunc('month', d) AT TIME ZONE 'UTC', s.name, '', a.external_id || '-' || sub,
                   r.name, 'USD', c.cost, c.cost, c.cost, 1
            FROM providers_app_cloudaccount a
            CROSS JOIN generate_series(1, 2) AS sub
            CROSS JOIN unnest(%(services)s::text[]) WITH ORDINALITY AS s(name, weight)
            CROSS JOIN unnest(%(regions)s::text[]) AS r(name)
            CROSS JOIN generate_series(%(first)s::timestamp, %(last)s::timestamp, interval '1 day') AS d
            CROSS JOIN LATERAL (
                SELECT round((s.weight * (1 + (hashtext(a.id || s.name || r.name || sub || d::date) & 1023) / 1024.0)
                              * CASE WHEN extract(isodow FROM d) > 5 THEN 0.4 ELSE 1 END)::numeric, 4) AS cost
            ) c
            """,
            {"services": SERVICES, "regions": REGIONS, "first": first, "last": today},
        )
        rollups = cursor.rowcount
        for key, values in TAGS.items():
            cursor.execute(
                """
                INSERT INTO costs_app_costtagrollup
                    (account_id, day, tag_key, tag_value, service_name, sub_account_id, region_id, billing_currency,
                     billed_cost, effective_cost, list_cost, line_count)
                SELECT account_id, day, %(key)s,
                       (%(values)s::text[])[1 + abs(hashtext(%(key)s || account_id || service_name || region_id))
                                                %% cardinality(%(values)s::text[])],
                       service_name, sub_account_id, region_id, billing_currency, SUM(billed_cost), SUM(effective_cost),
                       SUM(list_cost), SUM(line_count)
                FROM costs_app_costdailyrollup
                GROUP BY account_id, day, 4, service_name, sub_account_id, region_id, billing_currency
                """,
                {"key": key, "values": values},
            )
        cursor.execute("ANALYZE costs_app_costdailyrollup")
        cursor.execute("ANALYZE costs_app_costtagrollup")
    return rows, rollups


def generate_budgets(n: int, *, accounts: list, today: date, seed: int = 42) -> None:
    from costs_app.models import Budget, BudgetPeriod, NotificationChannel, default_thresholds, thresholds_parse

    rng = random.Random(seed)
    channel = NotificationChannel(name="bench-mail", kind="email")
    channel.set_target("finops-bench@example.com")
    channel.save()

    def some(values, most=3):
        return rng.sample(values, rng.randint(1, most))

    subs = [f"{a.external_id}-{i}" for a in accounts for i in (1, 2)]
    shapes = [
        (5, lambda: {}),
        (15, lambda: {"accounts": some(accounts)}),
        (15, lambda: {"accounts": some(accounts, 2), "service_names": some(SERVICES)}),
        (10, lambda: {"service_names": some(SERVICES, 2)}),
        (10, lambda: {"region_ids": some(REGIONS, 2)}),
        (10, lambda: {"sub_account_ids": some(subs, 4)}),
        (10, lambda: {"tag_key": "team", "tag_values": some(TAGS["team"][:-1], 2)}),
        (5, lambda: {"tag_key": "team", "tag_values": some(TAGS["team"][:-1], 2), "accounts": some(accounts, 2)}),
        (5, lambda: {"tag_key": "env", "tag_values": ["prod"], "service_names": some(SERVICES),
                     "region_ids": some(REGIONS)}),
        (15, lambda: {"accounts": some(accounts, 1), "service_names": some(SERVICES, 2),
                      "region_ids": some(REGIONS, 2)}),
    ]  # fmt: skip
    weights = [w for w, _ in shapes]
    custom_thresholds = [
        [50, 90, {"type": "absolute", "value": 5000}],
        [{"value": 80, "basis": "forecasted"}, 100, {"type": "absolute", "value": 250, "basis": "forecasted"}],
    ]
    budgets, scoped = [], []
    for i in range(n):
        scope = rng.choices(shapes, weights)[0][1]()
        scoped.append(scope.pop("accounts", []))
        period = rng.choices(["monthly", "quarterly", "annual", "custom"], [55, 15, 15, 15])[0]
        dates = {}
        if period == BudgetPeriod.CUSTOM:
            start = today - timedelta(days=rng.randint(1, 120))
            dates = {"start_date": start, "end_date": start + timedelta(days=rng.randint(30, 180))}
        thresholds = default_thresholds() if rng.random() < 0.7 else rng.choice(custom_thresholds)
        budgets.append(
            Budget(
                name=f"bench-{i:06d}",
                amount=Decimal(round(10 ** rng.uniform(2, 6), 2)).quantize(Decimal("0.01")),
                period=period,
                thresholds=[t.as_json() for t in thresholds_parse(thresholds)],
                **dates,
                **scope,
            )
        )
    budgets = Budget.objects.bulk_create(budgets, batch_size=2000)
    Budget.accounts.through.objects.bulk_create(
        (
            Budget.accounts.through(budget_id=b.id, cloudaccount_id=a.id)
            for b, accs in zip(budgets, scoped, strict=True)
            for a in accs
        ),
        batch_size=5000,
    )
    Budget.channels.through.objects.bulk_create(
        (Budget.channels.through(budget_id=b.id, notificationchannel_id=channel.id) for b in budgets), batch_size=5000
    )


def naive_spend(budget, *, today: date):
    """The obvious way, per budget: its accounts, data day, period spend and daily series (four ORM queries)."""
    from django.conf import settings
    from django.db.models import Max, Min, Q, Sum

    from costs_app.models import CostDailyRollup, CostTagRollup
    from costs_app.services.budgets import PeriodSpend, budget_periods, spend_forecast

    lookback = settings.BUDGET_FORECAST_LOOKBACK_DAYS
    account_ids = [a.id for a in budget.accounts.all()]
    freshness = CostDailyRollup.objects.filter(
        day__gte=today - timedelta(days=2 * lookback), day__lte=today + timedelta(days=lookback)
    )
    if account_ids:
        freshness = freshness.filter(account_id__in=account_ids)
    days = freshness.aggregate(first=Min("day"), last=Max("day"))
    model = CostTagRollup if budget.tag_key else CostDailyRollup
    scope = Q(billing_currency=budget.currency)
    for field, values in (
        ("account_id__in", account_ids),
        ("sub_account_id__in", budget.sub_account_ids),
        ("service_name__in", budget.service_names),
        ("region_id__in", budget.region_ids),
    ):
        if values:
            scope &= Q(**{field: values})
    if budget.tag_key:
        scope &= Q(tag_key=budget.tag_key, tag_value__in=budget.tag_values)
    results = []
    for start, end in budget_periods(budget, today, late_days=settings.BUDGET_LATE_DATA_DAYS):
        spend = PeriodSpend(budget=budget, period_start=start, period_end=end)
        actual = model.objects.filter(scope, day__gte=start, day__lt=end).aggregate(total=Sum("billed_cost"))
        spend.actual = actual["total"] or Decimal(0)
        as_of = days["last"]
        if as_of is not None and as_of >= today - timedelta(days=lookback - 1):
            spend.as_of = as_of
            spend.window_start = max(as_of - timedelta(days=lookback - 1), days["first"])
            series = (
                model.objects.filter(scope, day__gte=spend.window_start, day__lte=as_of)
                .values("day")
                .annotate(total=Sum("billed_cost"))
            )
            spend.daily = [Decimal(0)] * ((as_of - spend.window_start).days + 1)
            for row in series:
                spend.daily[(row["day"] - spend.window_start).days] += row["total"]
        forecast = spend_forecast(spend, min_days=settings.BUDGET_FORECAST_MIN_DAYS)
        spend.forecast = forecast.point if forecast is not None else None
        results.append(spend)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=10000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--sample", type=int, default=200, help="budgets the naive baseline runs on")
    parser.add_argument("--repeat", type=int, default=3, help="steady and spend runs (naive: one fewer); best kept")
    parser.add_argument("--today", type=date.fromisoformat, default=date(2025, 11, 20))
    parser.add_argument("--database", default="finops_bench_budgets")
    args = parser.parse_args()

    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "finops.settings",
            "DEBUG": os.environ.get("DEBUG", "1"),
            "DATABASE_URL": _with_db(base_db, args.database),
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
            "BUDGET_DELIVERY_BATCH": str(10 * args.budgets),  # the first run sends everything
            "LOG_LEVEL": "ERROR",
        }
    )
    ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.core import mail
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from costs_app.models import AlertDelivery, Budget, BudgetAlert
    from costs_app.services import budgets as service

    call_command("migrate", verbosity=0)
    mail.outbox = []
    now = datetime(args.today.year, args.today.month, args.today.day, 12, tzinfo=UTC)

    started = time.perf_counter()
    accounts, rollups = generate_data(accounts=args.accounts, today=args.today)
    generate_budgets(args.budgets, accounts=accounts, today=args.today)
    print(f"data: {rollups} rollup rows ({args.accounts} accounts), {args.budgets} budgets "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip

    def timed(fn):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            value = fn()
            return value, time.perf_counter() - start, len(queries)

    def best(fn, times: int):
        runs = [timed(fn) for _ in range(times)]
        return min(runs, key=lambda run: run[1])

    first, first_s, first_q = timed(lambda: service.budgets_check(now=now))
    steady, steady_s, steady_q = best(lambda: service.budgets_check(now=now), args.repeat)
    print(f"first:  {first_s:.2f} s, {first_q} queries: {first.as_dict()}")
    print(
        f"steady: {steady_s:.2f} s (best of {args.repeat}), {steady_q} queries: alerts_created={steady.alerts_created}"
    )
    assert steady.alerts_created == 0 and steady.notifications_sent == 0
    assert first.notifications_sent == len(mail.outbox) > 0
    assert AlertDelivery.objects.filter(status="sent").count() == AlertDelivery.objects.count()

    budgets = list(Budget.objects.order_by("id"))
    spends, spend_s, spend_q = best(lambda: service.budgets_spend(budgets, today=args.today), args.repeat)

    sample = random.Random(7).sample(budgets, min(args.sample, len(budgets)))
    naive, naive_sample_s, naive_q = best(
        lambda: [s for b in sample for s in naive_spend(b, today=args.today)], max(1, args.repeat - 1)
    )
    by_key = {(s.budget.id, s.period_start): s for s in spends}
    agree = 0
    for s in naive:
        mine = by_key[(s.budget.id, s.period_start)]
        same_forecast = (s.forecast is None and mine.forecast is None) or (
            s.forecast is not None and mine.forecast is not None and abs(s.forecast - mine.forecast) < Decimal("0.01")
        )
        if s.actual == mine.actual and same_forecast:
            agree += 1
        else:
            print(f"DISAGREE budget {s.budget.name}: naive {s.actual}/{s.forecast} vs {mine.actual}/{mine.forecast}")
    naive_s = naive_sample_s * len(budgets) / len(sample)
    print(f"spend:  {spend_s:.2f} s, {spend_q} queries ({len(spends)} budget periods)")
    print(f"naive:  {naive_sample_s:.2f} s, {naive_q} queries for {len(sample)} budgets; {naive_s:.1f} s for "
          f"{len(budgets)}; agrees with the set-based result on {agree}/{len(naive)} budget periods")  # fmt: skip
    assert agree == len(naive), "the set-based and the naive results differ"
    print(
        f"budgets budgets={args.budgets} periods={len(spends)} rollup_rows={rollups}"
        f" alerts={BudgetAlert.objects.count()}"
        f" queries={steady_q} first_seconds={first_s:.2f} seconds={steady_s:.2f} spend_seconds={spend_s:.2f}"
        f" baseline_naive_seconds={naive_s:.1f} ratio={steady_s / naive_s:.3f}"
    )


if __name__ == "__main__":
    main()
