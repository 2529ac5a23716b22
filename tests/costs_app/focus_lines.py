"""Generated FOCUS 1.2 files for analysis tests: rows built in Python, written as CSV, loaded by the real ingest.

    rows = daily("i-1", days, "2.40", service_category="Compute") + daily("vol-1", days, "0.27", ...)
    load(account, rows, tmp_path)   # focus_file_import: the connector's FOCUS checks, COPY, rollups

Keyword overrides use the model's snake_case names (resource_id=..., tags={...}); a whole account's
rows go in one load, since an import replaces the billing periods it contains.
"""

import csv
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from costs_app.services.ingest import focus_file_import
from providers_app import focus_schema as focus

HEADER = [c.name for c in focus.COLUMNS]
BY_FIELD = {c.field: c.name for c in focus.COLUMNS}


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _period(start: datetime) -> tuple[datetime, datetime]:
    first = datetime(start.year, start.month, 1, tzinfo=UTC)
    following = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)
    return first, following


def line(*, start: datetime, hours: int = 24, cost: str | Decimal = "10", **overrides) -> dict:
    """One valid FOCUS 1.2 usage line (AWS EC2 in us-east-1 unless overridden) charged over [start, start+hours)."""
    period_start, period_end = _period(start)
    cost = str(cost)
    row = {
        "billed_cost": cost,
        "effective_cost": cost,
        "list_cost": cost,
        "contracted_cost": cost,
        "billing_account_id": "123456789012",
        "billing_account_name": "Test payer",
        "billing_currency": "USD",
        "billing_period_start": period_start,
        "billing_period_end": period_end,
        "charge_category": "Usage",
        "charge_description": "test usage",
        "charge_frequency": "Usage-Based",
        "charge_period_start": start,
        "charge_period_end": start + timedelta(hours=hours),
        "invoice_issuer_name": "Amazon Web Services, Inc.",
        "pricing_category": "Standard",
        "pricing_quantity": str(hours),
        "pricing_unit": "Hours",
        "provider_name": "AWS",
        "publisher_name": "Amazon Web Services, Inc.",
        "region_id": "us-east-1",
        "service_category": "Compute",
        "service_name": "Amazon Elastic Compute Cloud",
        "sub_account_id": "123456789012",
    }
    unknown = set(overrides) - set(BY_FIELD)
    if unknown:
        raise ValueError(f"not FOCUS columns: {sorted(unknown)}")
    row.update(overrides)
    return row


def daily(resource_id: str | None, days: list[date], cost: str | Decimal, **overrides) -> list[dict]:
    """One line per day for one resource."""
    return [line(start=midnight(day), cost=cost, resource_id=resource_id, **overrides) for day in days]


def days_before(last: date, n: int) -> list[date]:
    """The n days ending with `last`, oldest first."""
    return [last - timedelta(days=n - 1 - i) for i in range(n)]


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def write_focus(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for row in rows:
            values = {BY_FIELD[k]: _text(v) for k, v in row.items()}
            writer.writerow([values.get(name, "") for name in HEADER])
    return path


def load(account, rows: list[dict], tmp_path: Path, name: str | None = None):
    """Write `rows` as a FOCUS 1.2 CSV and import it into `account` through the real ingest."""
    path = write_focus(tmp_path / (name or f"focus-{account.pk}.csv"), rows)
    result = focus_file_import(account=account, path=str(path))
    assert result.rows_loaded == len(rows), result.report
    return result
