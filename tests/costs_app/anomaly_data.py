"""Daily cost data for anomaly tests, loaded the real way: a FOCUS file through the importer (lines and rollups).

`Usage(...)` is one resource's daily cost; `focus_file(path, first_day, last_day, usages)` writes one FOCUS row
per usage and day, with the columns of the FOCUS sample in tests/providers_app/data.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from tests.providers_app.focus_files import sample_rows, write_csv

NULL = "NULL"


@dataclass
class Usage:
    resource: str
    service: str = "Amazon Elastic Compute Cloud"
    region: str = "us-east-1"
    sub_account: str = "111111111111"
    tags: dict = field(default_factory=dict)
    # cost(day) -> the day's cost; anything callable, e.g. steady(100) or with a spike.
    cost: Callable[[date], float] = lambda day: 10.0


def steady(level: float, *, seed: int, spread: float = 0.03) -> Callable[[date], float]:
    """About `level` a day, ±spread, the same value for the same day on every call."""

    def cost(day: date) -> float:
        rng = np.random.default_rng([seed, day.toordinal()])
        return round(level * (1 + rng.uniform(-spread, spread)), 4)

    return cost


def with_extra(base: Callable[[date], float], extra: dict[date, float]) -> Callable[[date], float]:
    """`base` plus `extra[day]` on the given days (a spike, a new workload...)."""
    return lambda day: round(base(day) + extra.get(day, 0.0), 4)


def _month(day: date) -> tuple[str, str]:
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return f"{start} 00:00:00", f"{end} 00:00:00"


def focus_file(path: Path, first_day: date, last_day: date, usages: list[Usage]) -> Path:
    header = [column for column in sample_rows()[0] if column != "Id"]  # "Id" is not a FOCUS column
    rows = []
    day = first_day
    while day <= last_day:
        period_start, period_end = _month(day)
        for usage in usages:
            cost = f"{usage.cost(day):.10f}"
            row = dict.fromkeys(header, NULL)
            row.update(
                {
                    "BilledCost": cost,
                    "EffectiveCost": cost,
                    "ListCost": cost,
                    "ContractedCost": cost,
                    "ContractedUnitPrice": cost,
                    "ListUnitPrice": cost,
                    "BillingAccountId": "123456789012",
                    "BillingAccountName": "Anomaly test",
                    "BillingCurrency": "USD",
                    "BillingPeriodStart": period_start,
                    "BillingPeriodEnd": period_end,
                    "ChargeCategory": "Usage",
                    "ChargeDescription": f"{usage.service} usage",
                    "ChargeFrequency": "Usage-Based",
                    "ChargePeriodStart": f"{day} 00:00:00",
                    "ChargePeriodEnd": f"{day + timedelta(days=1)} 00:00:00",
                    "ConsumedQuantity": "24",
                    "ConsumedUnit": "Hours",
                    "InvoiceIssuerName": "Amazon Web Services, Inc.",
                    "PricingCategory": "Standard",
                    "PricingQuantity": "1",
                    "PricingUnit": "Day",
                    "ProviderName": "AWS",
                    "PublisherName": "Amazon Web Services, Inc.",
                    "RegionId": usage.region,
                    "RegionName": usage.region,
                    "ResourceId": usage.resource,
                    "ResourceName": usage.resource,
                    "ServiceCategory": "Compute",
                    "ServiceName": usage.service,
                    "SkuId": "SKU1",
                    "SkuPriceId": "SKU1.PRICE",
                    "SubAccountId": usage.sub_account,
                    "SubAccountName": f"sub {usage.sub_account}",
                    "Tags": json.dumps(usage.tags) if usage.tags else NULL,
                }
            )
            rows.append(row)
        day += timedelta(days=1)
    return write_csv(path, header, rows)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
