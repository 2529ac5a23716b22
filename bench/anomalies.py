"""Anomaly detection quality and speed on labelled synthetic series.

    python bench/anomalies.py --series 10000            # --days 180 --seed 7 --naive-sample 200

Generates N daily cost series of `--days` days (default 180), each with a level (log-uniform $20–$20,000
a day), a trend (−0.1 %/day … +0.2 %/day), a weekly pattern (most series: weekends at 40–90 % of a
weekday; the rest a mild ±5 % weekday profile or none) and multiplicative Gaussian noise (0.5–3 %; see
`--noise`), then injects one kind of labelled event per series:

- spike:       one to two 1–2-day jumps of +50 % … +300 % over the underlying value;
- level_shift: from one day on, the series is +30 % … +150 % higher for good;
- drift:       for 30–60 days the series grows 0.5 … 2 % a day, compounding, then stays there;
- quiet:       nothing (trend, weekly pattern and noise only).

It runs `costs_app.services.anomaly_detector.series_evaluate` — the function `detect_cost_anomalies`
calls — on the whole N × days matrix at once (every day after the first baseline window is judged), with
the project's settings (ANOMALY_BASELINE_DAYS, ANOMALY_SCORE_THRESHOLD, ANOMALY_MIN_IMPACT,
ANOMALY_MIN_IMPACT_PERCENT, ANOMALY_MERGE_GAP_DAYS as finops/settings.py reads them).

Scoring is per event, the way the service stores anomalies: consecutive flagged days of a series form one
alert (one record). An alert is a true positive when it overlaps the event's window — the spike's days; a
level shift's first baseline-length days (after that the shift is the new normal); a drift's days plus one
baseline length — and a false positive otherwise. Recall = events with at least one alert / events;
precision = true-positive alerts / alerts on series of that kind. Alerts on quiet series are counted apart.

Baseline, measured in the same run: the same statistics computed the obvious way — a Python loop over the
series and days of a sample (`--naive-sample`), NumPy per window — extrapolated to N series; the flags of
the sample must be identical to the vectorised ones.

Then the production path on the same series (skip with --no-task): they are loaded as the account × service
rollups of N/20 accounts into a database of its own on the server of DATABASE_URL (`finops_bench_anomalies`,
created and migrated if missing, emptied at each run), and `anomalies_detect` — the body of the task
`detect_cost_anomalies` — runs as scheduled: it judges the last ANOMALY_LOOKBACK_DAYS of every account for
the two default monitors, stores anomalies and root causes; a second run must change nothing, and the
service anomalies must hold exactly the days the vectorised pass flagged. The last line is the figures as
key=value pairs.
"""

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costs_app.services import anomaly_detector as detector  # noqa: E402

KINDS = ("spike", "level_shift", "drift", "quiet")
SHARES = (0.25, 0.25, 0.15, 0.35)


@dataclass
class Labelled:
    costs: np.ndarray  # (N, days)
    kind: np.ndarray  # (N,) index into KINDS
    noise: np.ndarray  # (N,) relative noise sd
    # (series, kind, first day, last day of the window in which an alert counts, size: the spike's or shift's
    # relative height, the drift's daily rate)
    events: list


def setup_django(database: str) -> None:
    """Django on the server of DATABASE_URL, in a database of its own (created if missing), dev defaults."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finops")
    parts = urlsplit(base)
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{database}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    import django

    django.setup()


def project_settings() -> dict:
    """The detector's settings as the project reads them (finops/settings.py: environment, .env, defaults)."""
    from django.conf import settings

    return {
        "baseline_days": settings.ANOMALY_BASELINE_DAYS,
        "score_threshold": settings.ANOMALY_SCORE_THRESHOLD,
        "min_impact": settings.ANOMALY_MIN_IMPACT,
        "min_impact_percent": settings.ANOMALY_MIN_IMPACT_PERCENT,
        "gap": settings.ANOMALY_MERGE_GAP_DAYS,
        "lookback": settings.ANOMALY_LOOKBACK_DAYS,
    }


