"""The detector as it was before issue 12 (commit 57174e7), kept verbatim as bench/anomalies.py's baseline.

The anomaly detector's arithmetic: a weekday-aware, outlier-robust baseline for many daily series at once.

Pure NumPy, no database: the detection service (costs_app.services.anomalies) and bench/anomalies.py call
the same `series_evaluate`. Input is one 2-D array, series × days; every statistic is computed for all
series and all evaluated days in whole-array operations (in chunks of series to bound memory).

The baseline of day t is the `baseline_days` (B, a multiple of 7) days before it:
- plain model: expected = median of the B days; spread = their MAD;
- weekly model: the B days as B/7 weeks; expected = the median of the same weekday (t-7, t-14, ...);
  spread = the MAD of every day's residual from its weekday's median.
The weekly model is used when its fit (trimmed mean absolute residual) is below WEEKLY_GAIN × the plain one,
i.e. when the series really has a weekly pattern; otherwise the plain median is the steadier estimate.
(Weekday offsets are taken from each week's own median, so a level change between weeks does not bend
the weekly profile.)

Spreads become standard deviations of the prediction error: × 1.4826 (MAD → sigma for normal noise),
× a finite-sample factor (a median of only B/7 values both moves with the noise and hugs its own
samples, so the in-sample residuals understate how far a new day lands; the factor is measured once by
simulation, see `_calibration`), and floored at MIN_RELATIVE_SIGMA of the expected value.

A day is anomalous when it is above the band (score = (actual − expected) / sigma ≥ score_threshold)
AND its impact passes both floors: impact ≥ min_impact and impact ≥ min_impact_percent % of expected
(AWS's ANOMALY_TOTAL_IMPACT_ABSOLUTE / _PERCENTAGE). Drops are never flagged: they are not a cost risk,
and the latest day is often incomplete. A zero or negative expected value passes the percentage floor
(new spend has no finite percentage).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAD_TO_SIGMA = 1.4826
WEEKLY_GAIN = 0.8
# A flat series still needs a real move to score: sigma is at least this share of the expected value.
MIN_RELATIVE_SIGMA = 0.02
ABSOLUTE_SIGMA_FLOOR = 1e-6
# Share of the largest residuals left out of the mean that decides between the plain and weekly models.
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


@lru_cache(maxsize=16)
def _calibration(baseline_days: int, weekly: bool) -> tuple[float, float]:
    """sd(new day − expected) per unit of in-sample spread, for Gaussian noise, measured by simulation.

    Returns (for 1.4826 × MAD, for the trimmed mean absolute deviation). Deterministic (fixed seed), computed once
    per window shape. The MAD factor is about 1.06 for a plain 28-day median and 1.43 for the weekly
    model: the latter's expected value carries more of the noise, and its residuals hug its own fit.
    """
    rng = np.random.default_rng(20240901)
    samples = rng.standard_normal((40_000, baseline_days + 1))
    window, new = samples[:, :-1], samples[:, -1]
    if weekly:
        weeks = window.reshape(len(window), baseline_days // 7, 7)
        offset = np.median(weeks - np.median(weeks, axis=2, keepdims=True), axis=1)
        deseasoned = (weeks - offset[:, None, :]).reshape(len(window), -1)
        level = np.median(deseasoned, axis=1)
        residuals = np.abs(deseasoned - level[:, None])
        expected = level + offset[:, 0]
    else:
        expected = np.median(window, axis=1)
        residuals = np.abs(window - expected[:, None])
    sd = float(np.std(new - expected))
    mad, trimmed_mean = _median_and_trimmed_mean(residuals)
    return sd / float(np.median(MAD_TO_SIGMA * mad)), sd / float(np.median(trimmed_mean))


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


def _median_and_trimmed_mean(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and mean without the largest TRIM share, along the last axis, from one in-place sort."""
    values.sort(axis=-1)
    n = values.shape[-1]
    half = n // 2
    keep = n - max(1, round(TRIM * n))
    median = values[..., half].copy() if n % 2 else (values[..., half - 1] + values[..., half]) * 0.5
    return median, values[..., :keep].mean(axis=-1)


