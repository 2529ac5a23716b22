"""The Cloud Billing export to BigQuery, read by the real google-cloud-bigquery client from the local REST API."""

from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum

from costs_app.models import CostLineItem
from costs_app.services.ingest import FocusRulesError, account_cost_sync
from finops.errors import PermanentError, TransientError
from providers_app.connectors import gcp
from providers_app.models import Credential, ExportState
from tests.factories import CloudAccountFactory

from .conftest import DETAILED_TABLE, STANDARD_TABLE, bigquery_settings, billing_rows

pytestmark = pytest.mark.django_db


def gcp_account(api, secret, name="acme-gcp", **settings):
    account = CloudAccountFactory(provider="gcp", name=name, settings=bigquery_settings(api, **settings))
    credential = Credential(account=account, kind="service_account")
    credential.set_secret(secret)
    credential.save()
    return account


def source_sums(rows) -> Decimal:
    """The export's own total: sum(cost) + sum(credits.amount), with Decimal from the text Google writes."""
    total = Decimal(0)
    for row in rows:
        total += Decimal(row["cost"])
        total += sum((Decimal(c["amount"]) for c in row["credits"]), Decimal(0))
    return total


def test_detailed_export_loads_per_month_skips_unchanged_and_replaces_exactly_the_changed_month(api, service_account):
    # given: two invoice months, 90 and 25 lines (every other one with a credit), read 40 rows a page
    september, october = billing_rows("202409", 90), billing_rows("202410", 25, cost="2.10")
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", september + october)
    account = gcp_account(api, service_account[0])
    # when
    first = account_cost_sync(account_id=account.id)
    # then: lines + one row per credit, the BilledCost sums equal the export's own sums
    assert first.periods == {"2024-09": 90 + 45, "2024-10": 25 + 13}
    assert first.unchanged_periods == []
    lines = CostLineItem.objects.filter(account=account)
    for period, rows in (("2024-09", september), ("2024-10", october)):
        total = lines.filter(billing_period_start__month=int(period[5:])).aggregate(t=Sum("billed_cost"))["t"]
        assert total == source_sums(rows)
    assert lines.filter(charge_category="Credit").count() == 45 + 13
    pages = [path for method, path in api.requests if "/queries/" in path]
    assert len(pages) >= 4  # 135 rows of September came in pages of 40, never as one response
    assert set(ExportState.objects.filter(account=account).values_list("billing_period", "rows")) == {
        ("2024-09", 135),
        ("2024-10", 38),
    }

    # when: nothing changed in the table
    jobs_before = sum(1 for method, path in api.requests if path.endswith("/jobs"))
    again = account_cost_sync(account_id=account.id)
    # then: one fingerprint query, no month read, nothing replaced
    assert again.unchanged_periods == ["2024-09", "2024-10"]
    assert again.rows_loaded == again.rows_replaced == 0
    assert sum(1 for method, path in api.requests if path.endswith("/jobs")) == jobs_before + 1
    assert lines.count() == 135 + 38

    # when: Google re-exports October with a late line (new export_time, one more row)
    october = billing_rows("202410", 26, cost="2.10", seed=5)
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", september + october)
    changed = account_cost_sync(account_id=account.id)
    # then: exactly October replaced, September untouched
    assert changed.unchanged_periods == ["2024-09"]
    assert changed.periods == {"2024-10": 26 + 13}
    assert changed.rows_replaced == 38
    assert lines.count() == 135 + 39
    assert lines.aggregate(t=Sum("billed_cost"))["t"] == source_sums(september) + source_sums(october)