def generate(n: int, days: int, seed: int, noise: tuple[float, float], baseline: int) -> Labelled:
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    kind = rng.choice(len(KINDS), size=n, p=SHARES)
    level = np.exp(rng.uniform(np.log(20), np.log(20_000), n))
    trend = rng.uniform(-0.001, 0.002, n)
    base = level[:, None] * np.exp(trend[:, None] * t[None, :])

    # Weekly pattern, aligned to a random weekday for day 0.
    weekday = (t[None, :] + rng.integers(0, 7, n)[:, None]) % 7
    pattern = rng.choice(3, size=n, p=(0.6, 0.25, 0.15))  # weekend dip, mild profile, none
    weekend = rng.uniform(0.4, 0.9, n)
    mild = 1 + rng.uniform(-0.05, 0.05, (n, 7))
    season = np.ones((n, days))
    season = np.where((pattern[:, None] == 0) & (weekday >= 5), weekend[:, None], season)
    season = np.where(pattern[:, None] == 1, np.take_along_axis(mild, weekday, axis=1), season)

    sd = rng.uniform(*noise, n)
    costs = base * season
    events = []
    first = baseline + 7  # events start after a clean first baseline
    for i in np.nonzero(kind == 0)[0]:  # spikes
        for _ in range(rng.integers(1, 3)):
            start = int(rng.integers(first, days - 2))
            length = int(rng.integers(1, 3))
            height = rng.uniform(0.5, 3.0)
            costs[i, start : start + length] *= 1 + height
            events.append((i, 0, start, start + length - 1, height))
    for i in np.nonzero(kind == 1)[0]:  # level shifts
        start = int(rng.integers(first, days - 5))
        height = rng.uniform(0.3, 1.5)
        costs[i, start:] *= 1 + height
        events.append((i, 1, start, start + baseline - 1, height))
    for i in np.nonzero(kind == 2)[0]:  # slow drifts
        start = int(rng.integers(first, days - 30))
        length = int(rng.integers(30, 61))
        rate = rng.uniform(0.005, 0.02)
        growth = np.clip(t - start + 1, 0, length)
        costs[i] *= (1 + rate) ** growth
        events.append((i, 2, start, min(days - 1, start + length + baseline - 1), rate))
    costs *= 1 + sd[:, None] * rng.standard_normal((n, days))
    return Labelled(costs=np.round(np.maximum(costs, 0), 2), kind=kind, noise=sd, events=events)


def score(data: Labelled, runs: list[tuple[int, int, int]]) -> dict:
    windows: dict[int, list[tuple[int, int]]] = {}
    for series, _, lo, hi, _ in data.events:
        windows.setdefault(series, []).append((lo, hi))
    detected = set()
    alerts = {k: [0, 0] for k in range(len(KINDS))}  # kind -> [true positive alerts, all alerts]
    for series, lo, hi in runs:
        kind = int(data.kind[series])
        alerts[kind][1] += 1
        hits = [(a, b) for a, b in windows.get(series, []) if lo <= b and hi >= a]
        if hits:
            alerts[kind][0] += 1
            detected.update((series, a) for a, _ in hits)
    out = {}
    for k, name in enumerate(KINDS[:-1]):
        events = [(s, a) for s, kind, a, _, _ in data.events if kind == k]
        recall = sum((s, a) in detected for s, a in events) / len(events) if events else 1.0
        tp, total = alerts[k]
        precision = tp / total if total else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        n_detected = sum((s, a) in detected for s, a in events)
        out[name] = {
            "events": len(events),
            "alerts": total,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "alerts_per_detected_event": tp / n_detected if n_detected else 0.0,
        }
    quiet = 3
    out["quiet"] = {"series": int((data.kind == quiet).sum()), "alerts": alerts[quiet][1]}
    bands = {}
    for lo, hi in ((0.005, 0.01), (0.01, 0.015), (0.015, 0.02)):
        events = [(s, a) for s, kind, a, _, rate in data.events if kind == 2 and lo <= rate < hi]
        bands[f"{lo:.1%}-{hi:.1%}/day"] = (sum((s, a) in detected for s, a in events), len(events))
    out["drift_by_rate"] = bands
    return out


