"""The anomaly detector's arithmetic: a weekday-aware, outlier-robust baseline for many daily series at once.

Pure NumPy, no database: the detection service (costs_app.services.anomalies) and bench/anomalies.py call
the same `series_evaluate`. Input is one 2-D array, series × days; every statistic is computed for all
series and all evaluated days in whole-array operations (in chunks of series to bound memory).

Expected value of day t, from the `baseline_days` (B, a multiple of 7) days before it:
- plain model: the median of the B days;
- weekly model: each weekday's offset from its own week's median (median over the B/7 weeks: a level change
  between weeks moves the week medians, not the offsets), plus the median of the de-seasoned days.

Spread, out of sample: every day of the baseline is predicted by the same model fitted on the OTHER weeks
(leave one week out), and sigma is the root mean square of those errors without the largest TRIM share (a
past spike, refund or missing day does not widen the band; heavy-tailed noise does, unlike a MAD, which
reads t- or Laplace-distributed noise as a quarter quieter than it is). A Gaussian simulation measured once
(`_calibration`) turns it into the standard deviation of a new day's error; left-out errors already carry
the model's own estimation error and the lag of a median behind a trend, so the factor is small (1.2).
Sigma is at least MIN_RELATIVE_SIGMA of the expected value. The weekly model is used when its out-of-sample
fit (trimmed mean absolute error) is below WEEKLY_GAIN × the plain one.

Month starts (when the caller says which columns are 1sts): a charge that the previous two 1sts carried over
their surroundings (support plans, subscriptions; as a share of the level) is expected again, with a wider
band; a series' first 1st (no spend around the previous ones) is not judged, its charge cannot be known.

A day is anomalous when it is above the band (score = (actual − expected) / sigma ≥ score_threshold)
AND its impact passes both floors: impact ≥ min_impact and impact ≥ min_impact_percent % of expected
(AWS's ANOMALY_TOTAL_IMPACT_ABSOLUTE / _PERCENTAGE), AND the series is established (it had spend in the
first week of the day's baseline: a new series' first weeks would be judged against zeros). Drops are
never flagged: they are not a cost risk, and the latest day is often incomplete. A zero or negative
expected value passes the percentage floor.

Why these choices, measured on bench/anomalies.py (bench/README.md): with the previous in-sample MAD and a
3.5 threshold, two alerts in three were false (10 per 1,000 quiet days, most on month-start charges and
heavy-tailed noise). The threshold (ANOMALY_SCORE_THRESHOLD, 6.5 sigmas) is in real standard deviations:
2.5–5 × spikes and 1.8–2.6 × shifts clear it by far on series with up to 10 % noise.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WEEKLY_GAIN = 0.8
# A charge on the 1st of the month is looked for on the previous two 1sts, and each is compared with the days
# two weeks either side: data back to this many days before the judged day.
MONTH_LOOKBACK = 62 + 14
# Last month's excess on its 1st counts as a recurring charge when it is at least this many sigmas.
MONTH_CHARGE_SCORE = 3.0
# The band of a 1st expecting a charge: sigma² × this (the charge was measured on one noisy day against a median
# of three) plus this share of the charge (it need not repeat to the cent).
MONTH_SIGMA_FACTOR = 2.5
MONTH_CHARGE_SPREAD = 0.1
# A flat series still needs a real move to score: sigma is at least this share of the expected value.
MIN_RELATIVE_SIGMA = 0.02
ABSOLUTE_SIGMA_FLOOR = 1e-6
# Share of the largest out-of-sample errors left out of sigma and of the fit that decides between the models.
TRIM = 0.1
# Work on this many (series × evaluated day × baseline day) cells at a time: ~64 MB per float64 array.
CHUNK_CELLS = 8_000_000


@dataclass
class SeriesEvaluation:
    """Per series (rows) and evaluated day (columns): the baseline, the band and the verdict."""

    expected: np.ndarray
    sigma: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    actual: np.ndarray
    impact: np.ndarray
    impact_percent: np.ndarray  # NaN where expected <= 0
    score: np.ndarray
    weekly: np.ndarray  # True where the weekly model was used
    flags: np.ndarray


def history_days(baseline_days: int) -> int:
    """Days of data before a judged day that `series_evaluate` reads: the baseline, and the previous two 1sts of the
    month with two weeks around them (a month-start charge seen there is expected again)."""
    return max(baseline_days, MONTH_LOOKBACK)


def _previous_month_starts(starts: np.ndarray, t: int) -> list[tuple[int, list[int], list[int]]]:
    """For a judged 1st at column t: (p, the days around p that are its reference, the days that tell whether the
    series was live at p) for each of the previous two 1sts p within MONTH_LOOKBACK; the only columns before the
    baseline that `_month_start_charges` reads."""
    found = []
    for p in starts[(starts < t) & (starts >= t - MONTH_LOOKBACK)][-2:]:
        around = [d for d in (p - 14, p - 7, p + 7, p + 14) if 0 <= d < t]
        if len(around) < 2:
            continue
        found.append((int(p), around, [d for d in (p - 14, p - 7, p) if d >= 0]))
    return found


def columns_read(
    n_days: int, *, first_column: int, baseline_days: int, month_starts: np.ndarray | None = None
) -> np.ndarray:
    """Which of the n_days columns `series_evaluate` reads to judge columns first_column..: the first judged day's
    baseline onwards, and, when a judged day is a 1st, the days around the previous two 1sts. A caller may leave
    the other columns unloaded (zeros): the verdicts are the same. Most runs judge no 1st, and then the
    MONTH_LOOKBACK days of history before the baseline are not read at all."""
    needed = np.zeros(n_days, dtype=bool)
    needed[max(0, first_column - baseline_days) :] = True
    if month_starts is not None:
        starts = np.flatnonzero(month_starts)
        for t in starts[starts >= first_column]:
            for p, around, live in _previous_month_starts(starts, t):
                needed[[p, *around, *live]] = True
    return needed


def _median(values: np.ndarray, axis: int = -1, *, scratch: bool = False) -> np.ndarray:
    """np.median along one axis, faster: rows are sorted (NumPy's vectorised sort of short rows beats its
    partition several times over), no NaN check (the inputs never hold NaN).

    scratch=True lets it sort `values` in place (a temporary the caller no longer needs).
    """
    values = np.moveaxis(values, axis, -1)
    if scratch and values.flags.c_contiguous:
        values.sort(axis=-1)
    else:
        values = np.sort(values, axis=-1)
    n = values.shape[-1]
    half = n // 2
    if n % 2:
        return values[..., half].copy()
    return (values[..., half - 1] + values[..., half]) * 0.5


def _scale_and_fit(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From out-of-sample residuals (last axis): a spread that tracks the standard deviation (root mean square of
    the residuals without the largest TRIM share: a past spike or refund does not widen it, heavy tails do),
    and the trimmed mean absolute residual that decides between the models. Sorts `residuals` in place."""
    np.abs(residuals, out=residuals)
    residuals.sort(axis=-1)
    keep = residuals.shape[-1] - max(1, round(TRIM * residuals.shape[-1]))
    kept = residuals[..., :keep]
    return np.sqrt(np.mean(kept * kept, axis=-1)), kept.mean(axis=-1)


