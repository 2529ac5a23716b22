"""Anomaly detection judged on data the detector was not built on, by replaying the daily schedule.

    python bench/anomalies.py                      # --series 10000 --days 180 --seed 7 --task-accounts 10

**Data** (`generate`): N daily cost series (accounts of 10 series), each built from parts the detector
does not model the way they were made:
- a level (log-uniform $30–$20,000 a day) and a compounding trend of −0.3 … +0.3 %/day;
- a weekly shape: 50 % of series a weekend dip of 5–35 %, 20 % a business profile (each weekday ±10 %),
  30 % flat; the weekday of day 0 is random;
- day-to-day multiplicative noise with a standard deviation of 3–10 % (uniform), drawn from a Gaussian
  (40 %), a Student-t with 4 degrees of freedom (30 %) or a Laplace (30 %), each scaled to that standard
  deviation (the t and Laplace are heavy-tailed: the same sd, far more days beyond 3 sd);
- 20 % of series a charge on the first day of every month of 0.3–3 × the day's level (support plans,
  subscriptions), ±5 % from month to month;
- 15 % of series 1–4 missing days (no cost at all that day), 10 % one refund or credit (a day of
  −0.5 … −3 × the level), 10 % start mid-window (days 10–100; nothing before);
- one kind of labelled event per series: **spike** (25 %: one or two single days at 2.5–5 × the value),
  **level shift** (25 %: from one day on, 1.8–2.6 × for good), **slow drift** (10 %: 0.3–1 %/day,
  compounding, for 20–60 days, then flat), or none (**quiet**, 40 %).

Slow drifts are labelled *not anomalous* (creeping spend is for the budget forecast, not a day-to-day
alarm) and their series are kept out of the precision and quiet-day figures: their alerts are reported
on their own line, per 1,000 drift-series days.

**Replay**: one detection run per simulated day, as the schedule runs it: the run of day d sees the data up
to d and judges d (`series_evaluate`, the core `detect_cost_anomalies` calls, with the project's settings),
a series only from its account's first day + the baseline. Flagged days at most ANOMALY_MERGE_GAP_DAYS
apart are one alert (one `Anomaly` record: an open one grows). A run judges the last ANOMALY_LOOKBACK_DAYS
in production; on a sample the bench re-judges those days in each run and checks that the verdicts
equal those of the day's own run (the data do not change afterwards, and the core looks only backwards),
so one judged day per run is the same replay. With `--task-accounts K` (default 10), K accounts (10 K series)
are loaded as rollup rows into PostgreSQL (`finops_bench_anomalies`, its own database) and `anomalies_detect`
— the body of the task — runs once per simulated day; its service anomalies must hold exactly the
replay's flagged days.

**Scoring**, per alert: a true positive when it overlaps an event's window (a spike's day; a level shift's
first baseline-length days, after which the shift is the new normal), else a false alert.
precision_K = true alerts on K series / alerts on K series; recall_K = events with a true alert / events;
days_to_detect = first flagged day in the event's window − its first day; false alerts per 1,000 quiet
days = false alerts on non-drift series / their judged days outside event windows. `seconds` = the whole
replay of N series (one core call per simulated day); the last line is the figures as key=value pairs.

**Baseline, same run**: the detector as it was before issue 12 (bench/previous_anomaly_detector.py, verbatim,
with its 3.5 threshold) replayed on the same data and scored the same way.
"""

import argparse
import inspect
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

import previous_anomaly_detector  # noqa: E402

from costs_app.services import anomaly_detector  # noqa: E402

KINDS = ("spike", "level_shift", "drift", "quiet")
SHARES = (0.25, 0.25, 0.10, 0.40)
SPIKE, SHIFT, DRIFT, QUIET = range(4)
SERIES_PER_ACCOUNT = 10
FIRST_DAY = date(2026, 1, 1)
NOISE_KINDS = ("gauss", "t4", "laplace")


@dataclass
class Labelled:
    costs: np.ndarray  # (N, days)
    kind: np.ndarray  # (N,) index into KINDS
    noise: np.ndarray  # (N,) sd of the day-to-day factor
    noise_kind: np.ndarray  # (N,) index into NOISE_KINDS
    start: np.ndarray  # (N,) first day with spend
    features: dict  # name -> (N, days) bool: month-start charge, missing, refund days
    events: list  # (series, kind, first day, last day of the window in which an alert counts)


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
    from django.conf import settings

    return {
        "baseline_days": settings.ANOMALY_BASELINE_DAYS,
        "score_threshold": settings.ANOMALY_SCORE_THRESHOLD,
        "min_impact": settings.ANOMALY_MIN_IMPACT,
        "min_impact_percent": settings.ANOMALY_MIN_IMPACT_PERCENT,
        "gap": settings.ANOMALY_MERGE_GAP_DAYS,
        "lookback": settings.ANOMALY_LOOKBACK_DAYS,
    }