def naive_flags(costs: np.ndarray, first_column: int, cfg: dict) -> np.ndarray:
    """The same method written the obvious way: per series, per day, NumPy on one window at a time."""
    baseline, weeks = cfg["baseline_days"], cfg["baseline_days"] // 7
    plain_mad_k, plain_mean_k = detector._calibration(baseline, False)
    weekly_mad_k, weekly_mean_k = detector._calibration(baseline, True)
    flags = np.zeros((costs.shape[0], costs.shape[1] - first_column), dtype=bool)

    def floored(sigma: float, expected: float) -> float:
        return max(sigma, detector.MIN_RELATIVE_SIGMA * abs(expected), detector.ABSOLUTE_SIGMA_FLOOR)

    for s in range(costs.shape[0]):
        for t in range(first_column, costs.shape[1]):
            window = costs[s, t - baseline : t]
            plain = np.median(window)
            plain_residuals = np.abs(window - plain)
            by_week = window.reshape(weeks, 7)
            offset = np.median(by_week - np.median(by_week, axis=1, keepdims=True), axis=0)
            deseasoned = by_week - offset
            level = np.median(deseasoned)
            weekly_residuals = np.abs(deseasoned - level)
            weekly_expected = level + offset[0]
            keep = baseline - max(1, round(detector.TRIM * baseline))
            plain_fit = floored(plain_mean_k * np.sort(plain_residuals)[:keep].mean(), plain)
            weekly_fit = floored(weekly_mean_k * np.sort(weekly_residuals.ravel())[:keep].mean(), weekly_expected)
            if weekly_fit < detector.WEEKLY_GAIN * plain_fit:
                expected = weekly_expected
                sigma = weekly_mad_k * np.median(weekly_residuals) * detector.MAD_TO_SIGMA
            else:
                expected = plain
                sigma = plain_mad_k * np.median(plain_residuals) * detector.MAD_TO_SIGMA
            sigma = floored(sigma, expected)
            impact = costs[s, t] - expected
            percent_ok = expected <= 0 or impact * 100 >= cfg["min_impact_percent"] * expected
            flags[s, t - first_column] = (
                impact / sigma >= cfg["score_threshold"] and impact >= cfg["min_impact"] and impact > 0 and percent_ok
            )
    return flags


