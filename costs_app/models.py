"""The money: FOCUS cost lines and rollups, budgets and alerts, channels, anomalies, recommendations."""

import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from finops import crypto
from providers_app import focus_schema as focus
from providers_app.models import CloudAccount, Resource, Team

MONEY = {"max_digits": 38, "decimal_places": 15}
# The account of the bulk-loaded tables (cost lines, rollups): no database FK constraint and no index of its own.
# A FK check is a trigger and a locked lookup per inserted row, a third of a million-row COPY's server time, and
# the load already holds the account row locked (FOR UPDATE) for its whole transaction, so the account exists.
# Each table's composite indexes lead with account_id. Deleting an account still removes its rows: Django's
# CASCADE does, and a trigger (migration 0010) does for a DELETE that bypasses Django.
BULK_ACCOUNT = {"on_delete": models.CASCADE, "db_constraint": False, "db_index": False}


def _focus_field(column: focus.Column) -> models.Field:
    null = not column.required
    if column.type == focus.DECIMAL:
        return models.DecimalField(db_column=column.field, null=null, blank=null, **MONEY)
    if column.type == focus.DATETIME:
        return models.DateTimeField(db_column=column.field, null=null, blank=null)
    if column.type == focus.JSON:
        return models.JSONField(db_column=column.field, null=null, blank=null)
    return models.TextField(db_column=column.field, null=null, blank=null)


class CostLineItem(models.Model):
    """One FOCUS 1.2 row. The 57 FOCUS columns are added from `costs_app.focus.COLUMNS` below."""

    account = models.ForeignKey(CloudAccount, related_name="cost_lines", **BULK_ACCOUNT)
    # Where the row came from, for audit and for "which file had this": file name and 1-based row.
    source_file = models.TextField(blank=True, default="")
    source_row = models.IntegerField(null=True, blank=True)

    class Meta:
        # Every index is paid for on each of millions of rows a load writes. The table is partitioned by billing
        # month and account (migration 0014, services/partitions.py), so a filter on account and billing period
        # picks whole partitions and needs no index; this one serves retention and every charge-window query.
        # Lines are found by resource through a charge window (optimisation, anomaly root causes) or from the
        # Resource inventory, never by resource id alone.
        indexes = [models.Index(fields=["account", "charge_period_start"], name="costline_acct_charge_idx")]

    def __str__(self) -> str:
        return f"{self.service_name} {self.billed_cost} {self.billing_currency}"


for _column in focus.COLUMNS:
    CostLineItem.add_to_class(_column.field, _focus_field(_column))


class CostRollup(models.Model):
    """What every rollup row holds: the sums of its cost lines' amounts in one currency, and how many lines."""

    billing_currency = models.CharField(max_length=3)
    billed_cost = models.DecimalField(default=Decimal(0), **MONEY)
    effective_cost = models.DecimalField(default=Decimal(0), **MONEY)
    list_cost = models.DecimalField(default=Decimal(0), **MONEY)
    line_count = models.IntegerField(default=0)

    class Meta:
        abstract = True