def test_mapping_of_a_detailed_line_and_its_credit(api, service_account):
    # given
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", billing_rows("202409", 2))
    account = gcp_account(api, service_account[0])
    # when
    account_cost_sync(account_id=account.id)
    # then
    usage = CostLineItem.objects.get(account=account, charge_category="Usage", resource_name="web-1")
    assert usage.billed_cost == usage.effective_cost == Decimal("1.25")
    assert usage.list_cost == Decimal("1.5")
    assert usage.billing_currency == "USD"
    assert usage.billing_account_id == "01A2B3-C4D5E6-F7G8H9"
    assert (usage.sub_account_id, usage.sub_account_name) == ("acme-prod", "Acme Prod")
    assert (usage.region_id, usage.availability_zone) == ("us-central1", "us-central1-a")
    assert (
        usage.resource_id
        == "//compute.googleapis.com/projects/acme-prod/zones/us-central1-a/instances/4121876543210987654"
    )
    assert usage.resource_type == "instances"
    assert (usage.service_name, usage.service_category) == ("Compute Engine", "Compute")
    assert (usage.pricing_quantity, usage.pricing_unit) == (Decimal(1), "hour")
    assert (usage.consumed_quantity, usage.consumed_unit) == (Decimal(3600), "seconds")
    assert usage.billing_period_start.isoformat() == "2024-09-01T00:00:00+00:00"
    assert usage.billing_period_end.isoformat() == "2024-10-01T00:00:00+00:00"
    assert usage.charge_period_start.isoformat() == "2024-09-01T00:00:00+00:00"
    # the line's labels win over its project's labels of the same key
    assert usage.tags == {"env": "prod", "team": "t0", "cost-center": "cc-42"}
    credit = CostLineItem.objects.get(account=account, charge_category="Credit")
    assert credit.billed_cost == Decimal("-0.25") and credit.list_cost == 0
    assert credit.charge_description == "Sustained usage discount: N2 core"
    assert credit.sku_price_id == "SUD-N2"
    assert credit.resource_id == usage.resource_id
    assert credit.pricing_quantity is None


def test_standard_export_has_no_resource_ids_and_tax_is_tax(api, service_account):
    # given: the standard table (no resource, no price), with a tax line
    rows = billing_rows("202409", 3) + billing_rows("202409", 1, cost="0.40", credit=None, cost_type="tax")
    for row in rows:
        row.pop("resource"), row.pop("price")
    api.table_put(STANDARD_TABLE, "billing_export_v1_schema.json", rows)
    account = gcp_account(api, service_account[0], export="standard")
    # when
    result = account_cost_sync(account_id=account.id)
    # then
    assert result.periods == {"2024-09": 4 + 2}
    lines = CostLineItem.objects.filter(account=account)
    assert not lines.exclude(resource_id=None).exists()
    tax = lines.get(charge_category="Tax")
    assert (tax.billed_cost, tax.charge_frequency) == (Decimal("0.40"), "Recurring")


def test_a_bad_line_fails_naming_table_month_row_and_column_and_keeps_the_data(api, service_account):
    # given: a loaded September
    rows = billing_rows("202409", 30)
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", rows)
    account = gcp_account(api, service_account[0])
    account_cost_sync(account_id=account.id)
    fingerprint = ExportState.objects.get(account=account).fingerprint
    # when: a re-export has a line whose currency is not a currency code (its 23rd line)
    broken = billing_rows("202409", 30, seed=1)
    broken[22]["currency"] = "US Dollar"
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", broken)
    with pytest.raises(FocusRulesError) as failure:
        account_cost_sync(account_id=account.id)
    # then: rows count the FOCUS rows of the month's result (each line, then its credits): 22 lines with
    # 11 credits before it -> row 34; its credit row has the currency too
    assert str(failure.value).startswith(
        f"{DETAILED_TABLE} invoice.month 202409 row 34 column BillingCurrency: 'US Dollar' is not an ISO 4217 "
        "currency code (1 more row with this problem)"
    )
    assert CostLineItem.objects.filter(account=account).count() == 45
    assert ExportState.objects.get(account=account).fingerprint == fingerprint


def test_missing_table_and_missing_permission_are_permanent_and_throttling_is_transient(api, service_account):
    account = gcp_account(api, service_account[0])
    # no table yet
    with pytest.raises(PermanentError, match="not found: no export yet"):
        account_cost_sync(account_id=account.id)
    api.table_put(DETAILED_TABLE, "billing_export_resource_v1_schema.json", billing_rows("202409", 3))
    # a role without bigquery.jobs.create
    api.deny("bigquery.jobs.create")
    with pytest.raises(PermanentError, match=r"missing permission bigquery\.jobs\.create"):
        account_cost_sync(account_id=account.id)
    api.reset_faults()
    # throttled, then unavailable
    api.fail("/jobs", 1, status=429)
    with pytest.raises(TransientError, match="TooManyRequests"):
        account_cost_sync(account_id=account.id)
    api.fail("/queries/", 1, status=503)
    with pytest.raises(TransientError, match="ServiceUnavailable"):
        account_cost_sync(account_id=account.id)
    assert not CostLineItem.objects.filter(account=account).exists()
    assert account_cost_sync(account_id=account.id).periods == {"2024-09": 5}


