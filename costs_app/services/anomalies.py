"""Cost anomaly detection: daily spend per account and per account × service against a robust, weekly-aware baseline.

How a day is judged (all series at once, vectorised with NumPy):
- the series are daily EffectiveCost from the rollups, per account and per account × service (and per
  account × region, used only to explain account-level anomalies); EffectiveCost, not BilledCost, so an
  upfront commitment purchase is not mistaken for a spending spike;
- the baseline of a day is the ANOMALY_BASELINE_DAYS before it. Expected = the median; spread = the
  median absolute deviation (MAD), both insensitive to the odd spike already in the baseline. With three
  or more weeks of baseline, a weekly profile (median per weekday) is used instead when it explains the
  baseline clearly better (its residual MAD is at most WEEKLY_GAIN × the plain MAD), so a quiet Sunday
  is compared with Sundays;
- score = (actual − expected) / (1.4826 × MAD), floored so a perfectly flat series cannot divide by zero;
- a day is an anomaly when score ≥ ANOMALY_SCORE_THRESHOLD and the increase is at least
  ANOMALY_MIN_IMPACT (absolute) and ANOMALY_MIN_IMPACT_PERCENT of expected. Only increases are
  flagged: a drop is not a cost risk, and the latest day is often incomplete because data arrives late;
- the days judged are the last ANOMALY_LOOKBACK_DAYS up to each account's latest day with data (not
  the wall clock), and only once the account has ANOMALY_MIN_HISTORY_DAYS of history before them.

Results are upserted per (account, service, day): re-running updates open anomalies, never duplicates,
never touches acknowledged / false-positive / resolved ones, and resolves open ones that no longer pass.
"""

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from numpy.lib.stride_tricks import sliding_window_view

from costs_app.models import AnomalyStatus

logger = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation
WEEKLY_GAIN = 0.6
# Spread floor as a share of the expected value: a flat series still needs a real move to score.
MIN_RELATIVE_SIGMA = 0.02
ROOT_CAUSES_PER_DIMENSION = 3
# A contributor must carry at least this share of the account's increase; everyday noise is not a cause.
ROOT_CAUSE_MIN_SHARE = 0.1


@dataclass
class AnomalyResult:
    accounts: int = 0
    series: int = 0
    points_evaluated: int = 0
    anomalies: int = 0
    created: int = 0
    updated: int = 0
    kept_as_reviewed: int = 0
    resolved: int = 0

    def as_dict(self) -> dict:
        return {
            "accounts": self.accounts,
            "series": self.series,
            "points_evaluated": self.points_evaluated,
            "anomalies": self.anomalies,
            "created": self.created,
            "updated": self.updated,
            "kept_as_reviewed": self.kept_as_reviewed,
            "resolved": self.resolved,
        }


@dataclass
class _Window:
    account_id: int
    first_day: date
    eval_start: date
    eval_end: date


@dataclass
class _Scores:
    expected: np.ndarray  # (series, eval days)
    actual: np.ndarray
    score: np.ndarray


def _windows(*, account_id: int | None, today: date) -> list[_Window]:
    lookback = settings.ANOMALY_LOOKBACK_DAYS
    history = settings.ANOMALY_MIN_HISTORY_DAYS
    sql = """
        SELECT r.account_id, MIN(r.day), MAX(r.day)
        FROM costs_app_costdailyrollup r JOIN providers_app_cloudaccount a ON a.id = r.account_id
        WHERE a.is_active AND r.day <= %s AND (%s::bigint IS NULL OR r.account_id = %s)
        GROUP BY r.account_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [today, account_id, account_id])
        rows = cursor.fetchall()
    windows = []
    for acct, first, latest in rows:
        # Days too close to the account's first data have no baseline to be judged against.
        start = max(latest - timedelta(days=lookback - 1), first + timedelta(days=history))
        if start <= latest:
            windows.append(_Window(acct, first, start, latest))
    return windows


def _load(windows: list[_Window], start: date, end: date) -> dict[str, np.ndarray]:
    sql = """
        SELECT account_id, billing_currency, service_name, region_id, day - %s::date, SUM(effective_cost)::float8
        FROM costs_app_costdailyrollup
        WHERE account_id = ANY(%s) AND day BETWEEN %s AND %s
        GROUP BY account_id, billing_currency, service_name, region_id, day
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, [w.account_id for w in windows], start, end])
        rows = cursor.fetchall()
    if not rows:
        return {}
    acct, currency, service, region, day, cost = zip(*rows, strict=True)
    return {
        "account": np.array(acct, dtype=np.int64),
        "currency": np.array(currency, dtype=object),
        "service": np.array(service, dtype=object),
        "region": np.array(region, dtype=object),
        "day": np.array(day, dtype=np.int64),
        "cost": np.array(cost, dtype=np.float64),
    }