def _others(values: np.ndarray) -> np.ndarray:
    """(..., W, n) -> (..., W, (W - 1) * n): for each week k, the values of the other weeks."""
    weeks = values.shape[-2]
    index = np.array([[j for j in range(weeks) if j != k] for k in range(weeks)])
    picked = values[..., index, :]  # (..., W, W - 1, n)
    return picked.reshape(*values.shape[:-2], weeks, -1)


def _median_of_others(values: np.ndarray) -> np.ndarray:
    """(..., W, 7) -> (..., W, 7): for each week k, the median over the other weeks (per weekday)."""
    weeks = values.shape[-2]
    if weeks == 4:  # the default 28-day baseline: the median of three is their sum less the largest and smallest
        total = values.sum(axis=-2, keepdims=True)
        result = np.empty_like(values)
        for k in range(4):
            rest = values[..., [j for j in range(4) if j != k], :]
            result[..., k, :] = total[..., 0, :] - values[..., k, :] - rest.max(axis=-2) - rest.min(axis=-2)
        return result
    others = np.array([[j for j in range(weeks) if j != k] for k in range(weeks)])
    by_weekday = values.swapaxes(-1, -2)  # (..., 7, W)
    return _median(by_weekday[..., others], scratch=True).swapaxes(-1, -2)