def test_a_wrong_key_is_named(api, service_account):
    # given: the right service account name with a key Google does not know
    from .google_api import service_account_key

    info = service_account[0]
    wrong, _ = service_account_key(info["client_email"], info["project_id"], info["token_uri"])
    account = gcp_account(api, wrong)
    # when
    with pytest.raises(PermanentError) as failure:
        account_cost_sync(account_id=account.id)
    # then
    assert "invalid_grant: Invalid JWT Signature." in str(failure.value)
    assert "private_key" in str(failure.value)
    assert wrong["private_key"][40:80] not in str(failure.value)


def test_settings_and_credentials_are_validated_with_the_key_named(api, service_account):
    account = gcp_account(api, service_account[0], dataset="")
    with pytest.raises(PermanentError, match=r"settings\.dataset"):
        gcp.cost_source(account)
    partial = dict(service_account[0])
    del partial["private_key"]
    account = gcp_account(api, partial, name="no-key")
    with pytest.raises(PermanentError, match="lacks private_key"):
        gcp.gcp_credentials(account)


def test_mapping_table_documents_every_derived_rule():
    text = gcp.BIGQUERY_EXPORT.markdown()
    assert "| ChargeCategory | `cost_type`: regular -> Usage, tax -> Tax" in text
    assert "| BillingPeriodStart | `invoice.month`: invoice.month YYYYMM" in text
    docs = Path(__file__).resolve().parents[3] / "docs" / "mappings" / "gcp.md"
    assert text in docs.read_text(), "docs/mappings/gcp.md is out of date: regenerate its table"


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        ("TooManyRequests('Quota exceeded')", TransientError, "TooManyRequests"),
        ("InternalServerError('backendError')", TransientError, "InternalServerError"),
        ("DeadlineExceeded('deadline')", TransientError, "DeadlineExceeded"),
        (
            "Forbidden(\"Required 'compute.instances.list' permission for 'projects/p'\")",
            PermanentError,
            "missing permission compute.instances.list",
        ),
        (
            "Forbidden('Compute Engine API has not been used in project 123 before or it is disabled. Enable it by "
            "visiting https://console.developers.google.com/apis/api/compute.googleapis.com/overview?project=123')",
            PermanentError,
            "the API is not enabled",
        ),
        (
            "Forbidden('Exceeded rate limits: too many api requests', errors=[{'reason': 'rateLimitExceeded'}])",
            TransientError,
            "rate limit",
        ),
        ("NotFound('Not found: Dataset p:d')", PermanentError, "not found"),
        ("Unauthenticated('Request had invalid authentication credentials')", PermanentError, "not authenticated"),
    ],
)
def test_sdk_errors_are_translated(exc, kind, text):
    from google.api_core import exceptions  # noqa: F401  (used by eval)

    translated = gcp.gcp_error(eval(f"exceptions.{exc}"), "doing it")  # noqa: S307
    assert isinstance(translated, kind)
    assert text in str(translated)
    assert str(translated).startswith("doing it: ")


def test_network_errors_are_transient():
    import requests
    from google.auth.exceptions import RefreshError, TransportError

    assert isinstance(gcp.gcp_error(requests.ConnectionError("refused"), "x"), TransientError)
    assert isinstance(gcp.gcp_error(TransportError("reset"), "x"), TransientError)
    refused = gcp.gcp_error(RefreshError("invalid_grant: Invalid JWT Signature.", {"error": "invalid_grant"}), "x")
    assert isinstance(refused, PermanentError) and "invalid_grant: Invalid JWT Signature." in str(refused)
