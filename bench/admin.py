"""Server time of every admin list and dashboard page with N cost lines loaded, against a COUNT(*) of those lines.

    .venv/bin/python bench/admin.py                  # 5,000,000 lines
    .venv/bin/python bench/admin.py --rows 1000000 --repeat 2

1. Loads N generated FOCUS lines through the project's import path (`focus_file_import`: COPY, daily and tag
   rollups) into 24 accounts of skewed sizes (account k gets a share ∝ 1/k: one account holds about a quarter
   of the lines, the smallest a few thousand), each file from bench/ingest.py's generator with its own seed
   (40 sub-accounts, 16 services, 8 regions, ~N/400 resources, three tag keys), cached under .data/bench/admin/.
   Loading is skipped when the database already holds those N lines: a second run re-times the pages only
   (after migrating the database, so new migrations apply to the loaded data).
2. Discovers the pages: every ModelAdmin registered on admin.site — its changelist, with `?_facets=True`
   ("show counts"), sorted by its first column descending, and filtered on the largest account when the model
   has an `account` field — every parameterless URL of the admin (index, control room, dashboards, whatever
   other code registered) and every parameterless URL under /api/v1/dashboards/; and the spend and tag JSON over
   the loaded data (its month, and 400 days ending on its last day; the defaults show the last 30 days only).
3. Requests each page with Django's test Client as a logged-in superuser, in this process, timing the request
   (server time: no network, no browser) and counting its SQL queries; best of --repeat. A page whose SQL runs
   past --page-timeout (default 60 s) has its SQL cancelled and is shown with status 0.
4. Baseline, measured in the same run: `SELECT count(*)` of the cost line table; each page's ratio to it.

It uses the server of DATABASE_URL with a database of its own (`finops_bench_admin`, created and migrated when
missing); it never touches a running system's data. The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.ingest import admin_url, generate, with_database  # noqa: E402

DATABASE = "finops_bench_admin"
CACHE = ROOT / ".data" / "bench" / "admin"
ACCOUNTS = 24
SKIP_NAMES = re.compile(r"(^|_)(add|logout|password_change|password_change_done|jsi18n|autocomplete)$")


def shares(rows: int, accounts: int) -> list[int]:
    """Each account a small base, the rest shared ∝ 1/k: account 1 holds about a quarter of the lines."""
    base = min(1000, rows // (2 * accounts))
    weights = [1 / (k + 1) for k in range(accounts)]
    sizes = [base + int((rows - base * accounts) * w / sum(weights)) for w in weights]
    sizes[0] += rows - sum(sizes)
    return sizes


def prepare_database(base_url: str, env: dict, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url(base_url), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True, cwd=ROOT)


def load(rows: int) -> float:
    """Make the database hold exactly the N generated lines; returns the seconds spent loading (0 if there)."""
    from django.db import connection

    from costs_app.models import CostLineItem
    from costs_app.services.ingest import cost_allocation_tags_activate, focus_file_import
    from providers_app.models import CloudAccount, Provider, Team

    if CostLineItem.objects.count() == rows and CloudAccount.objects.filter(name__startswith="bench-").count():
        print(f"the database already holds {rows:,} lines: not reloaded")
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE costs_app_costlineitem, costs_app_costdailyrollup, costs_app_costtagrollup")
    CloudAccount.objects.filter(name__startswith="bench-").delete()
    cost_allocation_tags_activate(keys=["team", "env", "cost-center"])
    team, _ = Team.objects.get_or_create(name="Default")
    started = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    for k, size in enumerate(shares(rows, ACCOUNTS)):
        path = CACHE / f"account-{k:02d}-{size}.csv.gz"
        if not path.exists():
            generate(path, size, seed=100 + k)
        account = CloudAccount.objects.create(
            name=f"bench-{k:02d}", provider=Provider.FOCUS, external_id=f"bench{k}", team=team, settings={}
        )
        focus_file_import(account=account, path=str(path))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    seconds = time.perf_counter() - started
    print(f"loaded {rows:,} lines into {ACCOUNTS} accounts in {seconds:.1f} s (generation included)")
    return seconds


def parameterless(patterns, prefix: str = "") -> list[tuple[str, str]]:
    """(path, name) of every URL pattern that takes no argument, depth first."""
    from django.urls import URLPattern, URLResolver
    from django.urls.resolvers import RoutePattern

    found = []
    for p in patterns:
        if isinstance(p.pattern, RoutePattern):
            route = str(p.pattern)
            if "<" in route:
                continue
        else:
            regex = p.pattern.regex.pattern
            if re.search(r"[(\[*+?]", regex.replace("\\.", "")):
                continue
            route = regex.lstrip("^").rstrip("$").replace("\\", "")
        if isinstance(p, URLResolver):
            namespace = p.namespace or ""
            found += [
                (path, f"{namespace}:{name}" if namespace and name else name)
                for path, name in parameterless(p.url_patterns, prefix + route)
            ]
        elif isinstance(p, URLPattern):
            found.append((prefix + route, p.name or ""))
    return found


def data_dashboards() -> list[str]:
    """The dashboards' JSON over the loaded data (their defaults show the last 30 days, where the generated month
    may not be): the data's month, and 400 days (the longest period allowed) ending on its last day."""
    from datetime import timedelta

    from django.db.models import Max, Min

    from costs_app.models import CostDailyRollup

    span = CostDailyRollup.objects.aggregate(first=Min("day"), last=Max("day"))
    if span["last"] is None:
        return []
    first, last = span["first"], span["last"]
    year = last - timedelta(days=399)
    spend = "/api/v1/dashboards/spend/"
    return [
        f"{spend}?date_from={first}&date_to={last}",
        f"{spend}?date_from={first}&date_to={last}&group_by=account",
        f"{spend}?date_from={year}&date_to={last}",
        f"{spend}?date_from={year}&date_to={last}&group_by=account",
        f"{spend}tags/?date_from={first}&date_to={last}",
        f"{spend}tags/?date_from={year}&date_to={last}",
    ]