def _raw(costs: np.ndarray, first_column: int, baseline_days: int) -> tuple[np.ndarray, ...]:
    """Both models' expected value, uncalibrated spread and fit for the columns first_column.. of `costs`.

    The spread comes from leave-one-week-out residuals: each day of the baseline is predicted by the same model
    fitted on the OTHER weeks, so the residuals are errors of days the fit did not see (an in-sample fit hugs its
    own data and understates how far a new day lands).
    """
    n_series, _ = costs.shape
    weeks = baseline_days // 7
    # (S, E, B): for each evaluated day t, the B days before it; column 0 of each week is t's weekday.
    windows = sliding_window_view(costs[:, :-1], baseline_days, axis=1)[:, first_column - baseline_days :]
    n_eval = windows.shape[1]
    by_week = windows.reshape(n_series, n_eval, weeks, 7)

    # Plain model: the median of the window; out of sample, the median of the other weeks' days.
    plain = _median(windows)
    plain_loo = _median(_others(by_week), scratch=True)  # (S, E, W)
    plain_scale, plain_fit = _scale_and_fit((by_week - plain_loo[..., None]).reshape(n_series, n_eval, -1))

    # Weekly model: each weekday's offset from its own week's median (median over the weeks: a level change
    # between weeks moves the week medians, not the offsets), plus the median of the de-seasoned days. A week
    # of the window of day t starts at t − B + 7k: its median is a 7-day rolling median computed once per day.
    starts = first_column - baseline_days + np.arange(n_eval)[:, None] + 7 * np.arange(weeks)[None, :]
    needed, where = np.unique(starts, return_inverse=True)  # only the weeks some window uses
    rolling_week = _median(sliding_window_view(costs, 7, axis=1)[:, needed])  # (S, needed): median of j..j+6
    centered = by_week - rolling_week[:, where.reshape(starts.shape)][..., None]  # (S, E, W, 7)
    offset = _median(centered, axis=2)  # (S, E, 7)
    level = _median((by_week - offset[:, :, None, :]).reshape(n_series, n_eval, -1), scratch=True)
    weekly = level + offset[:, :, 0]
    # Out of sample: offsets and level from the other weeks only.
    offset_loo = _median_of_others(centered)  # (S, E, W, 7)
    deseasoned = _others(by_week)  # (S, E, W, (W - 1) * 7), the other weeks' days ...
    deseasoned -= np.tile(offset_loo, (1, 1, 1, weeks - 1))  # ... less the left-out week's offsets
    level_loo = _median(deseasoned, scratch=True)  # (S, E, W)
    weekly_residuals = by_week - level_loo[..., None] - offset_loo
    weekly_scale, weekly_fit = _scale_and_fit(weekly_residuals.reshape(n_series, n_eval, -1))
    return plain, plain_scale, plain_fit, weekly, weekly_scale, weekly_fit


@lru_cache(maxsize=16)
def _calibration(baseline_days: int) -> tuple[float, float, float, float]:
    """sd(new day − expected) per unit of leave-one-week-out spread and of fit, plain and weekly, Gaussian noise.

    Measured once per window shape by simulation (fixed seed): the left-out residuals come from fits on one week
    less than the real prediction, so they are a little wider than its error; this takes that out.
    """
    rng = np.random.default_rng(20240901)
    samples = 1.0 + 0.05 * rng.standard_normal((20_000, baseline_days + 1))
    plain, plain_scale, plain_fit, weekly, weekly_scale, weekly_fit = (
        v[:, 0] for v in _raw(samples, baseline_days, baseline_days)
    )
    new = samples[:, -1]
    plain_sd, weekly_sd = float(np.std(new - plain)), float(np.std(new - weekly))
    return (
        plain_sd / float(np.median(plain_scale)),
        plain_sd / float(np.median(plain_fit)),
        weekly_sd / float(np.median(weekly_scale)),
        weekly_sd / float(np.median(weekly_fit)),
    )