def task_stage(data: Labelled, flags: np.ndarray, cfg: dict, services_per_account: int) -> dict:
    """The production path on the same series: rollups in PostgreSQL, then `anomalies_detect` as the task runs it.

    The series become the account × service rollups of N / services_per_account accounts (the last two
    baselines plus the lookback of days: what a run reads and a little more). The run judges each account's
    last ANOMALY_LOOKBACK_DAYS days for the two default monitors (accounts, services); its service anomalies
    must cover exactly the days the vectorised pass flagged in those columns.
    """
    from django.core.management import call_command
    from django.db import connection

    from costs_app.models import Anomaly, AnomalyMonitor
    from costs_app.services.anomalies import anomalies_detect
    from providers_app.models import CloudAccount

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:  # the bench's own database only
        cursor.execute(
            "TRUNCATE costs_app_anomaly, costs_app_anomalymonitor, costs_app_costdailyrollup, "
            "providers_app_cloudaccount CASCADE"
        )
    monitors = {
        "account": AnomalyMonitor.objects.create(name="Accounts", dimension="account"),
        "service": AnomalyMonitor.objects.create(name="Services per account", dimension="service"),
    }
    n_series, n_days = data.costs.shape
    n_accounts = -(-n_series // services_per_account)
    accounts = CloudAccount.objects.bulk_create(
        CloudAccount(provider="focus", name=f"bench-{i:05d}", external_id=f"{i:012d}") for i in range(n_accounts)
    )
    keep = 2 * cfg["baseline_days"] + cfg["lookback"]
    last_day = date(2024, 6, 30)
    first_kept = n_days - keep
    buffer = io.StringIO()
    for i in range(n_series):
        account = accounts[i // services_per_account].pk
        for col in range(first_kept, n_days):
            day = last_day - timedelta(days=n_days - 1 - col)
            cost = f"{data.costs[i, col]:.2f}"
            buffer.write(
                f"{account}\t{day}\t{day.replace(day=1)} 00:00:00+00\tservice-{i % services_per_account:03d}\tCompute\t"
                f"\tus-east-1\tUSD\t{cost}\t{cost}\t{cost}\t1\n"
            )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        with cursor.copy(
            "COPY costs_app_costdailyrollup (account_id, day, billing_period_start, service_name, service_category, "
            "sub_account_id, region_id, billing_currency, billed_cost, effective_cost, list_cost, line_count) "
            "FROM STDIN"
        ) as copy:
            copy.write(buffer.getvalue())
        cursor.execute("ANALYZE costs_app_costdailyrollup")
    load_seconds = time.perf_counter() - started
    now = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(hours=6)

    started = time.perf_counter()
    first = anomalies_detect(now=now)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = anomalies_detect(now=now)
    again_seconds = time.perf_counter() - started
    if (again.created, again.updated) != (0, 0):
        raise SystemExit(f"a re-run changed anomalies: {again.as_dict()}")

    # The task's service anomalies hold exactly the days the vectorised pass flagged in the judged columns.
    offset = n_days - flags.shape[1]
    judged_from = n_days - cfg["lookback"]
    expected_days = {
        (int(i), last_day - timedelta(days=n_days - 1 - (int(col) + offset)))
        for i, col in zip(*np.nonzero(flags), strict=True)
        if col + offset >= judged_from
    }
    account_index = {a.pk: i for i, a in enumerate(accounts)}
    stored_days = {
        (
            account_index[anomaly.account_id] * services_per_account + int(anomaly.dimension_value.split("-")[1]),
            date.fromisoformat(day["day"]),
        )
        for anomaly in Anomaly.objects.filter(monitor=monitors["service"])
        for day in anomaly.days
    }
    if stored_days != expected_days:
        raise SystemExit(f"the task and the vectorised pass disagree on {len(stored_days ^ expected_days)} days")
    return {
        "accounts": n_accounts,
        "rows": n_series * keep,
        "load_seconds": load_seconds,
        "series": first.series,
        "points": first.points_evaluated,
        "created": first.created,
        "seconds": first_seconds,
        "again_seconds": again_seconds,
        "service_days": len(stored_days),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, nargs=2, default=(0.005, 0.03), metavar=("MIN", "MAX"))
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="time the detector this many times, keep the best")
    parser.add_argument("--no-task", action="store_true", help="skip the stage through the database")
    parser.add_argument("--services-per-account", type=int, default=20)
    parser.add_argument("--database", default="finops_bench_anomalies")
    args = parser.parse_args()
    setup_django(args.database)
    cfg = project_settings()
    baseline = cfg["baseline_days"]

    data = generate(args.series, args.days, args.seed, tuple(args.noise), baseline)
    first_column = baseline
    kwargs = {k: cfg[k] for k in ("baseline_days", "score_threshold", "min_impact", "min_impact_percent")}
    detector._calibration(baseline, False), detector._calibration(baseline, True)

    timings, cpu = [], []
    for _ in range(args.repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = detector.series_evaluate(data.costs, first_column=first_column, **kwargs)
        timings.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    seconds = min(timings)
    cpu_seconds = min(cpu)
    runs = [(r, a + first_column, b + first_column) for r, a, b in detector.flagged_runs(result.flags, gap=cfg["gap"])]
    figures = score(data, runs)

    sample = min(args.naive_sample, args.series)
    started, cpu_started = time.perf_counter(), time.process_time()
    naive = naive_flags(data.costs[:sample], first_column, cfg)
    naive_seconds = (time.perf_counter() - started) * args.series / sample
    naive_cpu_seconds = (time.process_time() - cpu_started) * args.series / sample
    if not np.array_equal(naive, result.flags[:sample]):
        raise SystemExit("the naive loop and the vectorised detector disagree on the sample")

    task = None if args.no_task else task_stage(data, result.flags, cfg, args.services_per_account)

    points = args.series * (args.days - first_column)
    print(
        f"settings: baseline {baseline} days, score >= {cfg['score_threshold']}, impact >= {cfg['min_impact']} "
        f"and >= {cfg['min_impact_percent']} %, merge gap {cfg['gap']} days; noise {args.noise[0]:.1%}-"
        f"{args.noise[1]:.1%}; seed {args.seed}"
    )
    print(f"judged: {args.series} series x {args.days - first_column} days = {points} points")
    print(f"{'kind':<12} {'events':>7} {'alerts':>7} {'precision':>9} {'recall':>7} {'f1':>6} {'alerts/event':>12}")
    for name in KINDS[:-1]:
        f = figures[name]
        print(
            f"{name:<12} {f['events']:>7} {f['alerts']:>7} {f['precision']:>9.3f} {f['recall']:>7.3f} "
            f"{f['f1']:>6.3f} {f['alerts_per_detected_event']:>12.2f}"
        )
    quiet = figures["quiet"]
    print(f"{'quiet':<12} {quiet['series']:>7} series, {quiet['alerts']} alerts")
    print(
        "drift recall by growth rate: "
        + ", ".join(f"{band} {hit}/{n} ({hit / n:.0%})" for band, (hit, n) in figures["drift_by_rate"].items() if n)
    )
    print(
        f"vectorised: {seconds:.2f} s for {args.series} series (best of {args.repeat}: "
        + ", ".join(f"{s:.2f}" for s in timings)
        + f"; CPU {cpu_seconds:.2f} s); {seconds * 10_000 / args.series:.2f} s per 10,000 series"
    )
    print(
        f"naive loop: {naive_seconds / args.series * sample:.2f} s for a sample of {sample} series, "
        f"{naive_seconds:.1f} s extrapolated to {args.series} (CPU {naive_cpu_seconds:.1f} s); same flags on the sample"
    )
    if task:
        print(
            f"task path: {task['rows']} rollup rows of {task['accounts']} accounts loaded in "
            f"{task['load_seconds']:.1f} s; "
            f"anomalies_detect judged {task['series']} series ({task['points']} points, the last "
            f"{cfg['lookback']} days) in {task['seconds']:.2f} s, created {task['created']} anomalies; "
            f"re-run {task['again_seconds']:.2f} s, nothing changed; service anomalies = the flagged days "
            f"({task['service_days']})"
        )
    task_figures = f" task_seconds={task['seconds']:.2f} task_series={task['series']}" if task else ""
    print(
        f"anomalies series={args.series} days={args.days} f1_spike={figures['spike']['f1']:.3f} "
        f"f1_level_shift={figures['level_shift']['f1']:.3f} f1_drift={figures['drift']['f1']:.3f} "
        f"recall_drift={figures['drift']['recall']:.3f} quiet_alerts={quiet['alerts']} seconds={seconds:.2f} "
        f"seconds_per_10k={seconds * 10_000 / args.series:.2f} cpu_seconds={cpu_seconds:.2f} "
        f"naive_seconds={naive_seconds:.1f} ratio={naive_seconds / seconds:.1f} "
        f"cpu_ratio={naive_cpu_seconds / cpu_seconds:.1f}{task_figures}"
    )


if __name__ == "__main__":
    main()
