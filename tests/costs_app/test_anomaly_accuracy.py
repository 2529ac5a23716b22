"""Detection accuracy on a second, independently written generator (bench/anomalies.py has the first one).

The data here are drawn differently on purpose — additive (not compounding) trends, contaminated-normal,
log-normal and Student-t(5) noise, a Monday-heavy or weekend-light week, fixed or proportional month-start
fees, spikes and shifts added as extra spend rather than multiplied in, a calendar that starts mid-month —
so that the figures do not come from one generator's choices. The schedule is replayed: one call of the
detection core per simulated day with the data up to that day, with the project's settings, as
`detect_cost_anomalies` runs it; flagged days at most ANOMALY_MERGE_GAP_DAYS apart are one alert.
"""

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pytest
from django.conf import settings

from costs_app.services import anomaly_detector as detector

CALENDAR_START = date(2025, 3, 17)


@dataclass
class World:
    costs: np.ndarray
    born: np.ndarray  # first day of spend per series
    spikes: list[tuple[int, int]] = field(default_factory=list)  # (series, day)
    shifts: list[tuple[int, int]] = field(default_factory=list)  # (series, first day)
    drifting: set[int] = field(default_factory=set)


def _draw_world(n_series: int, n_days: int, seed: int, baseline: int) -> World:
    rng = np.random.default_rng(seed)
    day = np.arange(n_days)
    calendar = [CALENDAR_START + timedelta(days=int(d)) for d in day]
    weekday = np.array([d.weekday() for d in calendar])
    first_of_month = np.array([d.day == 1 for d in calendar])
    costs = np.zeros((n_series, n_days))
    world = World(costs=costs, born=np.zeros(n_series, dtype=int))
    for s in range(n_series):
        base = float(rng.lognormal(mean=6.0, sigma=1.5))  # median ~$400/day, most $20–$8,000
        slope = rng.uniform(-0.0025, 0.0025)  # share of the base per day, additive
        level = base * np.maximum(0.3, 1 + slope * day)
        week = np.ones(7)
        style = rng.integers(0, 4)
        if style == 0:
            week[5:] = 1 - rng.uniform(0.1, 0.35)  # weekend-light
        elif style == 1:
            week[0] = 1 + rng.uniform(0.05, 0.2)  # Monday batch jobs
            week[6] = 1 - rng.uniform(0.0, 0.2)
        elif style == 2:
            week = rng.normal(1.0, 0.04, 7)
        level = level * week[weekday]

        sd = rng.uniform(0.03, 0.10)
        law = rng.integers(0, 3)
        if law == 0:  # contaminated normal: 5 % of days three times as noisy, sd kept at `sd`
            wide = rng.random(n_days) < 0.05
            z = rng.standard_normal(n_days) * np.where(wide, 3.0, 1.0) / np.sqrt(0.95 + 0.05 * 9)
            factor = 1 + sd * z
        elif law == 1:  # log-normal: skewed up
            factor = np.exp(sd * rng.standard_normal(n_days) - sd**2 / 2)
        else:  # Student-t, 5 degrees of freedom (variance 5/3)
            factor = 1 + sd * rng.standard_t(5, n_days) / np.sqrt(5 / 3)
        series = level * np.clip(factor, 0.1, None)

        fee = rng.random()
        if fee < 0.12:  # a fixed monthly fee on the 1st
            series += np.where(first_of_month, base * rng.uniform(0.5, 2.5), 0.0)
        elif fee < 0.2:  # a share of the spend, billed on the 1st
            series += np.where(first_of_month, level * rng.uniform(0.4, 1.5), 0.0)

        born = int(rng.integers(5, 80)) if rng.random() < 0.08 else 0
        world.born[s] = born
        earliest = born + baseline + 10
        what = rng.random()
        if what < 0.22 and earliest < n_days:
            for when in {int(rng.integers(earliest, n_days)) for _ in range(rng.integers(1, 3))}:
                series[when] += level[when] * rng.uniform(1.5, 4.0)  # 2.5–5 x the day
                world.spikes.append((s, when))
        elif what < 0.44 and earliest < n_days:
            when = int(rng.integers(earliest, n_days))
            series[when:] += level[when:] * rng.uniform(0.8, 1.6)  # a new workload: 1.8–2.6 x from then on
            world.shifts.append((s, when))
        elif what < 0.52 and earliest < n_days - 25:
            when = int(rng.integers(earliest, n_days - 25))
            series *= 1 + np.clip(day - when, 0, 45) * rng.uniform(0.004, 0.009)  # linear creep, then flat
            world.drifting.add(s)

        protected = {when for who, when in world.spikes if who == s} | {w for who, w in world.shifts if who == s}
        for _ in range(rng.poisson(0.4)):  # missing days
            gone = int(rng.integers(0, n_days))
            if gone not in protected:
                series[gone] = 0.0
        if rng.random() < 0.12:  # a credit note
            credit = int(rng.integers(0, n_days))
            if credit not in protected:
                series[credit] = -base * rng.uniform(0.3, 2.0)
        series[:born] = 0.0
        costs[s] = np.round(series, 2)
    return world