def _noise(rng: np.random.Generator, kind: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit-variance draws per row: Gaussian, Student-t(4) or Laplace."""
    gauss = rng.standard_normal(shape)
    t4 = rng.standard_t(4, shape) / np.sqrt(2.0)  # var(t_4) = 2
    laplace = rng.laplace(0.0, 1 / np.sqrt(2.0), shape)  # var = 2 b²
    return np.where(kind[:, None] == 0, gauss, np.where(kind[:, None] == 1, t4, laplace))


def generate(n: int, days: int, seed: int, baseline: int) -> Labelled:
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    dates = [FIRST_DAY + timedelta(days=int(i)) for i in t]
    month_start = np.array([d.day == 1 for d in dates])
    kind = rng.choice(4, size=n, p=SHARES)
    level = np.exp(rng.uniform(np.log(30), np.log(20_000), n))
    trend = rng.uniform(-0.003, 0.003, n)
    underlying = level[:, None] * np.exp(trend[:, None] * t[None, :])

    weekday = (t[None, :] + rng.integers(0, 7, n)[:, None]) % 7
    shape = rng.choice(3, size=n, p=(0.5, 0.2, 0.3))
    dip = rng.uniform(0.05, 0.35, n)
    profile = 1 + rng.uniform(-0.1, 0.1, (n, 7))
    season = np.ones((n, days))
    season = np.where((shape[:, None] == 0) & (weekday >= 5), 1 - dip[:, None], season)
    season = np.where(shape[:, None] == 1, np.take_along_axis(profile, weekday, axis=1), season)
    underlying *= season

    sd = rng.uniform(0.03, 0.10, n)
    noise_kind = rng.choice(3, size=n, p=(0.4, 0.3, 0.3))
    factor = np.maximum(1 + sd[:, None] * _noise(rng, noise_kind, (n, days)), 0.2)

    start = np.where(rng.random(n) < 0.10, rng.integers(10, 101, n), 0)
    events = []
    event_days = np.zeros((n, days), dtype=bool)  # days an event owns: no missing day or refund on them
    multiplier = np.ones((n, days))
    for i in np.nonzero(kind == SPIKE)[0]:
        first = start[i] + baseline + 7
        for day in sorted(set(rng.integers(first, days, rng.integers(1, 3)).tolist())):
            multiplier[i, day] *= rng.uniform(2.5, 5.0)
            events.append((int(i), SPIKE, day, day))
            event_days[i, day] = True
    for i in np.nonzero(kind == SHIFT)[0]:
        day = int(rng.integers(start[i] + baseline + 7, days))
        multiplier[i, day:] *= rng.uniform(1.8, 2.6)
        events.append((int(i), SHIFT, day, min(days - 1, day + baseline - 1)))
        event_days[i, day : day + 7] = True
    for i in np.nonzero(kind == DRIFT)[0]:
        day = int(rng.integers(start[i] + baseline + 7, days - 20))
        growth = np.clip(t - day + 1, 0, rng.integers(20, 61))
        multiplier[i] *= (1 + rng.uniform(0.003, 0.01)) ** growth
    costs = underlying * factor * multiplier

    # Month-start charges scale with the series' own level that month.
    charged = rng.random(n) < 0.20
    size = rng.uniform(0.3, 3.0, n)
    monthly = charged[:, None] & month_start[None, :]
    costs += np.where(monthly, size[:, None] * underlying * multiplier * rng.uniform(0.95, 1.05, (n, days)), 0.0)

    missing = np.zeros((n, days), dtype=bool)
    for i in np.nonzero(rng.random(n) < 0.15)[0]:
        for day in rng.integers(start[i], days, rng.integers(1, 5)):
            if not event_days[i, day]:
                missing[i, day] = True
    refund = np.zeros((n, days), dtype=bool)
    for i in np.nonzero(rng.random(n) < 0.10)[0]:
        day = int(rng.integers(start[i], days))
        if not event_days[i, day] and not missing[i, day]:
            refund[i, day] = True
            costs[i, day] = -rng.uniform(0.5, 3.0) * underlying[i, day]
    costs[missing] = 0.0
    costs[t[None, :] < start[:, None]] = 0.0
    return Labelled(
        costs=np.round(costs, 2),
        kind=kind,
        noise=sd,
        noise_kind=noise_kind,
        start=start,
        features={"month_start": monthly, "missing": missing, "refund": refund},
        events=events,
    )


def _month_starts(first: date, days: int) -> np.ndarray:
    return np.array([(first + timedelta(days=i)).day == 1 for i in range(days)])


def _core_kwargs(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("baseline_days", "score_threshold", "min_impact", "min_impact_percent")}


def _history(cfg: dict, core=anomaly_detector) -> int:
    """Days of data before a judged day that the core reads (as the task loads them)."""
    return getattr(core, "history_days", lambda baseline: baseline)(cfg["baseline_days"])


def _evaluate(costs: np.ndarray, first_column: int, first_date: date, cfg: dict, core=anomaly_detector):
    kwargs = _core_kwargs(cfg)
    if "month_starts" in inspect.signature(core.series_evaluate).parameters:
        kwargs["month_starts"] = _month_starts(first_date, costs.shape[1])
    return core.series_evaluate(costs, first_column=first_column, **kwargs)


def replay(data: Labelled, cfg: dict, core=anomaly_detector) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One core call per simulated day on the data up to it; returns (flags, judged, wall s, CPU s)."""
    n, days = data.costs.shape
    baseline, history = cfg["baseline_days"], _history(cfg, core)
    account = np.arange(n) // SERIES_PER_ACCOUNT
    account_first = np.full(account.max() + 1, days)
    np.minimum.at(account_first, account, data.start)
    judged_from = account_first[account] + baseline
    flags = np.zeros((n, days), dtype=bool)
    started, cpu_started = time.perf_counter(), time.process_time()
    for d in range(baseline, days):
        lo = max(0, d - history)
        result = _evaluate(data.costs[:, lo : d + 1], d - lo, FIRST_DAY + timedelta(days=lo), cfg, core)
        flags[:, d] = result.flags[:, -1]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    judged = np.arange(days)[None, :] >= judged_from[:, None]
    return flags & judged, judged, seconds, cpu


def check_lookback(data: Labelled, flags: np.ndarray, judged: np.ndarray, cfg: dict, sample: int) -> int:
    """Re-judge the last `lookback` days in each run of a sample, as production does: verdicts must not change."""
    baseline, history, lookback = cfg["baseline_days"], _history(cfg), cfg["lookback"]
    checked = 0
    for d in range(baseline + lookback - 1, data.costs.shape[1]):
        first = d - lookback + 1
        lo = max(0, first - history)
        result = _evaluate(data.costs[:sample, lo : d + 1], first - lo, FIRST_DAY + timedelta(days=lo), cfg)
        again = result.flags & judged[:sample, first : d + 1]
        if not np.array_equal(again, flags[:sample, first : d + 1]):
            raise SystemExit(f"re-judging the lookback in the run of day {d} changed a verdict")
        checked += again.size
    return checked


def score(data: Labelled, flags: np.ndarray, judged: np.ndarray, gap: int) -> dict:
    runs = anomaly_detector.flagged_runs(flags, gap=gap)
    windows: dict[int, list[tuple[int, int, int]]] = {}
    event_mask = np.zeros_like(flags)
    for series, kind, lo, hi in data.events:
        windows.setdefault(series, []).append((kind, lo, hi))
        event_mask[series, lo : hi + 1] = True
    detected: dict[tuple[int, int], int] = {}
    alerts = {k: [0, 0] for k in range(4)}  # kind of series -> [true alerts, alerts]
    false_causes: dict[str, int] = {}
    for series, lo, hi in runs:
        k = int(data.kind[series])
        alerts[k][1] += 1
        hits = [(ek, a, b) for ek, a, b in windows.get(series, []) if lo <= b and hi >= a]
        if hits:
            alerts[k][0] += 1
            for _, a, b in hits:
                first = a + int(np.argmax(flags[series, a : b + 1]))
                detected[(series, a)] = min(detected.get((series, a), first - a), first - a)
        elif k != DRIFT:
            false_causes[_cause(data, series, lo)] = false_causes.get(_cause(data, series, lo), 0) + 1
    out: dict = {}
    for k in (SPIKE, SHIFT):
        events = [(s, a) for s, kind, a, _ in data.events if kind == k]
        found = [(s, a) for s, a in events if (s, a) in detected]
        tp, total = alerts[k]
        precision = tp / total if total else 1.0
        recall = len(found) / len(events) if events else 1.0
        out[KINDS[k]] = {
            "events": len(events),
            "alerts": total,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "missed": [e for e in events if e not in detected],
        }
    not_drift = data.kind != DRIFT
    quiet_days = int((judged & ~event_mask)[not_drift].sum())
    false_alerts = sum(false_causes.values())
    delays = np.array(sorted(detected.values())) if detected else np.array([0])
    all_true = alerts[SPIKE][0] + alerts[SHIFT][0]
    all_alerts = all_true + false_alerts
    out["overall"] = {"precision": all_true / all_alerts if all_alerts else 1.0}
    out["quiet"] = {
        "days": quiet_days,
        "false_alerts": false_alerts,
        "per_1000": 1000 * false_alerts / quiet_days,
        "causes": false_causes,
        "on_quiet_series": alerts[QUIET][1],
    }
    drift_days = int(judged[~not_drift].sum())
    out["drift"] = {
        "alerts": alerts[DRIFT][1],
        "days": drift_days,
        "per_1000": 1000 * alerts[DRIFT][1] / max(1, drift_days),
    }
    out["delay"] = {
        "p50": float(np.percentile(delays, 50)),
        "p90": float(np.percentile(delays, 90)),
        "max": int(delays.max()),
    }
    by_noise = {}
    for nk, name in enumerate(NOISE_KINDS):
        rows = not_drift & (data.noise_kind == nk)
        days_n = int((judged & ~event_mask)[rows].sum())
        count = sum(
            1 for s, lo, hi in runs if rows[s] and not any(lo <= b and hi >= a for _, a, b in windows.get(s, []))
        )
        by_noise[name] = 1000 * count / max(1, days_n)
    out["false_by_noise"] = by_noise
    return out


def _cause(data: Labelled, series: int, day: int) -> str:
    """What the data held on (or just before) a false alert's first day, for the diagnosis table."""
    f = data.features
    if f["month_start"][series, day]:
        return "month_start"
    if day - data.start[series] < 35 and data.start[series] > 0:
        return "new_series"
    lo = max(0, day - 28)
    if f["missing"][series, lo:day].any() or f["refund"][series, lo:day].any():
        return "after_missing_or_refund"
    return f"noise_{NOISE_KINDS[data.noise_kind[series]]}"


def task_stage(data: Labelled, flags: np.ndarray, cfg: dict, accounts: int) -> dict:
    """The production path on the first `accounts` accounts: rollups in PostgreSQL, `anomalies_detect` each day.

    The service anomalies of the account × service monitor must hold exactly the replay's flagged days.
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
    service_monitor = AnomalyMonitor.objects.create(name="Services per account", dimension="service")
    rows = accounts * SERIES_PER_ACCOUNT
    created = CloudAccount.objects.bulk_create(
        CloudAccount(provider="focus", name=f"bench-{i:05d}", external_id=f"{i:012d}") for i in range(accounts)
    )
    n_days = data.costs.shape[1]
    buffer = io.StringIO()
    for i in range(rows):
        for col in range(n_days):
            if data.costs[i, col] == 0:
                continue  # a day without spend has no rollup row
            day = FIRST_DAY + timedelta(days=col)
            cost = f"{data.costs[i, col]:.2f}"
            buffer.write(
                f"{created[i // SERIES_PER_ACCOUNT].pk}\t{day}\t{day.replace(day=1)} 00:00:00+00\t"
                f"service-{i % SERIES_PER_ACCOUNT:02d}\tCompute\t\tus-east-1\tUSD\t{cost}\t{cost}\t{cost}\t1\n"
            )
    with connection.cursor() as cursor:
        with cursor.copy(
            "COPY costs_app_costdailyrollup (account_id, day, billing_period_start, service_name, service_category, "
            "sub_account_id, region_id, billing_currency, billed_cost, effective_cost, list_cost, line_count) "
            "FROM STDIN"
        ) as copy:
            copy.write(buffer.getvalue())
        cursor.execute("ANALYZE costs_app_costdailyrollup")
    started = time.perf_counter()
    runs = 0
    for col in range(cfg["baseline_days"], n_days):
        day = FIRST_DAY + timedelta(days=col)
        anomalies_detect(now=datetime(day.year, day.month, day.day, 23, tzinfo=UTC))
        runs += 1
    seconds = time.perf_counter() - started
    index = {a.pk: i for i, a in enumerate(created)}
    stored = {
        (
            index[a.account_id] * SERIES_PER_ACCOUNT + int(a.dimension_value.split("-")[1]),
            (date.fromisoformat(d["day"]) - FIRST_DAY).days,
        )
        for a in Anomaly.objects.filter(monitor=service_monitor)
        for d in a.days
    }
    expected = {(int(s), int(c)) for s, c in zip(*np.nonzero(flags[:rows]), strict=True)}
    if stored != expected:
        raise SystemExit(
            f"the task and the replay disagree on {len(stored ^ expected)} days: {sorted(stored ^ expected)[:10]}"
        )
    return {"series": rows, "runs": runs, "seconds": seconds, "days": len(stored)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lookback-sample", type=int, default=200, help="series re-judged over the lookback")
    parser.add_argument("--task-accounts", type=int, default=10, help="accounts replayed through PostgreSQL (0: none)")
    parser.add_argument("--database", default="finops_bench_anomalies")
    args = parser.parse_args()
    setup_django(args.database)
    cfg = project_settings()
    data = generate(args.series, args.days, args.seed, cfg["baseline_days"])

    # Baseline, same data, same replay: the detector as it was, with the settings it had (a 3.5 threshold).
    before_flags, judged, before_seconds, _ = replay(data, {**cfg, "score_threshold": 3.5}, previous_anomaly_detector)
    before = score(data, before_flags, judged, cfg["gap"])
    flags, judged, seconds, cpu = replay(data, cfg)
    figures = score(data, flags, judged, cfg["gap"])
    checked = check_lookback(data, flags, judged, cfg, min(args.lookback_sample, args.series))
    task = task_stage(data, flags, cfg, args.task_accounts) if args.task_accounts else None

    print(
        f"settings: baseline {cfg['baseline_days']} days, score >= {cfg['score_threshold']}, impact >= "
        f"{cfg['min_impact']} and >= {cfg['min_impact_percent']} %, merge gap {cfg['gap']} days; seed {args.seed}"
    )
    print(f"replayed: {args.series} series x {args.days} days, {int(judged.sum())} series-days judged, one run per day")
    print(f"{'kind':<12} {'events':>7} {'alerts':>7} {'precision':>9} {'recall':>7} {'f1':>6}")
    for name in ("spike", "level_shift"):
        f = figures[name]
        print(
            f"{name:<12} {f['events']:>7} {f['alerts']:>7} {f['precision']:>9.3f} {f['recall']:>7.3f} {f['f1']:>6.3f}"
        )
    q = figures["quiet"]
    print(
        f"overall precision {figures['overall']['precision']:.3f}; false alerts {q['false_alerts']} over {q['days']} "
        f"quiet series-days = {q['per_1000']:.2f} per 1,000 ({q['on_quiet_series']} on quiet series); by first-day "
        "cause: " + ", ".join(f"{k} {v}" for k, v in sorted(q["causes"].items(), key=lambda kv: -kv[1]))
    )
    print(
        "false alerts per 1,000 quiet days by noise: "
        + ", ".join(f"{k} {v:.2f}" for k, v in figures["false_by_noise"].items())
    )
    d = figures["drift"]
    print(
        f"slow drifts (labelled not anomalous): {d['alerts']} alerts over {d['days']} days "
        f"= {d['per_1000']:.2f} per 1,000"
    )
    print(
        f"days to detect: p50 {figures['delay']['p50']:.0f}, p90 {figures['delay']['p90']:.0f}, "
        f"max {figures['delay']['max']}"
    )
    print(f"lookback re-judged on {min(args.lookback_sample, args.series)} series: {checked} verdicts, none changed")
    if task:
        print(
            f"task path: {task['series']} series, anomalies_detect run {task['runs']} times (one per simulated day) in "
            f"{task['seconds']:.1f} s; its service anomalies = the replay's flagged days ({task['days']})"
        )
    print(f"replay: {seconds:.2f} s wall, {cpu:.2f} s CPU for {args.series} series x {args.days} days")
    print(
        f"baseline, the previous detector (threshold 3.5) on the same replay: precision_spike="
        f"{before['spike']['precision']:.3f} recall_spike={before['spike']['recall']:.3f} precision_shift="
        f"{before['level_shift']['precision']:.3f} recall_shift={before['level_shift']['recall']:.3f} "
        f"false_alerts_per_1000_quiet_days={before['quiet']['per_1000']:.2f} seconds={before_seconds:.2f}"
    )
    print(
        f"precision_spike={figures['spike']['precision']:.3f} recall_spike={figures['spike']['recall']:.3f} "
        f"precision_shift={figures['level_shift']['precision']:.3f} "
        f"recall_shift={figures['level_shift']['recall']:.3f} "
        f"false_alerts_per_1000_quiet_days={q['per_1000']:.2f} days_to_detect_p50={figures['delay']['p50']:.0f} "
        f"seconds={seconds:.2f}"
    )


if __name__ == "__main__":
    main()
