"""The FOCUS 1.2 schema as data: each column's name, model field, type, nullability and allowed values.

One table drives the model's column order, import mapping, validation and export, so a column is
described exactly once. Sources: FOCUS specification 1.2 (https://focus.finops.org).
"""

import re
from dataclasses import dataclass, field

STRING, DECIMAL, DATETIME, JSON = "string", "decimal", "datetime", "json"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class Column:
    name: str
    type: str = STRING
    # Must be present and non-null in every row of a FOCUS 1.2 dataset.
    required: bool = False
    allowed: frozenset[str] = field(default_factory=frozenset)
    # First FOCUS version that has the column; 1.0 files lack the 1.2 ones.
    since: str = "1.0"

    @property
    def field(self) -> str:
        return snake(self.name)


CHARGE_CATEGORIES = frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"})
CHARGE_CLASSES = frozenset({"Correction"})
CHARGE_FREQUENCIES = frozenset({"One-Time", "Recurring", "Usage-Based"})
COMMITMENT_CATEGORIES = frozenset({"Spend", "Usage"})
COMMITMENT_STATUSES = frozenset({"Used", "Unused"})
PRICING_CATEGORIES = frozenset({"Standard", "Dynamic", "Committed", "Other"})
CAPACITY_RESERVATION_STATUSES = frozenset({"Used", "Unused"})
SERVICE_CATEGORIES = frozenset(
    {
        "AI and Machine Learning",
        "Analytics",
        "Business Applications",
        "Compute",
        "Databases",
        "Developer Tools",
        "Multicloud",
        "Identity",
        "Integration",
        "Internet of Things",
        "Management and Governance",
        "Media",
        "Migration",
        "Mobile",
        "Networking",
        "Security",
        "Storage",
        "Web",
        "Other",
    }
)

COLUMNS: tuple[Column, ...] = (
    Column("AvailabilityZone"),
    Column("BilledCost", DECIMAL, required=True),
    Column("BillingAccountId", required=True),
    Column("BillingAccountName"),
    Column("BillingAccountType", since="1.2"),
    Column("BillingCurrency", required=True),
    Column("BillingPeriodEnd", DATETIME, required=True),
    Column("BillingPeriodStart", DATETIME, required=True),
    Column("CapacityReservationId", since="1.1"),
    Column("CapacityReservationStatus", allowed=CAPACITY_RESERVATION_STATUSES, since="1.1"),
    Column("ChargeCategory", required=True, allowed=CHARGE_CATEGORIES),
    Column("ChargeClass", allowed=CHARGE_CLASSES),
    Column("ChargeDescription"),
    Column("ChargeFrequency", allowed=CHARGE_FREQUENCIES),
    Column("ChargePeriodEnd", DATETIME, required=True),
    Column("ChargePeriodStart", DATETIME, required=True),
    Column("CommitmentDiscountCategory", allowed=COMMITMENT_CATEGORIES),
    Column("CommitmentDiscountId"),
    Column("CommitmentDiscountName"),
    Column("CommitmentDiscountQuantity", DECIMAL, since="1.1"),
    Column("CommitmentDiscountStatus", allowed=COMMITMENT_STATUSES),
    Column("CommitmentDiscountType"),
    Column("CommitmentDiscountUnit", since="1.1"),
    Column("ConsumedQuantity", DECIMAL),
    Column("ConsumedUnit"),
    # FOCUS says non-null, but see SPEC_NOT_NULL_TOLERATED: stored nullable, a null is reported, not refused.
    Column("ContractedCost", DECIMAL),
    Column("ContractedUnitPrice", DECIMAL),
    Column("EffectiveCost", DECIMAL, required=True),
    Column("InvoiceId", since="1.2"),
    Column("InvoiceIssuerName", required=True),
    Column("ListCost", DECIMAL, required=True),
    Column("ListUnitPrice", DECIMAL),
    Column("PricingCategory", allowed=PRICING_CATEGORIES),
    Column("PricingCurrency", since="1.2"),
    Column("PricingCurrencyContractedUnitPrice", DECIMAL, since="1.2"),
    Column("PricingCurrencyEffectiveCost", DECIMAL, since="1.2"),
    Column("PricingCurrencyListUnitPrice", DECIMAL, since="1.2"),
    Column("PricingQuantity", DECIMAL),
    Column("PricingUnit"),
    Column("ProviderName", required=True),
    Column("PublisherName", required=True),
    Column("RegionId"),
    Column("RegionName"),
    Column("ResourceId"),
    Column("ResourceName"),
    Column("ResourceType"),
    Column("ServiceCategory", required=True, allowed=SERVICE_CATEGORIES),
    Column("ServiceName", required=True),
    Column("ServiceSubcategory", since="1.1"),
    Column("SkuId"),
    Column("SkuMeter", since="1.1"),
    Column("SkuPriceDetails", JSON, since="1.1"),
    Column("SkuPriceId"),
    Column("SubAccountId"),
    Column("SubAccountName"),
    Column("SubAccountType", since="1.2"),
    Column("Tags", JSON),
)

# FOCUS requires these non-null, yet real exports leave them empty: the FinOps Foundation's own sample
# (focus_sample_1.0.csv) has Oracle rows without ContractedCost. Refusing such files would make the
# reference data unloadable, and inventing a value would misstate cost; so they are stored as NULL
# and every null is reported as a rule violation of the import (and by the validator on export).
SPEC_NOT_NULL_TOLERATED = frozenset({"ContractedCost"})

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
assert len(COLUMNS) == 57
