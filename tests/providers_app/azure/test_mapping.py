"""The Azure derivations on their own: dates, tags, exact products, regions, column names, error translation,
and the rendered mapping tables in docs/mappings/azure.md."""

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from finops.errors import PermanentError, TransientError
from providers_app.connectors.azure import (
    ACTUAL,
    AMORTIZED,
    azure_date,
    azure_error,
    azure_tags,
    canonical_columns,
    mapping_docs,
    multiply,
    region_id,
    sub_account_id,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "mappings" / "azure.md"


def strings(values):
    return pa.array(values, pa.string())


def test_dates_us_and_iso_to_utc_with_exclusive_ends():
    days = strings(["02/29/2024", "2/3/2024", "2024-02-05", "2024-02-06T00:00:00.0000000Z", "", None, "31/04/2024"])
    assert azure_date()(days).to_pylist() == [
        "2024-02-29T00:00:00Z", "2024-02-03T00:00:00Z", "2024-02-05T00:00:00Z", "2024-02-06T00:00:00Z", None, None,
        "31/04/2024",  # passed on, so the FOCUS check names the row
    ]  # fmt: skip
    assert azure_date(plus_days=1)(strings(["02/29/2024", "12/31/2024"])).to_pylist() == [
        "2024-03-01T00:00:00Z",
        "2025-01-01T00:00:00Z",
    ]


def test_tags_with_and_without_braces():
    tags = strings(['"env": "prod","team": "web"', '{"env": "prod"}', '"cost-center": "12"', "", "not tags", None])
    assert azure_tags(tags).to_pylist() == [
        '{"env": "prod", "team": "web"}', '{"env": "prod"}', '{"cost-center": "12"}', None, "not tags", None,
    ]  # fmt: skip


def test_products_are_exact_and_bad_operands_are_passed_on():
    prices = strings(["0.212", "0.0000123456789012345678", "1E-3", "", "abc", "123456789012345678901"])
    quantities = strings(["6.4", "1000000", "24", "5", "2", "2"])
    assert multiply(prices, quantities).to_pylist() == [
        "1.356800000000000", "12.345678901234568", "0.024000000000000", None, "abc",
        "246913578024691357802.000000000000000",
    ]  # fmt: skip


def test_products_when_most_pairs_are_distinct_take_the_vectorised_path_with_the_same_results():
    prices = [f"0.{i:06d}1" for i in range(1000)] + [
        "1E-3",
        "abc",
        "123456789012345678901",
        "",
        "0.0000123456789012345678",
    ]
    quantities = [f"{i}.5" for i in range(1000)] + ["24", "2", "2", "5", "1000000"]
    result = multiply(strings(prices), strings(quantities)).to_pylist()
    # decimal text PostgreSQL parses exactly (arrow writes tiny values with an exponent: 5.0000000E-8)
    expected = [Decimal(p) * Decimal(q) for p, q in zip(prices[:1000], quantities[:1000], strict=True)]
    assert [Decimal(v) for v in result[:1000]] == expected
    assert result[-5:] == [
        "0.024000000000000", "abc", "246913578024691357802.000000000000000", None, "12.345678901234568",
    ]  # fmt: skip


def test_regions_ids_and_column_names():
    assert region_id(strings(["West Europe", "EU West", "eastus2", "US East 2", None])).to_pylist() == [
        "westeurope", "westeurope", "eastus2", "eastus2", None,
    ]  # fmt: skip
    assert sub_account_id(strings(["2F4E1C3A-7B8D-4E9F-A0B1-C2D3E4F5A6B7"])).to_pylist() == [
        "/subscriptions/2f4e1c3a-7b8d-4e9f-a0b1-c2d3e4f5a6b7"
    ]
    # EA casing and aliases; an alias whose target is there already keeps its own name
    assert canonical_columns(["BillingCurrencyCode", "CostInBillingCurrency", "ResourceGroup", "Cost", "Date"]) == [
        "billingcurrency", "costinbillingcurrency", "resourcegroupname", "cost", "date",
    ]  # fmt: skip


def test_sdk_errors_become_transient_or_permanent():
    assert isinstance(azure_error(ServiceRequestError("Connection refused"), what="x"), TransientError)
    assert isinstance(azure_error(ServiceResponseError("Connection reset"), what="x"), TransientError)
    busy = HttpResponseError(message="Server busy")
    busy.status_code = 503
    assert isinstance(azure_error(busy, what="x"), TransientError)
    missing = ResourceNotFoundError(message="The specified container does not exist.\nErrorCode:ContainerNotFound")
    missing.status_code = 404
    error = azure_error(missing, what="reading container 'c'")
    assert isinstance(error, PermanentError) and str(error) == "reading container 'c': the container does not exist"
    bad = ClientAuthenticationError(message="Authentication failed: AADSTS700016: Application with identifier 'x' "
                                    "was not found in the directory 'y'. Trace ID: 1 Correlation ID: 2")  # fmt: skip
    assert str(azure_error(bad, what="token")) == (
        "token: Microsoft Entra ID rejected the credential's client_id: AADSTS700016: Application with identifier "
        "'x' was not found in the directory 'y'."
    )


def test_rules_documented_and_docs_current():
    for mapping in (ACTUAL, AMORTIZED):
        text = mapping.markdown()
        assert "| ChargeCategory | `chargetype`: Usage, UnusedReservation, UnusedSavingsPlan -> Usage" in text
    assert "| BilledCost | `costinbillingcurrency` + `chargetype` + `pricingmodel`: `costInBillingCurrency`, but 0" in (
        AMORTIZED.markdown()
    )
    assert DOCS.read_text() == mapping_docs(), "docs/mappings/azure.md is stale: regenerate it (see its head)"


@pytest.mark.parametrize("mapping", [ACTUAL, AMORTIZED])
def test_every_derived_rule_says_how(mapping):
    for rule in mapping.rules:
        assert rule.fn is None or rule.how
