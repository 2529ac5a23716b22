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
ANOMALY_MIN_IMPACT_PERCENT; read from the environment like finops/settings.py, no database needed).

Scoring is per event, the way the service stores anomalies: consecutive flagged days of a series form one
alert (one record). An alert is a true positive when it overlaps the event's window — the spike's days; a
level shift's first baseline-length days (after that the shift is the new normal); a drift's days plus one
baseline length — and a false positive otherwise. Recall = events with at least one alert / events;
precision = true-positive alerts / alerts on series of that kind. Alerts on quiet series are counted apart.

Baseline, measured in the same run: the same statistics computed the obvious way — a Python loop over the
series and days of a sample (`--naive-sample`), NumPy per window — extrapolated to N series; the flags of
the sample must be identical to the vectorised ones. The last line is the figures as key=value pairs.
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    events: list  # (series, kind, first day, last day of the window in which an alert counts)


def settings_from_env() -> dict:
    """The detector's settings as finops/settings.py reads them (same variables, same defaults)."""
    return {
        "baseline_days": int(os.environ.get("ANOMALY_BASELINE_DAYS", 28)),
        "score_threshold": float(os.environ.get("ANOMALY_SCORE_THRESHOLD", 3.5)),
        "min_impact": float(os.environ.get("ANOMALY_MIN_IMPACT", 10.0)),
        "min_impact_percent": float(os.environ.get("ANOMALY_MIN_IMPACT_PERCENT", 20.0)),
        "gap": int(os.environ.get("ANOMALY_MERGE_GAP_DAYS", 2)),
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
            costs[i, start : start + length] *= 1 + rng.uniform(0.5, 3.0)
            events.append((i, 0, start, start + length - 1))
    for i in np.nonzero(kind == 1)[0]:  # level shifts
        start = int(rng.integers(first, days - 5))
        costs[i, start:] *= 1 + rng.uniform(0.3, 1.5)
        events.append((i, 1, start, start + baseline - 1))
    for i in np.nonzero(kind == 2)[0]:  # slow drifts
        start = int(rng.integers(first, days - 30))
        length = int(rng.integers(30, 61))
        rate = rng.uniform(0.005, 0.02)
        growth = np.clip(t - start + 1, 0, length)
        costs[i] *= (1 + rate) ** growth
        events.append((i, 2, start, min(days - 1, start + length + baseline - 1)))
    costs *= 1 + sd[:, None] * rng.standard_normal((n, days))
    return Labelled(costs=np.round(np.maximum(costs, 0), 2), kind=kind, noise=sd, events=events)


def score(data: Labelled, runs: list[tuple[int, int, int]]) -> dict:
    windows: dict[int, list[tuple[int, int]]] = {}
    for series, _, lo, hi in data.events:
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
        events = [(s, a) for s, kind, a, _ in data.events if kind == k]
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
    return out


def naive_flags(costs: np.ndarray, first_column: int, cfg: dict) -> np.ndarray:
    """The same method written the obvious way: per series, per day, NumPy on one window at a time."""
    baseline, weeks = cfg["baseline_days"], cfg["baseline_days"] // 7
    plain_k = detector.MAD_TO_SIGMA * detector._prediction_sigma_factor(baseline, False)
    weekly_k = detector.MAD_TO_SIGMA * detector._prediction_sigma_factor(baseline, True)
    flags = np.zeros((costs.shape[0], costs.shape[1] - first_column), dtype=bool)

    def floored(sigma: float, expected: float) -> float:
        return max(sigma, detector.MIN_RELATIVE_SIGMA * abs(expected), detector.ABSOLUTE_SIGMA_FLOOR)

    for s in range(costs.shape[0]):
        for t in range(first_column, costs.shape[1]):
            window = costs[s, t - baseline : t]
            plain = np.median(window)
            plain_sigma = floored(plain_k * np.median(np.abs(window - plain)), plain)
            by_week = window.reshape(weeks, 7)
            offset = np.median(by_week - np.median(by_week, axis=1, keepdims=True), axis=0)
            deseasoned = by_week - offset
            level = np.median(deseasoned)
            weekly_sigma = floored(weekly_k * np.median(np.abs(deseasoned - level)), level + offset[0])
            if weekly_sigma < detector.WEEKLY_GAIN * plain_sigma:
                expected, sigma = level + offset[0], weekly_sigma
            else:
                expected, sigma = plain, plain_sigma
            impact = costs[s, t] - expected
            percent_ok = expected <= 0 or impact * 100 >= cfg["min_impact_percent"] * expected
            flags[s, t - first_column] = (
                impact / sigma >= cfg["score_threshold"] and impact >= cfg["min_impact"] and impact > 0 and percent_ok
            )
    return flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, nargs=2, default=(0.005, 0.03), metavar=("MIN", "MAX"))
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="time the detector this many times, keep the best")
    args = parser.parse_args()
    cfg = settings_from_env()
    baseline = cfg["baseline_days"]

    data = generate(args.series, args.days, args.seed, tuple(args.noise), baseline)
    first_column = baseline
    kwargs = {k: cfg[k] for k in ("baseline_days", "score_threshold", "min_impact", "min_impact_percent")}
    detector._prediction_sigma_factor(baseline, False), detector._prediction_sigma_factor(baseline, True)

    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = detector.series_evaluate(data.costs, first_column=first_column, **kwargs)
        timings.append(time.perf_counter() - started)
    seconds = min(timings)
    runs = [(r, a + first_column, b + first_column) for r, a, b in detector.flagged_runs(result.flags, gap=cfg["gap"])]
    figures = score(data, runs)

    sample = min(args.naive_sample, args.series)
    started = time.perf_counter()
    naive = naive_flags(data.costs[:sample], first_column, cfg)
    naive_seconds = (time.perf_counter() - started) * args.series / sample
    if not np.array_equal(naive, result.flags[:sample]):
        raise SystemExit("the naive loop and the vectorised detector disagree on the sample")

    points = args.series * (args.days - first_column)
    print(
        f"settings: baseline {baseline} days, score >= {cfg['score_threshold']}, impact >= {cfg['min_impact']} "
        f"and >= {cfg['min_impact_percent']} %; noise {args.noise[0]:.1%}-{args.noise[1]:.1%}; seed {args.seed}"
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
        f"vectorised: {seconds:.2f} s for {args.series} series (best of {args.repeat}: "
        + ", ".join(f"{s:.2f}" for s in timings)
        + f"); {seconds * 10_000 / args.series:.2f} s per 10,000 series"
    )
    print(
        f"naive loop: {naive_seconds / args.series * sample:.2f} s for a sample of {sample} series, "
        f"{naive_seconds:.1f} s extrapolated to {args.series}; same flags on the sample"
    )
    print(
        f"anomalies series={args.series} days={args.days} f1_spike={figures['spike']['f1']:.3f} "
        f"f1_level_shift={figures['level_shift']['f1']:.3f} f1_drift={figures['drift']['f1']:.3f} "
        f"recall_drift={figures['drift']['recall']:.3f} quiet_alerts={quiet['alerts']} seconds={seconds:.2f} "
        f"seconds_per_10k={seconds * 10_000 / args.series:.2f} naive_seconds={naive_seconds:.1f} "
        f"ratio={naive_seconds / seconds:.1f}"
    )


if __name__ == "__main__":
    main()
