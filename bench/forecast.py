"""Budget forecast accuracy: month-end forecasts made on day 5, 10, 15 and 20, and their 80 % interval's coverage.

    python bench/forecast.py                # --months 4000 --shifted 1000 --seed 11

**Data** (`generate`): N months of daily spend, each with the 35 days before it (the forecast reads the last
BUDGET_FORECAST_LOOKBACK_DAYS, reaching back before the month as it does on the 2nd): a level log-uniform
$30–$20,000 a day; a compounding trend of −0.3 … +0.3 %/day; a weekly shape (50 %: weekend dip of 5–35 %,
20 %: each weekday ±10 %, 30 %: none); day-to-day noise with a standard deviation of 3–10 %, Gaussian (40 %),
Student-t with 4 degrees of freedom (30 %) or Laplace (30 %); a charge on every 1st of 0.3–3 × a day (20 %);
1–3 missing days (10 %); one refund of −0.5 … −2 × a day (10 %). These months have no level shift: the targets
are for them. A second set (`--shifted`) has a level shift of 1.3–2 × on a random day of the month, reported
on its own line (no forecast can see a shift coming).

**Forecast**: `costs_app.services.budgets.period_forecast` — the function `budgets_check` calls on the daily
spend it sums from the rollups — with the project's settings, on day k of the month (data through day k),
k = 5, 10, 15, 20. MAPE = mean |forecast − month total| / month total; coverage = share of months whose
total falls inside the 80 % interval (target 0.75–0.9).

**Baseline, same run**: a flat run rate (spend to date + the mean of the last 7 days × the days left).

**FOCUS sample** (/work/shared/data/focus, if present): its one month (September 2024) of real rows, summed
per day in total and per provider, forecast on day 10, 15 and 20 from the month's own days (there is no
history before it). 1,000 sampled rows make noisy daily totals; the figures are on their own line.

The last line: `mape_day10=… mape_day20=… coverage80=…` (coverage over days 5–20 of the no-shift months).
"""

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FOCUS_SAMPLE = Path("/work/shared/data/focus/focus_sample_1.0.csv")
DAYS = (5, 10, 15, 20)
HISTORY = 35


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def _month_length(start: date) -> int:
    return ((start + timedelta(days=32)).replace(day=1) - start).days


def generate(n: int, seed: int, *, shifted: bool) -> list[tuple[date, np.ndarray]]:
    """(first day of the series, daily spend): HISTORY days before a month, then the month."""
    rng = np.random.default_rng(seed)
    months = []
    for _ in range(n):
        month = date(2025 + int(rng.integers(0, 2)), int(rng.integers(1, 13)), 1)
        first = month - timedelta(days=HISTORY)
        days = HISTORY + _month_length(month)
        t = np.arange(days)
        level = np.exp(rng.uniform(np.log(30), np.log(20_000))) * np.exp(rng.uniform(-0.003, 0.003) * t)
        weekday = np.array([(first + timedelta(days=int(i))).weekday() for i in t])
        shape = rng.choice(3, p=(0.5, 0.2, 0.3))
        if shape == 0:
            level = level * np.where(weekday >= 5, 1 - rng.uniform(0.05, 0.35), 1.0)
        elif shape == 1:
            level = level * (1 + rng.uniform(-0.1, 0.1, 7))[weekday]
        if shifted:
            level[HISTORY + int(rng.integers(0, _month_length(month))) :] *= rng.uniform(1.3, 2.0)
        sd = rng.uniform(0.03, 0.10)
        law = rng.choice(3, p=(0.4, 0.3, 0.3))
        z = (
            rng.standard_normal(days)
            if law == 0
            else rng.standard_t(4, days) / np.sqrt(2.0)
            if law == 1
            else rng.laplace(0, 1 / np.sqrt(2.0), days)
        )
        cost = level * np.maximum(1 + sd * z, 0.2)
        if rng.random() < 0.2:
            firsts = np.array([(first + timedelta(days=int(i))).day == 1 for i in t])
            cost += np.where(firsts, rng.uniform(0.3, 3.0) * level, 0.0)
        if rng.random() < 0.1:
            cost[rng.integers(0, days, rng.integers(1, 4))] = 0.0
        if rng.random() < 0.1:
            refund = int(rng.integers(0, days))
            cost[refund] = -rng.uniform(0.5, 2.0) * level[refund]
        months.append((first, np.round(cost, 2)))
    return months


def _forecast(daily: list[Decimal], *, actual: Decimal, window_start: date, month: date, settings):
    from costs_app.services.budgets import period_forecast

    return period_forecast(
        actual=actual,
        daily=daily,
        window_start=window_start,
        period_start=month,
        period_end=month + timedelta(days=_month_length(month)),
        min_days=settings.BUDGET_FORECAST_MIN_DAYS,
    )