def _matrix(keys: np.ndarray, day: np.ndarray, cost: np.ndarray, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (series × day) cost matrix; days without a row are zero spend. Returns (unique keys, matrix)."""
    unique, inverse = np.unique(keys, return_inverse=True)
    matrix = np.zeros((len(unique), n_days))
    np.add.at(matrix, (inverse, day), cost)
    return unique, matrix


def _score(matrix: np.ndarray, eval_cols: np.ndarray, baseline: int) -> _Scores:
    """Expected value and robust score of every series on every evaluated day, in one pass."""
    windows = sliding_window_view(matrix, baseline, axis=1)[:, eval_cols - baseline]  # (S, E, B): days before
    actual = matrix[:, eval_cols]
    expected = np.median(windows, axis=2)
    mad = np.median(np.abs(windows - expected[..., None]), axis=2)
    if baseline >= 21:
        weeks = baseline // 7
        # The last whole weeks of the window, as (S, E, weeks, 7); column 0 is the evaluated day's weekday.
        weekly = windows[:, :, baseline - 7 * weeks :].reshape(*windows.shape[:2], weeks, 7)
        profile = np.median(weekly, axis=2)  # (S, E, 7)
        weekly_mad = np.median(np.abs(weekly - profile[:, :, None, :]).reshape(*windows.shape[:2], -1), axis=2)
        use_weekly = weekly_mad <= WEEKLY_GAIN * mad
        expected = np.where(use_weekly, profile[:, :, 0], expected)
        mad = np.where(use_weekly, weekly_mad, mad)
    sigma = np.maximum(MAD_TO_SIGMA * mad, np.maximum(MIN_RELATIVE_SIGMA * np.abs(expected), 1e-6))
    return _Scores(expected=expected, actual=actual, score=(actual - expected) / sigma)


def _flags(scores: _Scores, in_window: np.ndarray) -> np.ndarray:
    impact = scores.actual - scores.expected
    with np.errstate(divide="ignore", invalid="ignore"):
        big_enough = np.where(
            scores.expected > 0, impact * 100 / scores.expected >= settings.ANOMALY_MIN_IMPACT_PERCENT, True
        )
    return (
        in_window
        & (scores.score >= settings.ANOMALY_SCORE_THRESHOLD)
        & (impact >= settings.ANOMALY_MIN_IMPACT)
        & big_enough
    )


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.6f}")


def _contributors(dimension: str, names: np.ndarray, scores: _Scores, col: int, floor: float) -> list[dict]:
    impact = scores.actual[:, col] - scores.expected[:, col]
    order = [i for i in np.argsort(-impact)[:ROOT_CAUSES_PER_DIMENSION] if impact[i] > 0 and impact[i] >= floor]
    return [
        {
            "dimension": dimension,
            "value": names[i] or "(none)",
            "expected": str(_money(scores.expected[i, col])),
            "actual": str(_money(scores.actual[i, col])),
            "impact": str(_money(impact[i])),
        }
        for i in order
    ]


def anomalies_detect(*, account_id: int | None = None, now: datetime) -> AnomalyResult:
    """Judge the latest days of every active account (or one) and upsert the anomalies found."""
    result = AnomalyResult()
    baseline = settings.ANOMALY_BASELINE_DAYS
    windows = _windows(account_id=account_id, today=now.date())
    result.accounts = len(windows)
    if not windows:
        return result
    start = min(w.eval_start for w in windows) - timedelta(days=baseline)
    end = max(w.eval_end for w in windows)
    data = _load(windows, start, end)
    if not data:
        return result
    n_days = (end - start).days + 1
    eval_cols = np.arange((min(w.eval_start for w in windows) - start).days, n_days)

    # Series keys as "account|currency[|dimension]" strings so np.unique can index them.
    base_key = data["account"].astype(str).astype(object) + "|" + data["currency"]
    series = {
        "account": _matrix(base_key, data["day"], data["cost"], n_days),
        "service": _matrix(base_key + "|" + data["service"], data["day"], data["cost"], n_days),
        "region": _matrix(base_key + "|" + data["region"], data["day"], data["cost"], n_days),
    }
    by_account = {w.account_id: w for w in windows}
    eval_days = np.array([start + timedelta(days=int(c)) for c in eval_cols])

    def window_mask(keys: np.ndarray) -> np.ndarray:
        accts = [int(k.split("|", 1)[0]) for k in keys]
        lo = np.array([(by_account[a].eval_start - start).days for a in accts])
        hi = np.array([(by_account[a].eval_end - start).days for a in accts])
        return (eval_cols[None, :] >= lo[:, None]) & (eval_cols[None, :] <= hi[:, None])

    scored = {}
    for kind, (keys, matrix) in series.items():
        mask = window_mask(keys)
        scored[kind] = (keys, _score(matrix, eval_cols, baseline), mask)
    result.series = len(scored["account"][0]) + len(scored["service"][0])
    result.points_evaluated = int(scored["account"][2].sum() + scored["service"][2].sum())

    found: dict[tuple[int, str, date], dict] = {}
    for kind in ("account", "service"):
        keys, scores, mask = scored[kind]
        for s, e in zip(*np.nonzero(_flags(scores, mask)), strict=True):
            acct, currency, *rest = keys[s].split("|", 2)
            service = rest[0] if kind == "service" else ""
            expected, actual = scores.expected[s, e], scores.actual[s, e]
            row = {
                "account_id": int(acct),
                "service_name": service,
                "day": eval_days[e],
                "currency": currency,
                "expected": _money(expected),
                "actual": _money(actual),
                "impact": _money(actual - expected),
                "impact_percent": _money((actual - expected) * 100 / expected).quantize(Decimal("0.01"))
                if expected > 0
                else None,
                "score": round(float(scores.score[s, e]), 3),
                "root_causes": _root_causes(scored, f"{acct}|{currency}|", e, actual - expected)
                if kind == "account"
                else [],
            }
            # Two currencies in one account could flag the same (account, service, day): keep the larger.
            natural = (row["account_id"], service, row["day"])
            if natural not in found or found[natural]["impact"] < row["impact"]:
                found[natural] = row
    result.anomalies = len(found)
    _store(list(found.values()), windows, now, result)
    return result


def _root_causes(scored: dict, prefix: str, col: int, impact: float) -> list[dict]:
    """The services and regions whose own increase makes up a real share of the account's, largest first."""
    floor = ROOT_CAUSE_MIN_SHARE * impact
    causes = []
    for kind in ("service", "region"):
        keys, scores, _ = scored[kind]
        members = np.array([k.startswith(prefix) for k in keys])
        if members.any():
            names = np.array([k[len(prefix) :] for k in keys[members]], dtype=object)
            sub = _Scores(scores.expected[members], scores.actual[members], scores.score[members])
            causes += _contributors(kind, names, sub, col, floor)
    return causes


_UPSERT_SQL = f"""
INSERT INTO costs_app_anomaly AS a
    (account_id, service_name, day, currency, expected, actual, impact, impact_percent, score, root_causes,
     status, detected_at, updated_at)
SELECT f.account_id, f.service_name, f.day, f.currency, f.expected, f.actual, f.impact, f.impact_percent, f.score,
       f.root_causes, '{AnomalyStatus.OPEN}', %s, %s
FROM unnest(%s::bigint[], %s::text[], %s::date[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[],
            %s::numeric[], %s::float8[], %s::jsonb[])
     AS f(account_id, service_name, day, currency, expected, actual, impact, impact_percent, score, root_causes)
ON CONFLICT (account_id, service_name, day) DO UPDATE SET
    currency = EXCLUDED.currency, expected = EXCLUDED.expected, actual = EXCLUDED.actual, impact = EXCLUDED.impact,
    impact_percent = EXCLUDED.impact_percent, score = EXCLUDED.score, root_causes = EXCLUDED.root_causes,
    updated_at = EXCLUDED.updated_at
WHERE a.status = '{AnomalyStatus.OPEN}'
RETURNING (xmax = 0)
"""

# Open anomalies inside a judged window that no longer pass (late data, a corrected import) are resolved.
_RESOLVE_SQL = f"""
UPDATE costs_app_anomaly a SET status = '{AnomalyStatus.RESOLVED}', updated_at = %s
FROM unnest(%s::bigint[], %s::date[], %s::date[]) AS w(account_id, eval_start, eval_end)
WHERE a.account_id = w.account_id AND a.day BETWEEN w.eval_start AND w.eval_end AND a.status = '{AnomalyStatus.OPEN}'
  AND NOT EXISTS (
      SELECT 1 FROM unnest(%s::bigint[], %s::text[], %s::date[]) AS f(account_id, service_name, day)
      WHERE f.account_id = a.account_id AND f.service_name = a.service_name AND f.day = a.day
  )
"""


@transaction.atomic
def _store(rows: list[dict], windows: list[_Window], now: datetime, result: AnomalyResult) -> None:
    columns = ("account_id", "service_name", "day", "currency", "expected", "actual", "impact", "impact_percent")
    arrays = [[row[c] for row in rows] for c in columns]
    arrays.append([row["score"] for row in rows])
    arrays.append([json.dumps(row["root_causes"]) for row in rows])
    with connection.cursor() as cursor:
        if rows:
            cursor.execute(_UPSERT_SQL, [now, now, *arrays])
            inserted = [row[0] for row in cursor.fetchall()]
            result.created = sum(inserted)
            result.updated = len(inserted) - result.created
            result.kept_as_reviewed = len(rows) - len(inserted)
        cursor.execute(
            _RESOLVE_SQL,
            [
                now,
                [w.account_id for w in windows],
                [w.eval_start for w in windows],
                [w.eval_end for w in windows],
                arrays[0],
                arrays[1],
                arrays[2],
            ],
        )
        result.resolved = cursor.rowcount
    if result.created:
        logger.info("anomalies: %d new, %d updated, %d resolved", result.created, result.updated, result.resolved)