def pages(biggest_account_id: int) -> list[str]:
    from django.contrib import admin
    from django.urls import get_resolver, reverse

    urls = []
    for model, model_admin in admin.site._registry.items():
        base = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        urls += [base, f"{base}?_facets=True"]
        if model_admin.list_display and model_admin.list_display[0] != "action_checkbox":
            urls.append(f"{base}?o=-1")
        if any(f.name == "account" for f in model._meta.get_fields()):
            urls.append(f"{base}?account__id__exact={biggest_account_id}")
    changelists = {u for u in urls if "?" not in u}
    for path, name in parameterless(get_resolver().url_patterns):
        url = "/" + path
        admin_page = url.startswith("/admin/") and url not in changelists
        if (admin_page and not SKIP_NAMES.search(name.split(":")[-1])) or url.startswith("/api/v1/dashboards/"):
            urls.append(url)
    return list(dict.fromkeys(urls + data_dashboards()))


class PageDeadline:
    """Cancels the page's SQL (pg_cancel_backend, from a second connection) once it has run `seconds`, and keeps
    cancelling until the request ends: one page cannot hold the run for minutes, however many queries it makes."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False

    def __enter__(self):
        import threading

        import psycopg
        from django.db import connection

        connection.ensure_connection()
        pid = connection.connection.info.backend_pid
        url = os.environ["DATABASE_URL"]
        self.done = threading.Event()

        def watch() -> None:
            if self.done.wait(self.seconds):
                return
            self.fired = True
            with psycopg.connect(url, autocommit=True) as conn:
                while not self.done.wait(0.2):
                    conn.execute("SELECT pg_cancel_backend(%s)", [pid])

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def measure(client, url: str, repeat: int, timeout: float) -> tuple[float, int, int]:
    """Best server time of `repeat` requests, its query count and status; a page still running after `timeout`
    seconds has its SQL cancelled and is reported with status 0 and the time it had taken."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    best, queries, status = float("inf"), 0, 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as ctx, PageDeadline(timeout) as deadline:
            started = time.perf_counter()
            try:
                response = client.get(url)
            except Exception as exc:  # the cancelled statement, raised through the test client
                seconds = time.perf_counter() - started
                why = "cut at the page timeout" if deadline.fired else f"{type(exc).__name__}: {exc}"
                print(f"         {url}: {why.splitlines()[0][:120]}")
                return seconds, len(ctx.captured_queries), 0
            seconds = time.perf_counter() - started
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
        best, queries, status = min(best, seconds), len(ctx.captured_queries), response.status_code
    return best, queries, status


def count_baseline(repeat: int) -> float:
    from django.db import connection

    best = float("inf")
    with connection.cursor() as cursor:
        for _ in range(repeat + 3):  # the first ones warm the cache
            started = time.perf_counter()
            cursor.execute("SELECT count(*) FROM costs_app_costlineitem")
            cursor.fetchone()
            best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="cost lines loaded (default 5,000,000)")
    parser.add_argument("--repeat", type=int, default=2, help="requests per page, best kept (default 2)")
    parser.add_argument("--database", default=DATABASE, help=f"database of its own (default {DATABASE})")
    parser.add_argument("--page-timeout", type=float, default=60.0, help="seconds after which a page is cut")
    args = parser.parse_args()
    if args.rows < 100 * ACCOUNTS:
        parser.error(f"--rows must be at least {100 * ACCOUNTS}")
    base_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    env = {**os.environ, "DATABASE_URL": with_database(base_url, args.database), "DB_POOL": "false"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    env.setdefault("LOG_LEVEL", "WARNING")
    env.setdefault("DEBUG", "1")  # the dev secrets' defaults; queries are captured explicitly either way
    prepare_database(base_url, env, args.database)
    os.environ.update(env)
    import django

    django.setup()
    import logging

    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.test import Client
    from django.test.utils import setup_test_environment

    from providers_app.models import CloudAccount

    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a timed-out page is reported in one line
    load_seconds = load(args.rows)
    setup_test_environment()  # 'testserver' allowed, the locmem mail backend: nothing leaves this process
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    biggest = CloudAccount.objects.annotate(n=Count("daily_costs")).order_by("-n").values_list("id", flat=True)[0]
    baseline = count_baseline(args.repeat)
    print(f"baseline SELECT count(*) of {args.rows:,} cost lines: {baseline:.3f} s")
    print(f"{'seconds':>8} {'ratio':>7} {'queries':>7} {'status':>6}  page")
    results = []
    for url in pages(biggest):
        seconds, queries, status = measure(client, url, args.repeat, args.page_timeout)
        results.append((seconds, url, status))
        flag = "  > 1 s" if seconds > 1 else ""
        print(f"{seconds:8.3f} {seconds / baseline:7.2f} {queries:7d} {status:6d}  {url}{flag}", flush=True)
    slowest = max(results)
    over = [url for seconds, url, _ in results if seconds > 1]
    errors = [url for _, url, status in results if status >= 500 or status == 0]
    print(f"{len(over)} page(s) over 1 s: {', '.join(over) or 'none'}")
    print(
        f"rows={args.rows} pages={len(results)} baseline_count_seconds={baseline:.4f} load_seconds={load_seconds:.1f} "
        f"pages_over_1s={len(over)} server_errors={len(errors)} "
        f"slowest_page_ratio={slowest[0] / baseline:.2f} slowest_page_seconds={slowest[0]:.3f} "
        f"slowest_page={slowest[1]}"
    )


if __name__ == "__main__":
    main()