def evaluate(months: list[tuple[date, np.ndarray]], settings) -> dict:
    lookback = settings.BUDGET_FORECAST_LOOKBACK_DAYS
    errors, naive_errors, inside = defaultdict(list), defaultdict(list), defaultdict(list)
    for first, cost in months:
        month = first + timedelta(days=HISTORY)
        total = float(cost[HISTORY:].sum())
        if total <= 0:
            continue
        money = [Decimal(f"{c:.2f}") for c in cost]
        for k in DAYS:
            as_of = HISTORY + k - 1
            lo = max(0, as_of - lookback + 1)
            actual = sum(money[HISTORY : as_of + 1], Decimal(0))
            f = _forecast(money[lo : as_of + 1], actual=actual, window_start=first + timedelta(days=lo), month=month,
                          settings=settings)  # fmt: skip
            errors[k].append(abs(float(f.point) - total) / total)
            inside[k].append(float(f.low) <= total <= float(f.high))
            run_rate = float(sum(money[as_of - 6 : as_of + 1], Decimal(0))) / 7
            naive = float(actual) + run_rate * (_month_length(month) - k)
            naive_errors[k].append(abs(naive - total) / total)
    return {
        "mape": {k: float(np.mean(v)) for k, v in errors.items()},
        "naive_mape": {k: float(np.mean(v)) for k, v in naive_errors.items()},
        "coverage": {k: float(np.mean(v)) for k, v in inside.items()},
        "coverage_all": float(np.mean([x for v in inside.values() for x in v])),
        "months": len(errors[DAYS[0]]),
    }


def focus_sample(settings) -> dict | None:
    """Forecasts of the sample's month, in total and per provider, on day 10, 15 and 20."""
    if not FOCUS_SAMPLE.exists():
        return None
    series: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    with FOCUS_SAMPLE.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["BilledCost"] in ("", "NULL"):
                continue
            day = date.fromisoformat(row["ChargePeriodStart"][:10])
            series["total"][day] += Decimal(row["BilledCost"])
            series[row["ProviderName"]][day] += Decimal(row["BilledCost"])
    month = date(2024, 9, 1)
    out = {}
    for name, by_day in sorted(series.items()):
        daily = [by_day.get(month + timedelta(days=i), Decimal(0)) for i in range(30)]
        total = float(sum(daily))
        if total <= 0:
            continue
        for k in (10, 15, 20):
            f = _forecast(daily[:k], actual=sum(daily[:k], Decimal(0)), window_start=month, month=month,
                          settings=settings)  # fmt: skip
            out[(name, k)] = (abs(float(f.point) - total) / total, float(f.low) <= total <= float(f.high))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--months", type=int, default=4000)
    parser.add_argument("--shifted", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    setup_django()
    from django.conf import settings

    started = time.perf_counter()
    steady = evaluate(generate(args.months, args.seed, shifted=False), settings)
    shifted = evaluate(generate(args.shifted, args.seed + 1, shifted=True), settings) if args.shifted else None
    focus = focus_sample(settings)
    seconds = time.perf_counter() - started

    print(
        f"settings: lookback {settings.BUDGET_FORECAST_LOOKBACK_DAYS} days, "
        f"at least {settings.BUDGET_FORECAST_MIN_DAYS} "
        f"days of data; {steady['months']} months without shifts, seed {args.seed}"
    )
    print("day  MAPE   flat-run-rate MAPE  80% coverage")
    for k in DAYS:
        print(f"{k:>3} {steady['mape'][k]:6.2%} {steady['naive_mape'][k]:12.2%} {steady['coverage'][k]:14.3f}")
    if shifted:
        print(
            f"with a level shift in the month ({shifted['months']} months): MAPE "
            + ", ".join(f"day {k} {shifted['mape'][k]:.2%}" for k in DAYS)
            + "; coverage "
            + ", ".join(f"day {k} {shifted['coverage'][k]:.2f}" for k in DAYS)
        )
    if focus:
        print(
            "FOCUS sample (September 2024, 1,000 rows; total and per provider): "
            + ", ".join(
                f"{name} day {k}: {error:.1%}{' in' if inside else ' OUT'}"
                for (name, k), (error, inside) in focus.items()
            )
        )
    print(f"{seconds:.1f} s")
    print(
        f"mape_day10={steady['mape'][10]:.4f} mape_day20={steady['mape'][20]:.4f} "
        f"coverage80={steady['coverage_all']:.3f}"
    )


if __name__ == "__main__":
    main()