def _evaluate_chunk(costs: np.ndarray, first_column: int, baseline_days: int) -> tuple[np.ndarray, ...]:
    plain, plain_scale, plain_fit, weekly, weekly_scale, weekly_fit = _raw(costs, first_column, baseline_days)
    plain_k, plain_fit_k, weekly_k, weekly_fit_k = _calibration(baseline_days)
    # Which model fits: judged on the out-of-sample mean absolute residual, which sees that the weekends (2 days
    # in 7) sit far from a plain median; the weekly model must be clearly better (it has more to estimate).
    use_weekly = _floored(weekly_fit_k * weekly_fit, weekly) < WEEKLY_GAIN * _floored(plain_fit_k * plain_fit, plain)
    expected = np.where(use_weekly, weekly, plain)
    sigma = np.where(use_weekly, weekly_k * weekly_scale, plain_k * plain_scale)
    return expected, _floored(sigma, expected), use_weekly


def _floored(sigma: np.ndarray, expected: np.ndarray) -> np.ndarray:
    # Also decides between the models when both fit exactly: the one expecting less spread wins.
    return np.maximum(sigma, np.maximum(MIN_RELATIVE_SIGMA * np.abs(expected), ABSOLUTE_SIGMA_FLOOR))


def _month_start_charges(
    costs: np.ndarray, first_column: int, month_starts: np.ndarray, expected: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per judged column that is a 1st: the charge it should carry, as seen on the previous two 1sts (0 if none),
    and whether the series was live at one of them (False: the series' first month start, whose charge cannot
    be known yet; it is not judged).

    A 1st's charge is its excess over the median of the same weekday one and two weeks either side, as a share
    of that median (a support plan bills a share of the spend: it follows the level). It counts when it stands
    out of the judged day's noise (MONTH_CHARGE_SCORE sigmas); the larger of the two months is expected, so a
    1st that was missing or credited does not hide the charge.
    """
    n_series, n_days = costs.shape
    charges = np.zeros((n_series, n_days - first_column))
    known = np.ones((n_series, n_days - first_column), dtype=bool)
    starts = np.flatnonzero(month_starts)
    for t in starts[starts >= first_column]:
        col = t - first_column
        relative_sigma = sigma[:, col] / np.maximum(np.abs(expected[:, col]), ABSOLUTE_SIGMA_FLOOR)
        share = np.zeros(n_series)
        live = np.zeros(n_series, dtype=bool)
        for p, around, live_days in _previous_month_starts(starts, t):
            # Live at that 1st: spend on it or in the weeks before it (a series that started after it says nothing).
            live |= (costs[:, live_days] != 0).any(axis=1)
            reference = _median(costs[:, around])
            with np.errstate(divide="ignore", invalid="ignore"):
                seen = np.where(reference > 0, (costs[:, p] - reference) / reference, 0.0)
            share = np.maximum(share, np.where(seen >= MONTH_CHARGE_SCORE * relative_sigma, seen, 0.0))
        charges[:, col] = share * np.maximum(expected[:, col], 0.0)
        known[:, col] = live
    return charges, known


def series_evaluate(
    costs: np.ndarray,
    *,
    first_column: int,
    baseline_days: int,
    score_threshold: float,
    min_impact: np.ndarray | float,
    min_impact_percent: np.ndarray | float,
    month_starts: np.ndarray | None = None,
) -> SeriesEvaluation:
    """Judge columns first_column.. of every row of `costs` (series × days, daily spend, no gaps).

    min_impact / min_impact_percent are one value or one per series (each monitor has its own floors).
    first_column must leave a whole baseline window before it. month_starts (one bool per column: the day is
    the 1st of a month) lets a charge that the previous 1st also carried be expected again.
    """
    if baseline_days < 14 or baseline_days % 7:
        raise ValueError(f"the baseline must be whole weeks, at least 2 (got {baseline_days} days)")
    costs = np.ascontiguousarray(costs, dtype=np.float64)
    n_series, n_days = costs.shape
    if first_column < baseline_days or first_column >= n_days:
        raise ValueError(f"first_column {first_column} needs {baseline_days} days before it within {n_days} days")
    if month_starts is not None and len(month_starts) != n_days:
        raise ValueError(f"month_starts has {len(month_starts)} days, the costs {n_days}")
    n_eval = n_days - first_column
    expected = np.empty((n_series, n_eval))
    sigma = np.empty((n_series, n_eval))
    weekly = np.empty((n_series, n_eval), dtype=bool)
    # The leave-one-week-out arrays hold (weeks − 1) × the window's cells.
    step = max(1, CHUNK_CELLS // max(1, n_eval * baseline_days * (baseline_days // 7 - 1)))
    for lo in range(0, n_series, step):
        hi = min(n_series, lo + step)
        expected[lo:hi], sigma[lo:hi], weekly[lo:hi] = _evaluate_chunk(costs[lo:hi], first_column, baseline_days)
    known = True
    if month_starts is not None and month_starts[first_column:].any():
        charges, known = _month_start_charges(
            costs, first_column, np.asarray(month_starts, dtype=bool), expected, sigma
        )
        expected += charges
        # Last month's charge is itself one noisy day, and a charge need not repeat to the cent.
        sigma = np.where(
            charges > 0, np.sqrt(MONTH_SIGMA_FACTOR * sigma**2 + (MONTH_CHARGE_SPREAD * charges) ** 2), sigma
        )

    actual = costs[:, first_column:]
    impact = actual - expected
    with np.errstate(divide="ignore", invalid="ignore"):
        impact_percent = np.where(expected > 0, impact * 100.0 / expected, np.nan)
    score = impact / sigma
    band = score_threshold * sigma
    floor_abs = np.asarray(min_impact, dtype=np.float64).reshape(-1, 1) if np.ndim(min_impact) else min_impact
    floor_pct = (
        np.asarray(min_impact_percent, dtype=np.float64).reshape(-1, 1)
        if np.ndim(min_impact_percent)
        else min_impact_percent
    )
    passes_percent = np.where(expected > 0, impact * 100.0 >= floor_pct * expected, True)
    # A series is judged once it has spent for about a baseline: some spend in the first week of the window. A
    # new series' first weeks would be judged against a baseline of zeros (its account's series judge them).
    first_week = sliding_window_view(costs[:, : n_days - 1], 7, axis=1)[:, first_column - baseline_days :]
    established = (first_week != 0).any(axis=-1)[:, :n_eval]
    flags = (score >= score_threshold) & (impact >= floor_abs) & (impact > 0) & passes_percent & established & known
    return SeriesEvaluation(
        expected=expected,
        sigma=sigma,
        lower=expected - band,
        upper=expected + band,
        actual=actual,
        impact=impact,
        impact_percent=impact_percent,
        score=score,
        weekly=weekly,
        flags=flags,
    )


def flagged_runs(flags: np.ndarray, *, gap: int) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of each run of flagged columns; runs at most `gap` columns apart merge.

    The grouping the detection service applies when it turns flagged days into anomalies (one per run).
    """
    rows, cols = np.nonzero(flags)
    if not len(rows):
        return []
    new_run = np.ones(len(rows), dtype=bool)
    new_run[1:] = (rows[1:] != rows[:-1]) | (cols[1:] - cols[:-1] - 1 > gap)
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], len(rows)) - 1
    return [(int(rows[s]), int(cols[s]), int(cols[e])) for s, e in zip(starts, ends, strict=True)]