class CostDailyRollup(CostRollup):
    """Cost per account × day × service × sub-account × region × currency, rebuilt on every import."""

    account = models.ForeignKey(CloudAccount, related_name="daily_costs", **BULK_ACCOUNT)
    day = models.DateField()
    billing_period_start = models.DateTimeField()
    service_name = models.TextField(default="", blank=True)
    service_category = models.TextField(default="", blank=True)
    sub_account_id = models.TextField(default="", blank=True)
    region_id = models.TextField(default="", blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "day", "service_name", "sub_account_id", "region_id", "billing_currency"],
                name="rollup_dims_uniq",
            )
        ]
        indexes = [
            models.Index(fields=["day"]),
            models.Index(fields=["account", "billing_period_start"]),
            # A team's days (the dashboards, scoped to the user's accounts): without it a team of 5 accounts reads
            # every account's rows of the period through the day index.
            models.Index(fields=["account", "day"], name="rollup_account_day_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.service_name or '(all services)'} {self.billed_cost} {self.billing_currency}"


class MonthRollupSums(models.Model):
    """The dimensions and sums both monthly rollups share (filled by triggers, never by Python)."""

    service_name = models.TextField(default="", blank=True)
    sub_account_id = models.TextField(default="", blank=True)
    region_id = models.TextField(default="", blank=True)
    billing_currency = models.CharField(max_length=3)
    billed_cost = models.DecimalField(default=Decimal(0), **MONEY)
    effective_cost = models.DecimalField(default=Decimal(0), **MONEY)
    list_cost = models.DecimalField(default=Decimal(0), **MONEY)
    line_count = models.BigIntegerField(default=0)
    rollup_rows = models.IntegerField(default=0, help_text="Daily rollup rows summed here.")

    class Meta:
        abstract = True


class CostMonthRollup(MonthRollupSums):
    """Cost per account × month × service × sub-account × region × currency: the daily rollups summed by month, for
    the dashboards' long periods and the budgets' whole months (a year is 12 months of rows, not 365 days of them).

    Never written by Python: statement-level triggers on CostDailyRollup (migrations 0016, 0017) add each statement's
    inserted rows and subtract its deleted ones, in the same transaction. So whatever writes the daily rollups (an
    import's swap, a reload, retention, an account's deletion, a TRUNCATE) leaves this table equal to
    `SELECT ... FROM costdailyrollup GROUP BY account, month, service, sub-account, region, currency`; a row goes
    when its last daily row does (`rollup_rows` counts them). No tag: CostTagMonthRollup has those.
    """

    account = models.ForeignKey(CloudAccount, related_name="monthly_costs", **BULK_ACCOUNT)
    month = models.DateField(help_text="The first day of the month of the daily rollups' days (UTC).")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "month", "service_name", "sub_account_id", "region_id", "billing_currency"],
                name="month_rollup_dims_uniq",
            )
        ]
        indexes = [models.Index(fields=["month"], name="month_rollup_month_idx")]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.service_name or '(all services)'} {self.billed_cost} {self.billing_currency}"


class CostTagMonthRollup(MonthRollupSums):
    """Cost per account × month × tag key × tag value × service × sub-account × region × currency: the tag rollups
    summed by month, kept by statement-level triggers on CostTagRollup (migration 0017) exactly as CostMonthRollup
    is kept from the daily rollups. Budgets with a tag filter read their whole months here."""

    account = models.ForeignKey(CloudAccount, related_name="monthly_tag_costs", **BULK_ACCOUNT)
    month = models.DateField(help_text="The first day of the month of the tag rollups' days (UTC).")
    tag_key = models.TextField()
    tag_value = models.TextField(default="", blank=True)
    rollup_rows = models.IntegerField(default=0, help_text="Tag rollup rows summed here.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "account", "month", "tag_key", "tag_value", "service_name", "sub_account_id", "region_id",
                    "billing_currency",
                ],
                name="tag_month_rollup_dims_uniq",
            )
        ]  # fmt: skip
        indexes = [models.Index(fields=["tag_key", "month"], name="tag_month_rollup_key_idx")]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.tag_key}={self.tag_value or '(untagged)'} {self.billed_cost}"


class CostAllocationTag(models.Model):
    """A tag key whose spend is rolled up per value (AWS calls these "cost allocation tags").

    Budgets scoped by tag and anomaly monitors on a tag dimension read CostTagRollup, never raw lines, and
    only the active keys are rolled up at ingest (each key multiplies the rollup's input, so not all of
    them). Activating a key backfills its rollups from the stored cost lines (ingest.tag_rollups_rebuild).
    """

    key = models.CharField(max_length=256, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class CostTagRollup(CostRollup):
    """Cost per account × day × tag key × tag value × service × sub-account × region × currency.

    tag_value is "" for the lines that do not carry the key, so the values of one key add up to the
    account's whole spend of the day (untagged spend is the "" row).
    """

    account = models.ForeignKey(CloudAccount, related_name="daily_tag_costs", **BULK_ACCOUNT)
    day = models.DateField()
    tag_key = models.TextField()
    tag_value = models.TextField(default="", blank=True)
    service_name = models.TextField(default="", blank=True)
    sub_account_id = models.TextField(default="", blank=True)
    region_id = models.TextField(default="", blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "account", "day", "tag_key", "tag_value", "service_name", "sub_account_id", "region_id",
                    "billing_currency",
                ],
                name="tag_rollup_dims_uniq",
            )
        ]  # fmt: skip
        indexes = [models.Index(fields=["tag_key", "day"], name="tag_rollup_key_day_idx")]

    def __str__(self) -> str:
        return f"{self.day} {self.tag_key}={self.tag_value or '(untagged)'} {self.billed_cost} {self.billing_currency}"


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SLACK = "slack", "Slack incoming webhook"
    WEBHOOK = "webhook", "Generic webhook"