def _replay(world: World) -> np.ndarray:
    """The verdict of each day from the run of that day, with the data up to it; days before a whole baseline
    after the series' account started are not judged (here one account per series)."""
    baseline = settings.ANOMALY_BASELINE_DAYS
    history = detector.history_days(baseline)
    n_series, n_days = world.costs.shape
    month_starts = np.array([(CALENDAR_START + timedelta(days=d)).day == 1 for d in range(n_days)])
    verdicts = np.zeros((n_series, n_days), dtype=bool)
    for today in range(baseline, n_days):
        first = max(0, today - history)
        run = detector.series_evaluate(
            world.costs[:, first : today + 1],
            first_column=today - first,
            baseline_days=baseline,
            score_threshold=settings.ANOMALY_SCORE_THRESHOLD,
            min_impact=settings.ANOMALY_MIN_IMPACT,
            min_impact_percent=settings.ANOMALY_MIN_IMPACT_PERCENT,
            month_starts=month_starts[first : today + 1],
        )
        verdicts[:, today] = run.flags[:, -1] & (today >= world.born + baseline)
    return verdicts


def _alerts(verdicts: np.ndarray) -> list[tuple[int, int, int]]:
    gap = settings.ANOMALY_MERGE_GAP_DAYS
    alerts = []
    for s in range(verdicts.shape[0]):
        days = np.flatnonzero(verdicts[s])
        if not len(days):
            continue
        begin = prev = int(days[0])
        for d in days[1:]:
            if d - prev - 1 > gap:
                alerts.append((s, begin, prev))
                begin = int(d)
            prev = int(d)
        alerts.append((s, begin, prev))
    return alerts


@pytest.fixture(scope="module")
def judged():
    world = _draw_world(n_series=2500, n_days=160, seed=20261202, baseline=settings.ANOMALY_BASELINE_DAYS)
    return world, _alerts(_replay(world))


def test_spikes_and_level_shifts_are_found_on_an_independent_generator(judged):
    world, alerts = judged
    baseline = settings.ANOMALY_BASELINE_DAYS
    by_series: dict[int, list[tuple[int, int]]] = {}
    for s, begin, end in alerts:
        by_series.setdefault(s, []).append((begin, end))

    def first_hit(s: int, lo: int, hi: int) -> int | None:
        starts = [max(begin, lo) for begin, end in by_series.get(s, []) if begin <= hi and end >= lo]
        return min(starts) - lo if starts else None

    spike_delays = [first_hit(s, d, d) for s, d in world.spikes]
    shift_delays = [first_hit(s, d, d + baseline - 1) for s, d in world.shifts]
    spike_series = {s for s, _ in world.spikes}
    shift_series = {s for s, _ in world.shifts}
    windows = {}
    for s, d in world.spikes:
        windows.setdefault(s, []).append((d, d))
    for s, d in world.shifts:
        windows.setdefault(s, []).append((d, d + baseline - 1))

    def true(s: int, begin: int, end: int) -> bool:
        return any(begin <= hi and end >= lo for lo, hi in windows.get(s, []))

    on_spikes = [true(s, b, e) for s, b, e in alerts if s in spike_series]
    on_shifts = [true(s, b, e) for s, b, e in alerts if s in shift_series]
    recall_spike = np.mean([d is not None for d in spike_delays])
    recall_shift = np.mean([d is not None for d in shift_delays])
    # then
    assert len(world.spikes) > 400 and len(world.shifts) > 400
    assert recall_spike >= 0.95, recall_spike
    assert recall_shift >= 0.95, recall_shift
    assert np.mean(on_spikes) >= 0.95, np.mean(on_spikes)
    assert np.mean(on_shifts) >= 0.95, np.mean(on_shifts)
    assert np.median([d for d in spike_delays + shift_delays if d is not None]) == 0  # found on the day


def test_quiet_days_raise_at_most_one_alert_per_thousand_on_an_independent_generator(judged):
    world, alerts = judged
    baseline = settings.ANOMALY_BASELINE_DAYS
    n_series, n_days = world.costs.shape
    busy = np.zeros((n_series, n_days), dtype=bool)
    for s, d in world.spikes:
        busy[s, d] = True
    for s, d in world.shifts:
        busy[s, d : d + baseline] = True
    judged_days = np.arange(n_days)[None, :] >= (world.born + baseline)[:, None]
    steady = np.array([s not in world.drifting for s in range(n_series)])
    quiet_days = int((judged_days & ~busy)[steady].sum())
    false_alerts = [(s, b) for s, b, e in alerts if steady[s] and not busy[s, b : e + 1].any()]
    # then
    assert quiet_days > 200_000
    assert 1000 * len(false_alerts) / quiet_days <= 1.0, (len(false_alerts), quiet_days)