def _evaluate_chunk(costs: np.ndarray, first_column: int, baseline_days: int) -> tuple[np.ndarray, ...]:
    n_series, n_days = costs.shape
    weeks = baseline_days // 7
    # (S, E, B): for each evaluated day t, the B days before it; column 0 of each week is t's weekday.
    windows = sliding_window_view(costs[:, :-1], baseline_days, axis=1)[:, first_column - baseline_days :]
    n_eval = windows.shape[1]

    plain = _median(windows)
    plain_mad, plain_mean = _median_and_trimmed_mean(np.abs(windows - plain[..., None]))

    by_week = windows.reshape(n_series, n_eval, weeks, 7)
    # Each weekday's offset from its own week's median, then the median offset over the weeks: a level
    # change between weeks moves the week medians, not the offsets. A week of the window of day t starts
    # at t − B + 7k: its median is a 7-day rolling median computed once per day, not once per window.
    rolling_week = _median(sliding_window_view(costs, 7, axis=1))  # (S, days − 6): median of days j..j+6
    starts = first_column - baseline_days + np.arange(n_eval)[:, None] + 7 * np.arange(weeks)[None, :]
    centered = np.empty((n_series, n_eval, 7, weeks))  # weeks last, contiguous: partitioned in place
    np.subtract(by_week.transpose(0, 1, 3, 2), rolling_week[:, starts][:, :, None, :], out=centered)
    offset = _median(centered, scratch=True)  # (S, E, 7)
    residuals = (by_week - offset[:, :, None, :]).reshape(n_series, n_eval, -1)
    level = _median(residuals)
    residuals -= level[..., None]
    weekly_mad, weekly_mean = _median_and_trimmed_mean(np.abs(residuals, out=residuals))
    weekly_expected = level + offset[:, :, 0]

    # Which model fits: judged on the mean absolute residual, which sees that the weekends (2 days in 7)
    # sit far from a plain median when the MAD, robust to any minority, would not. Trimmed (the largest
    # TRIM of the residuals left out) so a recent spike does not blur the comparison.
    plain_mad_k, plain_mean_k = _calibration(baseline_days, False)
    weekly_mad_k, weekly_mean_k = _calibration(baseline_days, True)
    use_weekly = _floored(weekly_mean_k * weekly_mean, weekly_expected) < WEEKLY_GAIN * _floored(
        plain_mean_k * plain_mean, plain
    )
    expected = np.where(use_weekly, weekly_expected, plain)
    # The band: robust (MAD) spread of the chosen model, so past spikes do not widen it.
    sigma = np.where(use_weekly, weekly_mad_k * weekly_mad, plain_mad_k * plain_mad) * MAD_TO_SIGMA
    return expected, _floored(sigma, expected), use_weekly


def _floored(sigma: np.ndarray, expected: np.ndarray) -> np.ndarray:
    # Also decides between the models when both fit exactly: the one expecting less spread wins.
    return np.maximum(sigma, np.maximum(MIN_RELATIVE_SIGMA * np.abs(expected), ABSOLUTE_SIGMA_FLOOR))


def series_evaluate(
    costs: np.ndarray,
    *,
    first_column: int,
    baseline_days: int,
    score_threshold: float,
    min_impact: np.ndarray | float,
    min_impact_percent: np.ndarray | float,
) -> SeriesEvaluation:
    """Judge columns first_column.. of every row of `costs` (series × days, daily spend, no gaps).

    min_impact / min_impact_percent are one value or one per series (each monitor has its own floors).
    first_column must leave a whole baseline window before it.
    """
    if baseline_days < 14 or baseline_days % 7:
        raise ValueError(f"the baseline must be whole weeks, at least 2 (got {baseline_days} days)")
    costs = np.ascontiguousarray(costs, dtype=np.float64)
    n_series, n_days = costs.shape
    if first_column < baseline_days or first_column >= n_days:
        raise ValueError(f"first_column {first_column} needs {baseline_days} days before it within {n_days} days")
    n_eval = n_days - first_column
    expected = np.empty((n_series, n_eval))
    sigma = np.empty((n_series, n_eval))
    weekly = np.empty((n_series, n_eval), dtype=bool)
    step = max(1, CHUNK_CELLS // max(1, n_eval * baseline_days))
    for lo in range(0, n_series, step):
        hi = min(n_series, lo + step)
        expected[lo:hi], sigma[lo:hi], weekly[lo:hi] = _evaluate_chunk(costs[lo:hi], first_column, baseline_days)

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
    flags = (score >= score_threshold) & (impact >= floor_abs) & (impact > 0) & passes_percent
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