def target_hint(*, kind: str, target: str) -> str:
    """What the admin shows of a channel's target: e-mail addresses as they are (64 characters at most); of a
    Slack or webhook URL only the scheme and host, since its path or query is the secret."""
    if kind == ChannelKind.EMAIL:
        return target if len(target) <= 64 else target[:63] + "…"
    return crypto.url_hint(target)


class NotificationChannel(models.Model):
    name = models.CharField(max_length=200, unique=True)
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="channels",
        help_text="The team whose budgets and monitors may use it; empty: organisation-wide (platform admins).",
    )
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    # Email addresses (comma-separated) or the webhook URL; encrypted because webhook URLs are secrets.
    target_ciphertext = crypto.EncryptedTextField(editable=False)
    target_hint = models.CharField(max_length=64, blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    notify_task_failures = models.BooleanField(
        default=False, help_text="Also send alerts when a task fails after its last retry."
    )
    # Generic webhooks: the HMAC key the receiver verifies X-FinOps-Signature with (encrypted).
    # Empty means a key derived from SECRET_KEY and the channel name (see notifications.webhook_signing_key).
    signing_secret_ciphertext = crypto.EncryptedTextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def set_signing_secret(self, secret: str) -> None:
        self.signing_secret_ciphertext = crypto.encrypt(secret) if secret else ""

    def get_signing_secret(self) -> str:
        return crypto.decrypt(self.signing_secret_ciphertext) if self.signing_secret_ciphertext else ""

    def set_target(self, target: str) -> None:
        self.target_ciphertext = crypto.encrypt(target)
        self.target_hint = target_hint(kind=self.kind, target=target)

    def get_target(self) -> str:
        return crypto.decrypt(self.target_ciphertext)


class BudgetPeriod(models.TextChoices):
    MONTHLY = "monthly", "Monthly"
    QUARTERLY = "quarterly", "Quarterly"
    ANNUAL = "annual", "Annual"
    CUSTOM = "custom", "Fixed date range"


class ThresholdType(models.TextChoices):
    PERCENTAGE = "percentage", "Percentage of the amount"
    ABSOLUTE = "absolute", "Absolute amount"


class SpendBasis(models.TextChoices):
    """AWS Budgets' notification types: compare the threshold with the spend so far, or with the forecast."""

    ACTUAL = "actual", "Actual spend"
    FORECASTED = "forecasted", "Forecasted spend"


_THRESHOLD_TYPES = frozenset(ThresholdType.values)
_SPEND_BASES = frozenset(SpendBasis.values)
CENT = Decimal("0.01")
THRESHOLD_MAX_PERCENT = Decimal(10_000)
THRESHOLD_MAX_AMOUNT = Decimal(10) ** 18
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")

# Budget dates: cost data of this century, and fixed ranges of at most a few years. Beyond them a period's
# arithmetic leaves Python's dates (9999-12-31 + 1 day) and one budget's day series grows to millions of rows.
BUDGET_DATE_MIN = date(2000, 1, 1)
BUDGET_DATE_MAX = date(2100, 12, 31)
BUDGET_MAX_RANGE_YEARS = 5
BUDGET_MAX_RANGE_DAYS = BUDGET_MAX_RANGE_YEARS * 366


def budget_dates_problems(*, period: str, start: date | None, end: date | None) -> dict[str, list[str]]:
    """Field name -> what is wrong with a budget's period dates (empty: fine). Shared by Budget.clean() and
    monitor_budget, which skips a stored row that breaks them instead of failing for every budget."""
    errors: dict[str, list[str]] = {}
    for name, value in (("start_date", start), ("end_date", end)):
        if value is not None and not BUDGET_DATE_MIN <= value <= BUDGET_DATE_MAX:
            errors.setdefault(name, []).append(f"{value} is outside {BUDGET_DATE_MIN} .. {BUDGET_DATE_MAX}")
    if period == BudgetPeriod.CUSTOM:
        if start is None:
            errors.setdefault("start_date", []).append("a fixed date range budget needs a start date")
        if end is None:
            errors.setdefault("end_date", []).append("a fixed date range budget needs an end date")
        if start and end and end < start:
            errors.setdefault("end_date", []).append("the end date is before the start date")
        elif start and end and (end - start).days + 1 > BUDGET_MAX_RANGE_DAYS:
            errors.setdefault("end_date", []).append(
                f"a fixed date range covers at most {BUDGET_MAX_RANGE_YEARS} years ({BUDGET_MAX_RANGE_DAYS} days);"
                f" {start} to {end} is {(end - start).days + 1} days"
            )
    elif start or end:
        errors.setdefault("period", []).append(
            "start and end dates are for fixed date range budgets only; choose that period or clear the dates"
        )
    return errors


@dataclass(frozen=True)
class Threshold:
    """One entry of Budget.thresholds: `value` percent of the amount, or `value` in the budget's currency."""

    type: str
    value: Decimal
    basis: str

    def limit(self, amount: Decimal) -> Decimal:
        """The spend at which this threshold is reached."""
        return amount * self.value / 100 if self.type == ThresholdType.PERCENTAGE else self.value

    def label(self, currency: str = "") -> str:
        value = plain(self.value)
        shown = f"{value}%" if self.type == ThresholdType.PERCENTAGE else f"{value} {currency}".strip()
        return f"{shown} {self.basis}"

    def as_json(self) -> dict:
        return {"type": self.type, "value": plain(self.value), "basis": self.basis}


def plain(value: Decimal) -> str:
    """80.00 -> "80", 12.50 -> "12.5": a Decimal as people write it."""
    return format(value.normalize(), "f")


def default_thresholds() -> list[dict]:
    """50, 80 and 100 % of actual spend, and 100 % of forecasted spend (AWS Budgets' defaults)."""
    return [Threshold(ThresholdType.PERCENTAGE, Decimal(v), SpendBasis.ACTUAL).as_json() for v in (50, 80, 100)] + [
        Threshold(ThresholdType.PERCENTAGE, Decimal(100), SpendBasis.FORECASTED).as_json()
    ]


THRESHOLDS_HELP = (
    'A JSON list; each entry {"type": "percentage" or "absolute", "value": number, "basis": "actual" or '
    '"forecasted"}. A bare number means a percentage of actual spend. Default: 50, 80, 100 % actual and '
    "100 % forecasted."
)


def thresholds_parse(raw) -> list[Threshold]:
    """Budget.thresholds as Threshold objects, sorted and without duplicates; ValidationError names each bad entry."""
    if not isinstance(raw, list) or not raw:
        raise ValidationError(
            'a non-empty list, e.g. [50, 80, {"type": "percentage", "value": 100, "basis": "forecasted"}]'
        )
    parsed, errors = set(), []
    for position, item in enumerate(raw, start=1):
        try:
            parsed.add(_threshold_parse(item))
        except ValueError as exc:
            errors.append(ValidationError(f"threshold {position} ({_shown(item)}): {exc}"))
    if errors:
        raise ValidationError(errors)
    return sorted(parsed, key=lambda t: (t.basis, t.type, t.value))


def _shown(item) -> str:
    text = json.dumps(item, default=str) if not isinstance(item, str) else repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def _threshold_parse(item) -> Threshold:
    if isinstance(item, bool):
        raise ValueError("a number or an object, not true/false")
    if isinstance(item, (int, float, str, Decimal)):
        item = {"value": item}
    if not isinstance(item, dict):
        raise ValueError('a number or an object with "type", "value" and "basis"')
    unknown = set(item) - {"type", "value", "basis"}
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: type, value, basis")
    kind = item.get("type", ThresholdType.PERCENTAGE)
    if kind not in _THRESHOLD_TYPES:
        raise ValueError(f'type must be "percentage" or "absolute", not {kind!r}')
    basis = item.get("basis", SpendBasis.ACTUAL)
    if basis not in _SPEND_BASES:
        raise ValueError(f'basis must be "actual" or "forecasted", not {basis!r}')
    if "value" not in item or isinstance(item["value"], bool):
        raise ValueError("a numeric value is required")
    try:
        value = Decimal(str(item["value"]).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"value {item['value']!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError("the value must be a positive number")
    if value.adjusted() >= 20:  # 1e400 would overflow quantize() below (InvalidOperation, not a ValueError)
        raise ValueError("the amount is too large" if kind == ThresholdType.ABSOLUTE else "the value is too large")
    if value != value.quantize(CENT):
        raise ValueError("the value may have at most 2 decimal places")
    if kind == ThresholdType.PERCENTAGE and value > THRESHOLD_MAX_PERCENT:
        raise ValueError(f"a percentage above {THRESHOLD_MAX_PERCENT}% is surely a mistake")
    if kind == ThresholdType.ABSOLUTE and value >= THRESHOLD_MAX_AMOUNT:
        raise ValueError("the amount is too large")
    return Threshold(kind, value.quantize(CENT), basis)


def _clean_list(values) -> list[str]:
    """Strip, drop empty entries and duplicates, keep the order given."""
    seen: dict[str, None] = {}
    for value in values or []:
        text = str(value).strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


class Budget(models.Model):
    """An amount per period for a scope of spend, with thresholds that alert once per period.

    Scope: every filter left empty matches everything; filters combine with AND, the values of one
    filter with OR (AWS Budgets' cost filters). Spend is FOCUS BilledCost in the budget's currency,
    read from the daily rollups (CostDailyRollup, or CostTagRollup when a tag filter is set).
    """

    name = models.CharField(max_length=200, unique=True)
    amount = models.DecimalField(max_digits=20, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    currency = models.CharField(max_length=3, default="USD", help_text="Only spend billed in this currency counts.")
    period = models.CharField(max_length=16, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    start_date = models.DateField(null=True, blank=True, help_text="Fixed date range budgets: first day.")
    end_date = models.DateField(null=True, blank=True, help_text="Fixed date range budgets: last day (included).")
    # Scope
    accounts = models.ManyToManyField(
        CloudAccount, blank=True, related_name="budgets", help_text="Empty: every account."
    )
    sub_account_ids = ArrayField(
        models.TextField(blank=True), default=list, blank=True, help_text="FOCUS SubAccountId values; empty: all."
    )
    service_names = ArrayField(
        models.TextField(blank=True), default=list, blank=True, help_text="FOCUS ServiceName values."
    )
    region_ids = ArrayField(models.TextField(blank=True), default=list, blank=True, help_text="FOCUS RegionId values.")
    tag_key = models.CharField(
        max_length=256, blank=True, help_text="Filter by this tag (made a cost allocation tag and backfilled)."
    )
    tag_values = ArrayField(
        models.TextField(blank=True), default=list, blank=True, help_text="Values of the tag that count."
    )
    thresholds = models.JSONField(default=default_thresholds, help_text=THRESHOLDS_HELP)
    channels = models.ManyToManyField(NotificationChannel, blank=True, related_name="budgets")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        if self.period == BudgetPeriod.CUSTOM:
            return f"{self.name}: {self.amount} {self.currency} from {self.start_date} to {self.end_date}"
        return f"{self.name}: {self.amount} {self.currency}/{self.period}"

    def clean(self) -> None:
        errors: dict[str, list] = {}
        self.currency = (self.currency or "").strip().upper()
        if not CURRENCY_RE.match(self.currency):
            errors.setdefault("currency", []).append("a three-letter ISO 4217 code such as USD or EUR")
        for name, messages in budget_dates_problems(
            period=self.period, start=self.start_date, end=self.end_date
        ).items():
            errors.setdefault(name, []).extend(messages)
        self.sub_account_ids = _clean_list(self.sub_account_ids)
        self.service_names = _clean_list(self.service_names)
        self.region_ids = _clean_list(self.region_ids)
        self.tag_key = (self.tag_key or "").strip()
        self.tag_values = _clean_list(self.tag_values)
        if self.tag_values and not self.tag_key:
            errors.setdefault("tag_key", []).append("tag values are given but no tag key")
        if self.tag_key and not self.tag_values:
            errors.setdefault("tag_values", []).append(f"list the values of tag {self.tag_key!r} that count")
        try:
            self.thresholds = [t.as_json() for t in thresholds_parse(self.thresholds)]
        except ValidationError as exc:
            errors.setdefault("thresholds", []).extend(exc.messages)
        if errors:
            raise ValidationError(errors)

    def threshold_list(self) -> list[Threshold]:
        return thresholds_parse(self.thresholds)

    def scope_label(self, account_names: list[str] | None = None) -> str:
        """The scope in words, e.g. "accounts prod; services Amazon EC2; tag team = web, api"."""
        parts = []
        if account_names:
            parts.append(f"account{'s' if len(account_names) > 1 else ''} {', '.join(account_names)}")
        for label, values in (
            ("sub-account", self.sub_account_ids),
            ("service", self.service_names),
            ("region", self.region_ids),
        ):
            if values:
                parts.append(f"{label}{'s' if len(values) > 1 else ''} {', '.join(values)}")
        if self.tag_key:
            parts.append(f"tag {self.tag_key} = {', '.join(self.tag_values)}")
        return "; ".join(parts) or "all spend"


class BudgetAlert(models.Model):
    """A threshold reached in one budget period; created once (budget_alert_once), with the figures of that moment."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateField()
    period_end = models.DateField(null=True, blank=True, help_text="Last day of the period (included).")
    threshold_type = models.CharField(max_length=16, choices=ThresholdType.choices, default=ThresholdType.PERCENTAGE)
    basis = models.CharField(max_length=16, choices=SpendBasis.choices, default=SpendBasis.ACTUAL)
    threshold = models.DecimalField(max_digits=22, decimal_places=2, help_text="Percent, or an amount (see type).")
    threshold_amount = models.DecimalField(null=True, blank=True, help_text="The threshold in money.", **MONEY)
    budget_amount = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    spend = models.DecimalField(help_text="Actual spend of the period when the alert was created.", **MONEY)
    forecast = models.DecimalField(null=True, blank=True, help_text="Forecast for the whole period, then.", **MONEY)
    forecast_low = models.DecimalField(
        null=True, blank=True, help_text="Lower end of the forecast's 80 % prediction interval.", **MONEY
    )
    forecast_high = models.DecimalField(
        null=True, blank=True, help_text="Upper end of the forecast's 80 % prediction interval.", **MONEY
    )
    percentage = models.DecimalField(max_digits=20, decimal_places=2, help_text="Actual spend, % of the amount.")
    forecast_percentage = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    notified_at = models.DateTimeField(null=True, blank=True, help_text="First successful delivery.")
    resolved_at = models.DateTimeField(null=True, blank=True, help_text="Set when the period is over.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start", "basis", "threshold_type", "threshold"], name="budget_alert_once"
            )
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.budget.name}: {self.threshold_spec.label(self.currency)} of period {self.period_start} reached"

    @property
    def threshold_spec(self) -> Threshold:
        return Threshold(self.threshold_type, self.threshold, self.basis)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending (or waiting to retry)"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed (gave up)"


class AlertDelivery(models.Model):
    """One alert to one channel: attempts, errors and the next retry, so a failing channel is retried and visible."""

    alert = models.ForeignKey(BudgetAlert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # [{"at": ISO time, "error": message}] per failed attempt; bounded by BUDGET_NOTIFY_MAX_ATTEMPTS.
    attempt_log = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "channel"], name="alert_delivery_once")]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alert_delivery_due_idx")]
        verbose_name_plural = "alert deliveries"

    def __str__(self) -> str:
        return f"alert {self.alert_id} → channel {self.channel_id}: {self.status} after {self.attempts} attempt(s)"


class AnomalyDimension(models.TextChoices):
    ACCOUNT = "account", "Account"
    SERVICE = "service", "Account × service"
    TAG = "tag", "Account × tag value"


def default_min_impact() -> Decimal:
    return Decimal(str(settings.ANOMALY_MIN_IMPACT)).quantize(Decimal("0.01"))


def default_min_impact_percent() -> Decimal:
    return Decimal(str(settings.ANOMALY_MIN_IMPACT_PERCENT)).quantize(Decimal("0.01"))


class AnomalyMonitor(models.Model):
    """What is watched for anomalies: one daily series per account (and per service or tag value), with floors.

    A day is an anomaly only when it is above the baseline's band AND its impact passes both floors
    (AWS Cost Anomaly Detection's ANOMALY_TOTAL_IMPACT_ABSOLUTE and ANOMALY_TOTAL_IMPACT_PERCENTAGE).
    A tag monitor makes its key a cost allocation tag (activated and backfilled when the monitor is saved
    through costs_app.services.anomalies.anomaly_monitor_save).
    """

    name = models.CharField(max_length=200, unique=True)
    dimension = models.CharField(max_length=16, choices=AnomalyDimension.choices, default=AnomalyDimension.ACCOUNT)
    tag_key = models.CharField(
        max_length=256, blank=True, default="", help_text="The tag key whose values are the series (tag monitors)."
    )
    account = models.ForeignKey(
        CloudAccount,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="anomaly_monitors",
        help_text="Watch one account only; empty watches every active account.",
    )
    min_impact = models.DecimalField(
        max_digits=20,
        decimal_places=2,
        default=default_min_impact,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Absolute floor: a day's impact (actual − expected, billing currency) must be at least this.",
    )
    min_impact_percent = models.DecimalField(
        max_digits=9,
        decimal_places=2,
        default=default_min_impact_percent,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Percentage floor: a day's impact must be at least this % of the expected spend.",
    )
    channels = models.ManyToManyField(
        NotificationChannel, blank=True, related_name="anomaly_monitors", help_text="Told about each new anomaly."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(dimension="tag") & ~models.Q(tag_key=""))
                | (~models.Q(dimension="tag") & models.Q(tag_key="")),
                name="anomaly_monitor_tag_key_iff_tag",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def dimension_label(self) -> str:
        if self.dimension == AnomalyDimension.TAG:
            return f"tag {self.tag_key}"
        return self.get_dimension_display()


class AnomalyStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"
    FALSE_POSITIVE = "false_positive", "False positive"


class Anomaly(models.Model):
    """One anomaly of one series: consecutive anomalous days, grown by later runs while it goes on.

    Money fields are totals over `days`; `days` holds each day's expected value, band, actual, impact
    and score. Closed anomalies (resolved, false positive) never change again; a recurrence is a new row.
    """

    monitor = models.ForeignKey(AnomalyMonitor, on_delete=models.CASCADE, related_name="anomalies")
    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="anomalies")
    dimension_value = models.TextField(
        blank=True, default="", help_text="The service or tag value of the series; empty for an account series."
    )
    currency = models.CharField(max_length=3)
    start_day = models.DateField()
    end_day = models.DateField(help_text="The latest anomalous day.")
    day_count = models.PositiveIntegerField(default=1)
    expected = models.DecimalField(**MONEY)
    actual = models.DecimalField(**MONEY)
    impact = models.DecimalField(**MONEY)
    impact_percent = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    score = models.FloatField(help_text="The highest score of its days (distance above expected, in sigmas).")
    days = models.JSONField(default=list, blank=True)
    root_causes = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=AnomalyStatus.choices, default=AnomalyStatus.OPEN)
    status_note = models.TextField(blank=True, default="")
    status_changed_at = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status_history = models.JSONField(default=list, blank=True)
    detected_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    notified_channels = models.JSONField(default=list, blank=True)
    notification_errors = models.JSONField(default=list, blank=True)
    notification_attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["monitor", "account", "dimension_value", "currency", "start_day"],
                name="anomaly_series_start_uniq",
            )
        ]
        indexes = [
            models.Index(
                fields=["monitor", "account", "dimension_value", "currency", "end_day"], name="anomaly_series_end_idx"
            ),
            models.Index(fields=["status", "end_day"], name="anomaly_status_end_idx"),
        ]
        ordering = ["-end_day", "-impact"]
        verbose_name_plural = "anomalies"

    def __str__(self) -> str:
        span = f"{self.start_day}" if self.start_day == self.end_day else f"{self.start_day}…{self.end_day}"
        return f"{span} {self.series_label}: +{self.impact:.2f} {self.currency}"

    @property
    def series_label(self) -> str:
        if self.monitor.dimension == AnomalyDimension.ACCOUNT:
            return "(whole account)"
        if self.monitor.dimension == AnomalyDimension.TAG:
            return f"{self.monitor.tag_key}={self.dimension_value or '(untagged)'}"
        return self.dimension_value or "(no service)"

    @property
    def is_closed(self) -> bool:
        return self.status in (AnomalyStatus.RESOLVED, AnomalyStatus.FALSE_POSITIVE)


class RecommendationStatus(models.TextChoices):
    OPEN = "open", "Open"
    DISMISSED = "dismissed", "Dismissed"
    DONE = "done", "Done"
    CLOSED = "closed", "Closed (no longer applies)"


class SavingBasis(models.TextChoices):
    COST_DATA = "cost_data", "The resource's cost lines"
    LIST_PRICE = "list_price", "List prices (no cost line for the resource)"
    NONE = "none", "Not a saving (governance)"


class Recommendation(models.Model):
    """One finding of one optimisation rule on one resource (or account, or commitment scope).

    The optimisation run upserts it by (rule, account, provider_resource_id): open ones are refreshed or
    closed with the reason they no longer apply; dismissed and done ones keep the user's decision. Done
    ones carry their realised saving, measured from the cost lines before and after `done_at`.
    """

    account = models.ForeignKey(CloudAccount, on_delete=models.CASCADE, related_name="recommendations")
    rule = models.CharField(max_length=100)
    # The provider's resource id (natural key); `resource` links the inventory row when there is one.
    provider_resource_id = models.TextField()
    resource = models.ForeignKey(Resource, null=True, blank=True, on_delete=models.SET_NULL)
    title = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)
    estimated_monthly_saving = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    monthly_cost = models.DecimalField(
        null=True, blank=True, help_text="What the resource (or scope) costs per month now.", **MONEY
    )
    saving_basis = models.CharField(max_length=16, choices=SavingBasis.choices, default=SavingBasis.COST_DATA)
    status = models.CharField(max_length=16, choices=RecommendationStatus.choices, default=RecommendationStatus.OPEN)
    status_reason = models.TextField(blank=True, help_text="Why it was dismissed or closed; the note when done.")
    status_changed_at = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    last_found_at = models.DateTimeField(null=True, blank=True, help_text="The last run whose rule found it.")
    # Realised saving of a done recommendation: the cost scope's monthly run rate before done_at minus after it.
    done_at = models.DateTimeField(null=True, blank=True)
    baseline_monthly_cost = models.DecimalField(null=True, blank=True, **MONEY)
    realised_monthly_saving = models.DecimalField(null=True, blank=True, **MONEY)
    realised_days = models.IntegerField(null=True, blank=True, help_text="Days of cost data after done_at measured.")
    realised_measured_at = models.DateTimeField(null=True, blank=True)
    realised_note = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "account", "provider_resource_id"], name="recommendation_rule_resource_uniq"
            )
        ]
        indexes = [models.Index(fields=["status", "account"], name="recommendation_status_idx")]
        ordering = ["-estimated_monthly_saving"]

    def __str__(self) -> str:
        return f"{self.rule} {self.provider_resource_id}: save {self.estimated_monthly_saving} {self.currency}/month"
