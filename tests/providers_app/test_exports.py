"""The shared export-file path (S3, Blob, GCS connectors build on it), over a local folder as the "bucket".

The storage listing/download is the only part replaced here; mapping, FOCUS checks, COPY, the period
replace and the change detection are the real ones the cloud connectors use.
"""

import csv
import hashlib
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, cost_period_replace, loaded_fingerprints
from providers_app.connectors.exports import Delivery, ExportCostSource, ExportFile
from providers_app.connectors.mapping import ColumnMapping, Rule, lookup, strptime
from providers_app.models import ExportState
from tests.factories import CloudAccountFactory

pytestmark = pytest.mark.django_db

MAPPING = ColumnMapping(
    "toy provider",
    [
        Rule("BilledCost", "cost", required=True),
        Rule("EffectiveCost", "cost"),
        Rule("ListCost", "cost"),
        Rule("ContractedCost", "cost"),
        Rule("BillingCurrency", "currency", required=True),
        Rule("BillingAccountId", "account"),
        Rule("BillingAccountName", "account"),
        Rule("BillingPeriodStart", "period_start", fn=strptime("%m/%d/%Y"), how="MM/DD/YYYY, UTC"),
        Rule("BillingPeriodEnd", "period_end", fn=strptime("%m/%d/%Y"), how="MM/DD/YYYY, UTC"),
        Rule("ChargePeriodStart", "day", fn=strptime("%m/%d/%Y"), how="the usage day"),
        Rule("ChargePeriodEnd", "day_end", fn=strptime("%m/%d/%Y"), how="the next day"),
        Rule(
            "ChargeCategory",
            "kind",
            fn=lookup({"usage": "Usage", "tax": "Tax", "refund": "Credit"}, default="Adjustment"),
            how="usage -> Usage, tax -> Tax, refund -> Credit, anything else -> Adjustment",
        ),
        Rule("ChargeClass", const=None),
        Rule("ChargeDescription", "description"),
        Rule("InvoiceIssuerName", const="Toy Cloud"),
        Rule("ProviderName", const="Toy Cloud"),
        Rule("PublisherName", const="Toy Cloud"),
        Rule("PricingQuantity", "quantity"),
        Rule("PricingUnit", const="Hours"),
        Rule("ServiceCategory", const="Compute"),
        Rule("ServiceName", "service"),
    ],
)
HEADER = ["account", "service", "kind", "cost", "currency", "quantity", "day", "day_end", "period_start",
          "period_end", "description"]  # fmt: skip


def rows_for(period: str, n: int, cost: str = "1.25") -> list[list[str]]:
    year, month = int(period[:4]), int(period[5:])
    nxt = f"{month % 12 + 1:02d}/01/{year + month // 12}"
    return [
        ["111", "VM", "usage", cost, "USD", "1", f"{month:02d}/{(i % 28) + 1:02d}/{year}",
         f"{month:02d}/{(i % 28) + 2:02d}/{year}" if i % 28 < 27 else nxt, f"{month:02d}/01/{year}", nxt, "a vm"]
        for i in range(n)
    ]  # fmt: skip


def write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)


class FolderExports(ExportCostSource):
    """<root>/<YYYY-MM>/*.csv, one delivery per folder; the file's MD5 is its ETag, as with S3."""

    def __init__(self, account, root: Path):
        super().__init__(account)
        self.root = root

    def deliveries(self, *, billing_period=None):
        out = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if billing_period and folder.name != billing_period:
                continue
            files = [
                ExportFile(f"{folder.name}/{f.name}", hashlib.md5(f.read_bytes()).hexdigest(), f.stat().st_size)  # noqa: S324
                for f in sorted(folder.iterdir())
            ]
            out.append(Delivery(folder.name, files, MAPPING))
        return out

    def download(self, file, dest):
        shutil.copyfile(self.root / file.key, dest)


def sync(account, root: Path):
    source = FolderExports(account, root)
    source.known_fingerprints = loaded_fingerprints(account)
    return cost_period_replace(account=account, source=source)


def test_mapped_export_loads_skips_unchanged_and_replaces_exactly_the_changed_period(tmp_path):
    account = CloudAccountFactory(provider="aws", name="toy")
    write(tmp_path / "2024-09" / "part-1.csv", rows_for("2024-09", 30))
    write(tmp_path / "2024-10" / "part-1.csv", rows_for("2024-10", 20))
    write(tmp_path / "2024-10" / "part-2.csv", rows_for("2024-10", 5))

    first = sync(account, tmp_path)
    assert first.periods == {"2024-09": 30, "2024-10": 25}
    assert first.unchanged_periods == []
    line = CostLineItem.objects.filter(account=account, source_file="2024-10/part-2.csv").first()
    assert (line.charge_category, line.provider_name, line.billed_cost) == ("Usage", "Toy Cloud", Decimal("1.25"))
    assert set(ExportState.objects.filter(account=account).values_list("billing_period", "rows")) == {
        ("2024-09", 30),
        ("2024-10", 25),
    }

    again = sync(account, tmp_path)
    assert again.rows_loaded == 0
    assert again.unchanged_periods == ["2024-09", "2024-10"]
    assert CostLineItem.objects.filter(account=account).count() == 55

    write(tmp_path / "2024-10" / "part-2.csv", rows_for("2024-10", 7, cost="2"))
    changed = sync(account, tmp_path)
    assert changed.unchanged_periods == ["2024-09"]
    assert changed.periods == {"2024-10": 27}
    assert changed.rows_replaced == 25
    total = CostLineItem.objects.filter(account=account).aggregate(t=Sum("billed_cost"))["t"]
    assert total == Decimal("1.25") * 50 + Decimal(2) * 7


def test_a_bad_row_fails_naming_object_row_and_column_and_keeps_the_data(tmp_path):
    account = CloudAccountFactory(provider="aws", name="toy")
    write(tmp_path / "2024-09" / "part-1.csv", rows_for("2024-09", 10))
    sync(account, tmp_path)
    fingerprint = ExportState.objects.get(account=account).fingerprint

    rows = rows_for("2024-09", 10)
    rows[6][3] = "1,5"  # cost
    write(tmp_path / "2024-09" / "part-1.csv", rows)
    with pytest.raises(FocusRulesError) as failure:
        sync(account, tmp_path)
    assert str(failure.value).startswith("2024-09/part-1.csv row 7 column BilledCost: '1,5' is not a decimal")
    assert CostLineItem.objects.filter(account=account).count() == 10
    assert ExportState.objects.get(account=account).fingerprint == fingerprint  # not marked as loaded

    write(tmp_path / "2024-09" / "part-1.csv", [r[:3] + r[4:] for r in rows_for("2024-09", 3)])  # no cost
    header_less = tmp_path / "2024-09" / "part-1.csv"
    header_less.write_text(header_less.read_text().replace("cost,", "", 1))
    with pytest.raises(FocusRulesError) as failure:
        sync(account, tmp_path)
    assert "column cost: is needed for the toy provider mapping and is missing from the file" in str(failure.value)


def test_mapping_table_documents_every_rule():
    text = MAPPING.markdown()
    assert "| ChargeCategory | `kind`: usage -> Usage, tax -> Tax, refund -> Credit" in text
    with pytest.raises(ValueError, match="say how"):
        Rule("BilledCost", "x", fn=lambda a: a)
    with pytest.raises(ValueError, match="not a FOCUS 1.2 column"):
        Rule("Cost", "x")
