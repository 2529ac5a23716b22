"""Google Cloud: cost data from the Cloud Billing export (BigQuery, or files in GCS), Compute Engine inventory.

Account settings (`CloudAccount.settings`, JSON):

    source              "bigquery" (default) or "gcs"
    billing_account_id  "01A2B3-C4D5E6-F7G8H9" (defaults to the account's external_id)
    # source "bigquery": the Cloud Billing export to BigQuery
    project             the project that holds the export dataset and runs the queries (default: the
                        service account's project_id)
    dataset             the export's dataset, e.g. "billing_export"
    export              "detailed" (default: table gcp_billing_export_resource_v1_<ACCOUNT>, has resource.*)
                        or "standard" (gcp_billing_export_v1_<ACCOUNT>)
    table               the table name, when it is not the default one above
    location            the dataset's location for the query jobs ("US", "EU", …), optional
    page_size           rows per page read from the query result (default 10000)
    # source "gcs": billing files in a bucket
    bucket, prefix      gs://bucket/prefix; every *.csv, *.csv.gz, *.parquet under it, grouped by the
                        billing period written in its path ("…/2024-09/…" or "…202409…")
    format              "focus" (default: FOCUS files, e.g. the FOCUS BigQuery view exported to GCS)
    # inventory
    projects            project ids to list Compute Engine resources of (default: [project])
    zones               only these zones (and their regions), optional
    cpu_days            days of hourly CPU utilisation read from Cloud Monitoring per running instance
                        (default 14; 0 turns it off)
    # tests and compatible services
    endpoints           {"bigquery": url, "storage": url, "compute": url, "monitoring": url}: API endpoints
                        instead of Google's

Credentials (`Credential`, JSON): the service account key file as Google issues it — type
"service_account", project_id, private_key_id, private_key, client_email, token_uri. The token_uri is
used as given (a test points it at a local OAuth server).

Cost data, BigQuery: per billing period (invoice.month) the connector first runs one small fingerprint
query (row count, exact NUMERIC sum of cost, latest export_time per month) and skips a month whose
fingerprint is the one loaded last time; a changed month is read with one query filtered on
invoice.month, streamed page by page (`page_size` rows, never the whole result in memory), flattened,
mapped by BIGQUERY_EXPORT (below) and checked by the FOCUS rules like any export file.

Credits: every entry of a line's `credits` array becomes its own FOCUS row (ChargeCategory "Credit",
BilledCost = the credit's amount, negative as Google writes it, ListCost 0), next to the line's own row
with its gross cost. Nothing is netted, so the sum of BilledCost over a period equals
sum(cost) + sum(credits.amount) of the export — Google's invoice total — and each credit (sustained use,
committed use, free tier, promotion …) stays visible by its name.

Resource ids (the join with the detailed export's ResourceId, which is resource.global_name verbatim):
"//compute.googleapis.com/projects/<project>/zones/<zone>/instances/<numeric id>" and the same for
disks (zones/… or regions/…), "…/regions/<region>/addresses/<id>" (or global/addresses) and
"…/global/snapshots/<id>". Numeric ids, not names: a name can be reused after a delete, an id cannot.

SDK retries are switched off (retry=None): throttling, 5xx and network errors become TransientError and
the platform's retry policy (backoff, max retries, dead letter) decides, as for every other connector.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from finops.egress import Kind
from finops.errors import PermanentError, TransientError

from .base import ConnectionReport, CostBatch, CostSource, ResourceSource
from .endpoints import credential_check, endpoint_now, settings_check
from .exports import Delivery, ExportCostSource, ExportFile
from .focus import normalise
from .mapping import ColumnMapping, Rule, as_text, coalesce, lookup

logger = logging.getLogger(__name__)
PROVIDER = "Google Cloud"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
SOURCES = ("bigquery", "gcs")
EXPORTS = {"detailed": "gcp_billing_export_resource_v1_", "standard": "gcp_billing_export_v1_"}
SUFFIXES = (".csv", ".csv.gz", ".parquet")
PERIOD_IN_KEY = re.compile(r"(?<!\d)(20\d\d)-?(0[1-9]|1[0-2])(?!\d)")
# "Permission 'compute.instances.list' denied", "Required 'compute.disks.list' permission", "bigquery.jobs.create"
PERMISSION_RE = re.compile(
    r"\b((?:bigquery|storage|compute|monitoring|resourcemanager|billing)\.(?!googleapis\b)[A-Za-z]+\.[A-Za-z]+)\b"
)
SERVICE_ACCOUNT_KEYS = ("type", "project_id", "private_key_id", "private_key", "client_email", "token_uri")


# --- settings and credentials ---


@dataclass
class GcpSettings:
    source: str
    billing_account_id: str
    project: str
    dataset: str = ""
    table: str = ""
    location: str | None = None
    page_size: int = 10_000
    bucket: str = ""
    prefix: str = ""
    format: str = "focus"
    projects: list[str] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)
    cpu_days: int = 14
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def table_id(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"


def gcp_settings(account, *, for_costs: bool = True) -> GcpSettings:
    """The account's settings, validated; PermanentError names the setting that is missing or wrong."""
    raw = dict(account.settings or {})
    secret = _secret(account)
    name = account.name
    source = raw.get("source") or "bigquery"
    if source not in SOURCES:
        raise PermanentError(f"GCP account {name!r}: settings.source {source!r} is not one of {', '.join(SOURCES)}")
    billing = str(raw.get("billing_account_id") or account.external_id or "")
    project = str(raw.get("project") or secret.get("project_id") or "")
    endpoints = raw.get("endpoints") or {}
    if not isinstance(endpoints, dict):
        raise PermanentError(f"GCP account {name!r}: settings.endpoints must be an object of service -> URL")
    settings_check("gcp", raw)  # the egress policy (also for a row written before it existed)
    settings = GcpSettings(
        source=source,
        billing_account_id=billing,
        project=project,
        dataset=str(raw.get("dataset") or ""),
        location=raw.get("location") or None,
        bucket=str(raw.get("bucket") or ""),
        prefix=str(raw.get("prefix") or "").lstrip("/"),
        format=str(raw.get("format") or "focus"),
        projects=_str_list(raw.get("projects"), "projects", name) or ([project] if project else []),
        zones=_str_list(raw.get("zones"), "zones", name),
        endpoints={str(k): str(v) for k, v in endpoints.items()},
    )
    for key, default in (("page_size", 10_000), ("cpu_days", 14)):
        try:
            setattr(settings, key, int(raw.get(key) if raw.get(key) is not None else default))
        except (TypeError, ValueError):
            raise PermanentError(f"GCP account {name!r}: settings.{key} must be a number") from None
    if not for_costs:
        return settings
    if source == "bigquery":
        export = raw.get("export") or "detailed"
        if export not in EXPORTS:
            raise PermanentError(f"GCP account {name!r}: settings.export {export!r} is not detailed or standard")
        if not settings.project:
            raise PermanentError(
                f"GCP account {name!r}: settings.project (the project of the export dataset) is missing"
            )
        if not settings.dataset:
            raise PermanentError(f"GCP account {name!r}: settings.dataset (the billing export's dataset) is missing")
        settings.table = str(raw.get("table") or "")
        if not settings.table:
            if not billing:
                raise PermanentError(
                    f"GCP account {name!r}: settings.billing_account_id (or settings.table) is missing"
                )
            settings.table = EXPORTS[export] + billing.replace("-", "_")
    else:
        if not settings.bucket:
            raise PermanentError(f"GCP account {name!r}: settings.bucket (where the billing files are) is missing")
        if settings.format != "focus":
            raise PermanentError(f"GCP account {name!r}: settings.format {settings.format!r}: only 'focus' is read")
    return settings


def _str_list(value, key: str, name: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise PermanentError(f"GCP account {name!r}: settings.{key} must be a list of strings")


def _secret(account) -> dict:
    credential = getattr(account, "credential", None)
    if credential is None:
        return {}
    secret = credential.get_secret()
    return secret if isinstance(secret, dict) else {}


def gcp_credentials(account):
    """google.oauth2.service_account.Credentials from the account's key JSON; names a missing or bad key."""
    from google.oauth2 import service_account

    credential = getattr(account, "credential", None)
    if credential is None:
        raise PermanentError(f"GCP account {account.name!r} has no credential (a service account key JSON)")
    secret = credential.get_secret()
    if not isinstance(secret, dict):
        raise PermanentError(
            f"GCP account {account.name!r}: the credential is not a JSON object (give the service account key file)"
        )
    missing = [key for key in SERVICE_ACCOUNT_KEYS if not secret.get(key)]
    if missing:
        raise PermanentError(
            f"GCP account {account.name!r}: the service account key lacks {', '.join(missing)} "
            "(give the whole JSON key file)"
        )
    if secret["type"] != "service_account":
        raise PermanentError(f"GCP account {account.name!r}: credential type {secret['type']!r} is not service_account")
    credential_check("gcp", secret)  # token_uri and universe_domain under the egress policy
    endpoint_now(secret["token_uri"], kind=Kind.GCP, field="credentials.token_uri")
    try:
        return service_account.Credentials.from_service_account_info(secret, scopes=SCOPES)
    except ValueError as exc:  # a private_key that is not a PEM RSA key
        raise PermanentError(
            f"GCP account {account.name!r}: private_key of {secret['client_email']} cannot be read ({exc})"
        ) from None


def _options(settings: GcpSettings, service: str) -> dict | None:
    """The client's endpoint, checked by the egress policy (DNS included) right before the client is built."""
    endpoint = endpoint_now(settings.endpoints.get(service), kind=Kind.GCP, field=f"settings.endpoints.{service}")
    return {"api_endpoint": endpoint} if endpoint else None


def no_redirects(session):
    """A requests session that refuses any redirect: the token request (a signed JWT) and the API calls go to
    the checked host and nowhere else (requests would resend a 307/308's body to the new host)."""
    session.max_redirects = 0
    return session


def authorized_session(credentials):
    """The session the BigQuery and Storage clients send with: no redirects, token requests without them too."""
    from google.auth.transport.requests import AuthorizedSession

    return no_redirects(AuthorizedSession(credentials, auth_request=token_request()))


def token_request():
    """google-auth's transport for token requests, without redirects."""
    import requests
    from google.auth.transport.requests import Request

    return Request(session=no_redirects(requests.Session()))


# --- errors ---


def gcp_error(exc: Exception, what: str) -> Exception:
    """The platform's TransientError / PermanentError for an SDK exception met while doing `what`."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    message = getattr(exc, "message", None) or (exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc))
    message = " ".join(str(message).split())[:400]
    transient = (
        gexc.TooManyRequests,
        gexc.ServiceUnavailable,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.GatewayTimeout,
        gexc.DeadlineExceeded,
        gexc.RetryError,
    )
    if isinstance(exc, requests.TooManyRedirects):
        return PermanentError(f"{what}: the endpoint answered a redirect; redirects are not followed")
    if isinstance(exc, transient):
        return TransientError(f"{what}: Google Cloud answered {type(exc).__name__} ({message}); will retry")
    if isinstance(
        exc, aexc.TransportError | requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError
    ):
        return TransientError(f"{what}: network error ({message}); will retry")
    if isinstance(exc, aexc.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientError(f"{what}: the token endpoint failed ({message}); will retry")
        return PermanentError(
            f"{what}: the service account key was refused by the token endpoint ({message}); "
            "check private_key / private_key_id / client_email of the credential, or create a new key"
        )
    if isinstance(exc, gexc.Unauthenticated | gexc.Unauthorized):
        return PermanentError(f"{what}: not authenticated ({message}); check the service account key")
    if isinstance(exc, gexc.Forbidden | gexc.PermissionDenied):
        if "rateLimitExceeded" in message or "quotaExceeded" in message or _reason(exc) in {"rateLimitExceeded"}:
            return TransientError(f"{what}: Google Cloud rate limit ({message}); will retry")
        if "has not been used in project" in message or "SERVICE_DISABLED" in message:
            return PermanentError(f"{what}: the API is not enabled in the project ({message}); enable it")
        permission = PERMISSION_RE.search(message)
        missing = f"missing permission {permission.group(1)}" if permission else "permission denied"
        return PermanentError(f"{what}: {missing} ({message}); grant it to the service account")
    if isinstance(exc, gexc.NotFound):
        return PermanentError(f"{what}: not found ({message})")
    if isinstance(exc, gexc.GoogleAPICallError):
        return PermanentError(f"{what}: {type(exc).__name__} ({message})")
    return exc


def _reason(exc) -> str:
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors else {}
    return first.get("reason", "") if isinstance(first, dict) else ""


def _raise(exc: Exception, what: str):
    translated = gcp_error(exc, what)
    if translated is exc:
        raise exc
    raise translated from None


# --- the BigQuery billing export's columns to FOCUS 1.2 ---


def _month_bound(offset: int):
    def derive(arr: pa.Array) -> pa.Array:
        arr = as_text(arr)
        mapped = {}
        for value in pc.unique(arr).to_pylist():
            if value is None:
                continue
            text = value.strip()
            if re.fullmatch(r"\d{6}", text):
                year, month = int(text[:4]), int(text[4:]) + offset
                year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
                mapped[value] = f"{year:04d}-{month:02d}-01T00:00:00Z" if 1 <= int(text[4:]) <= 12 else value
            else:
                mapped[value] = value  # passed on as it is: the FOCUS check names the row
        keys = pa.array(list(mapped), pa.string())
        return pc.take(pa.array(list(mapped.values()), pa.string()), pc.index_in(arr, value_set=keys))

    return derive


def _resource_type(arr: pa.Array) -> pa.Array:
    """'//compute.googleapis.com/projects/p/zones/z/instances/123' -> 'instances' (the collection)."""
    arr = as_text(arr)
    return pc.if_else(
        pc.match_substring_regex(arr, r"/[^/]+/[^/]+$"),
        pc.replace_substring_regex(arr, r"^.*/([^/]+)/[^/]+$", r"\1"),
        pa.scalar(None, pa.string()),
    )


CHARGE_CATEGORIES = {
    "regular": "Usage",
    "tax": "Tax",
    "adjustment": "Adjustment",
    "rounding_error": "Adjustment",
    "credit": "Credit",
}
SERVICE_CATEGORIES = {
    "Compute Engine": "Compute",
    "Kubernetes Engine": "Compute",
    "Cloud Run": "Compute",
    "Cloud Run Functions": "Compute",
    "Cloud Functions": "Compute",
    "App Engine": "Compute",
    "Cloud Storage": "Storage",
    "Filestore": "Storage",
    "Cloud SQL": "Databases",
    "Cloud Spanner": "Databases",
    "Cloud Bigtable": "Databases",
    "Cloud Firestore": "Databases",
    "Cloud Memorystore for Redis": "Databases",
    "BigQuery": "Analytics",
    "Dataflow": "Analytics",
    "Cloud Dataproc": "Analytics",
    "Cloud Pub/Sub": "Integration",
    "Networking": "Networking",
    "Cloud DNS": "Networking",
    "Cloud CDN": "Networking",
    "Cloud Load Balancing": "Networking",
    "Vertex AI": "AI and Machine Learning",
    "Cloud Logging": "Management and Governance",
    "Cloud Monitoring": "Management and Governance",
    "Secret Manager": "Security",
    "Cloud Key Management Service (KMS)": "Security",
    "Artifact Registry": "Developer Tools",
    "Cloud Build": "Developer Tools",
}

BIGQUERY_EXPORT = ColumnMapping(
    "GCP Cloud Billing export to BigQuery (standard and detailed usage cost)",
    [
        Rule("BilledCost", "cost", required=True,
             how="the line's cost; on a credit row the credit's amount (negative). FLOAT64 in the export, read "
                 "as the shortest decimal that round-trips, i.e. BigQuery's own text of it"),
        Rule("EffectiveCost", "cost", fn=lambda a: a, how="= BilledCost (credits are their own rows)"),
        Rule("ContractedCost", "cost", fn=lambda a: a, how="= BilledCost (the export has negotiated prices)"),
        Rule("ListCost", ("cost_at_list", "cost"), fn=coalesce,
             how="cost_at_list; 0 on credit rows; the cost where the export has no cost_at_list"),
        Rule("BillingCurrency", "currency", required=True),
        Rule("BillingAccountId", "billing_account_id", required=True),
        Rule("BillingAccountName", "billing_account_id", fn=lambda a: a,
             how="the billing account id (the export has no name)"),
        Rule("BillingAccountType", const="Billing Account"),
        Rule("BillingPeriodStart", "invoice.month", required=True, fn=_month_bound(0),
             how="invoice.month YYYYMM -> the first day of that month, 00:00 UTC"),
        Rule("BillingPeriodEnd", "invoice.month", fn=_month_bound(1),
             how="invoice.month YYYYMM -> the first day of the next month, 00:00 UTC"),
        Rule("ChargePeriodStart", "usage_start_time"),
        Rule("ChargePeriodEnd", "usage_end_time"),
        Rule("ChargeCategory", "cost_type", fn=lookup(CHARGE_CATEGORIES, default="Adjustment"),
             how="regular -> Usage, tax -> Tax, adjustment and rounding_error -> Adjustment; each credit row "
                 "-> Credit; an unknown cost_type -> Adjustment"),
        Rule("ChargeClass", "adjustment_info.type", fn=lambda a: pc.if_else(
                 pc.is_valid(as_text(a)), pa.scalar("Correction"), pa.scalar(None, pa.string())),
             how="Correction when adjustment_info says the line corrects earlier usage, else empty"),
        Rule("ChargeDescription", ("credit.full_name", "credit.name", "sku.description"), fn=coalesce,
             how="sku.description; on a credit row the credit's full_name (else name)"),
        Rule("ChargeFrequency", "cost_type",
             fn=lookup({"regular": "Usage-Based", "credit": "Usage-Based", "tax": "Recurring"}, default="One-Time"),
             how="regular and credits -> Usage-Based, tax -> Recurring, adjustments -> One-Time"),
        Rule("ConsumedQuantity", "usage.amount", how="usage.amount (empty on credit rows)"),
        Rule("ConsumedUnit", "usage.unit"),
        Rule("PricingQuantity", "usage.amount_in_pricing_units"),
        Rule("PricingUnit", "usage.pricing_unit"),
        Rule("ContractedUnitPrice", "price.effective_price", how="price.effective_price (detailed export only)"),
        Rule("InvoiceIssuerName", const=PROVIDER),
        Rule("ProviderName", const=PROVIDER),
        Rule("PublisherName", ("seller_name",), fn=lambda a: pc.fill_null(coalesce(a), PROVIDER),
             how="seller_name (Marketplace lines), else Google Cloud"),
        Rule("RegionId", "location.region"),
        Rule("RegionName", "location.region", fn=lambda a: a, how="= RegionId (the export has no display name)"),
        Rule("AvailabilityZone", "location.zone"),
        Rule("ResourceId", "resource.global_name",
             how="resource.global_name as written (detailed export; empty in the standard one)"),
        Rule("ResourceName", ("resource.name", "resource.global_name"), fn=coalesce,
             how="resource.name, else global_name"),
        Rule("ResourceType", "resource.global_name", fn=_resource_type,
             how="the collection in resource.global_name: instances, disks, addresses, snapshots, buckets …"),
        Rule("ServiceName", "service.description", required=True),
        Rule("ServiceCategory", "service.description", fn=lookup(SERVICE_CATEGORIES, default="Other"),
             how="service.description through a table (Compute Engine -> Compute, Cloud Storage -> Storage, "
                 "BigQuery -> Analytics, Cloud SQL -> Databases, Networking -> Networking …); others -> Other"),
        Rule("SkuId", "sku.id"),
        Rule("SkuPriceId", ("credit.id", "sku.id"), fn=coalesce, how="sku.id; the credit's id on a credit row"),
        Rule("SubAccountId", "project.id"),
        Rule("SubAccountName", "project.name"),
        Rule("SubAccountType", "project.id", fn=lambda a: pc.if_else(
                 pc.is_valid(as_text(a)), pa.scalar("Project"), pa.scalar(None, pa.string())),
             how="Project when the line has a project"),
        Rule("Tags", "tags_json",
             how="a JSON object of the line's labels, then its project's labels (key not already set), then "
                 "resource manager tags as 'namespace/key' (the export's key/value arrays)"),
    ],
)  # fmt: skip

# The export columns the query reads (those the table has), and the ones it must have.
EXPORT_COLUMNS = (
    "billing_account_id", "service", "sku", "usage_start_time", "usage_end_time", "project", "labels", "tags",
    "location", "cost", "currency", "usage", "credits", "invoice", "cost_type", "cost_at_list", "resource",
    "price", "adjustment_info", "seller_name",
)  # fmt: skip
EXPORT_REQUIRED = ("billing_account_id", "service", "usage_start_time", "usage_end_time", "cost", "currency", "invoice")
FLAT_COLUMNS = sorted(BIGQUERY_EXPORT.source_columns)


def _num(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _ts(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _pairs(items) -> dict[str, str]:
    out = {}
    for item in items or []:
        key = item.get("key")
        if key is not None:
            out[str(key)] = "" if item.get("value") is None else str(item.get("value"))
    return out


def export_rows_flatten(rows) -> dict[str, list]:
    """BigQuery rows (the client's Row objects, nested records as dicts) -> flat columns for BIGQUERY_EXPORT.

    One output row per export line, plus one per entry of its `credits` array (see the module docstring).
    """
    cols: dict[str, list] = {name: [] for name in FLAT_COLUMNS}
    for row in rows:
        get = row.get
        service, sku = get("service") or {}, get("sku") or {}
        project, location = get("project") or {}, get("location") or {}
        usage, invoice = get("usage") or {}, get("invoice") or {}
        resource, price = get("resource") or {}, get("price") or {}
        tags = _pairs(get("labels"))
        for key, value in _pairs(project.get("labels")).items():
            tags.setdefault(key, value)
        for tag in get("tags") or []:
            if tag.get("key") is not None:
                key = f"{tag['namespace']}/{tag['key']}" if tag.get("namespace") else str(tag["key"])
                tags.setdefault(key, "" if tag.get("value") is None else str(tag["value"]))
        line = {
            "billing_account_id": get("billing_account_id"),
            "service.description": service.get("description"),
            "sku.id": sku.get("id"),
            "sku.description": sku.get("description"),
            "usage_start_time": _ts(get("usage_start_time")),
            "usage_end_time": _ts(get("usage_end_time")),
            "project.id": project.get("id"),
            "project.name": project.get("name"),
            "location.region": location.get("region") or location.get("location"),
            "location.zone": location.get("zone"),
            "cost": _num(get("cost")),
            "cost_at_list": _num(get("cost_at_list")),
            "currency": get("currency"),
            "usage.amount": _num(usage.get("amount")),
            "usage.unit": usage.get("unit"),
            "usage.amount_in_pricing_units": _num(usage.get("amount_in_pricing_units")),
            "usage.pricing_unit": usage.get("pricing_unit"),
            "invoice.month": invoice.get("month"),
            "cost_type": get("cost_type") or "regular",
            "adjustment_info.type": (get("adjustment_info") or {}).get("type"),
            "resource.name": resource.get("name"),
            "resource.global_name": resource.get("global_name"),
            "price.effective_price": _num(price.get("effective_price")),
            "seller_name": get("seller_name"),
            "tags_json": json.dumps(tags, sort_keys=True) if tags else None,
            "credit.full_name": None,
            "credit.name": None,
            "credit.id": None,
        }
        for name in FLAT_COLUMNS:
            cols[name].append(line.get(name))
        for credit in get("credits") or []:
            credit_line = dict(line)
            credit_line.update(
                {
                    "cost": _num(credit.get("amount")),
                    "cost_at_list": "0",
                    "cost_type": "credit",
                    "usage.amount": None,
                    "usage.unit": None,
                    "usage.amount_in_pricing_units": None,
                    "usage.pricing_unit": None,
                    "price.effective_price": None,
                    "credit.full_name": credit.get("full_name"),
                    "credit.name": credit.get("name") or credit.get("type"),
                    "credit.id": credit.get("id"),
                }
            )
            for name in FLAT_COLUMNS:
                cols[name].append(credit_line.get(name))
    return cols


def _period(month: str) -> str:
    return f"{month[:4]}-{month[4:6]}"


# --- cost source: BigQuery ---


class BigQueryExportSource(CostSource):
    """The Cloud Billing export table, read month by month; an unchanged month (same fingerprint) is skipped."""

    def __init__(self, account, settings: GcpSettings | None = None):
        super().__init__(account)
        self.settings = settings or gcp_settings(account)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from google.cloud import bigquery

            credentials = gcp_credentials(self.account)
            self._client = bigquery.Client(
                project=self.settings.project,
                credentials=credentials,
                location=self.settings.location,
                client_options=_options(self.settings, "bigquery"),
                _http=authorized_session(credentials),
            )
        return self._client

    def table_columns(self) -> list[str]:
        """The export columns the table has (tables.get); PermanentError when it is missing or not an export."""
        what = f"BigQuery table {self.settings.table_id}"
        try:
            table = self.client.get_table(self.settings.table_id, retry=None)
        except Exception as exc:  # noqa: BLE001  (translated)
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.NotFound):
                raise PermanentError(
                    f"{what} not found: no export yet (Cloud Billing creates the table a few hours after the "
                    "export to BigQuery is enabled), or settings.project/dataset/table point elsewhere"
                ) from None
            _raise(exc, what)
        names = [f.name for f in table.schema]
        missing = [c for c in EXPORT_REQUIRED if c not in names]
        if missing:
            raise PermanentError(f"{what} is not a Cloud Billing export: column {', '.join(missing)} missing")
        return [c for c in EXPORT_COLUMNS if c in names]

    def _query(self, sql: str, month: str | None, what: str):
        from google.cloud import bigquery

        params = [bigquery.ScalarQueryParameter("month", "STRING", month)] if month else []
        config = bigquery.QueryJobConfig(query_parameters=params, use_legacy_sql=False)
        try:
            job = self.client.query(sql, job_config=config, retry=None, job_retry=None)
            return job.result(page_size=self.settings.page_size, retry=None)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, what)

    def month_fingerprints(self, billing_period: str | None = None) -> dict[str, str]:
        """ "YYYY-MM" -> fingerprint of that invoice month: row count, exact sum of cost, latest export_time."""
        where = "WHERE invoice.month = @month" if billing_period else "WHERE invoice.month IS NOT NULL"
        sql = (
            "SELECT invoice.month AS month, COUNT(*) AS row_count, SUM(CAST(cost AS NUMERIC)) AS cost, "  # noqa: S608
            f"MAX(export_time) AS last_export FROM `{self.settings.table_id}` {where} GROUP BY month ORDER BY month"
        )
        month = billing_period.replace("-", "") if billing_period else None
        rows = self._query(sql, month, f"fingerprint query on {self.settings.table_id}")
        out = {}
        try:
            for row in rows:
                text = "|".join(
                    [self.settings.table_id, str(row["month"]), str(row["row_count"]),
                     str(Decimal(str(row["cost"] or 0)).normalize()), _ts(row["last_export"]) or ""]
                )  # fmt: skip
                out[_period(row["month"])] = hashlib.sha256(text.encode()).hexdigest()
        except Exception as exc:  # noqa: BLE001
            _raise(exc, f"fingerprint query on {self.settings.table_id}")
        return out

    def batches(self, *, billing_period: str | None = None) -> Iterator[CostBatch]:
        columns = self.table_columns()
        for period, fingerprint in sorted(self.month_fingerprints(billing_period).items()):
            if self.known_fingerprints.get(period) == fingerprint:
                self.unchanged_periods.append(period)
                continue
            self.fingerprints[period] = fingerprint
            yield from self._month_batches(period, columns)

    def _month_batches(self, period: str, columns: list[str]) -> Iterator[CostBatch]:
        name = f"{self.settings.table_id} invoice.month {period.replace('-', '')}"
        self.files.append(name)
        sql = f"SELECT {', '.join(columns)} FROM `{self.settings.table_id}` WHERE invoice.month = @month"  # noqa: S608
        rows = self._query(sql, period.replace("-", ""), f"query of {name}")
        row = 1
        try:
            for page in rows.pages:
                flat = export_rows_flatten(page)
                n = len(flat["cost"])
                if not n:
                    continue
                self.rows_read += n
                raw = pa.table({key: pa.array(values, pa.string()) for key, values in flat.items()})
                table = normalise(BIGQUERY_EXPORT.apply(raw), file=name, first_row=row, report=self.report)
                counts = pc.value_counts(pc.strftime(table["BillingPeriodStart"], "%Y-%m"))
                periods = {c["values"].as_py(): c["counts"].as_py() for c in counts if c["values"].is_valid}
                batch = CostBatch(name, row, table, periods)
                row += n
                if not self.report.has_errors:
                    yield batch
        except (PermanentError, TransientError):
            raise
        except Exception as exc:  # noqa: BLE001  (a page that failed mid-stream)
            _raise(exc, f"reading {name} (after row {row - 1})")


# --- cost source: billing files in GCS ---


class GcsExportSource(ExportCostSource):
    """gs://bucket/prefix: FOCUS files grouped by the billing period in their path; generation is the ETag."""

    def __init__(self, account, settings: GcpSettings | None = None):
        super().__init__(account)
        self.settings = settings or gcp_settings(account)
        self._bucket = None

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            credentials = gcp_credentials(self.account)
            client = storage.Client(
                project=self.settings.project or None,
                credentials=credentials,
                client_options=_options(self.settings, "storage"),
                _http=authorized_session(credentials),
            )
            self._bucket = client.bucket(self.settings.bucket)
        return self._bucket

    @property
    def where(self) -> str:
        return f"gs://{self.settings.bucket}/{self.settings.prefix}"

    def export_files(self) -> list[ExportFile]:
        try:
            blobs = list(self.bucket.list_blobs(prefix=self.settings.prefix or None, retry=None))
        except Exception as exc:  # noqa: BLE001
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.NotFound):
                raise PermanentError(f"bucket gs://{self.settings.bucket} not found (settings.bucket)") from None
            _raise(exc, f"listing {self.where}")
        return [
            ExportFile(blob.name, str(blob.generation or blob.etag or ""), blob.size or 0)
            for blob in blobs
            if blob.name.lower().endswith(SUFFIXES)
        ]

    def deliveries(self, *, billing_period: str | None = None) -> list[Delivery]:
        by_period: dict[str, list[ExportFile]] = {}
        for file in self.export_files():
            found = PERIOD_IN_KEY.search(file.key[len(self.settings.prefix) :])
            if not found:
                raise PermanentError(
                    f"gs://{self.settings.bucket}/{file.key}: no billing period (YYYY-MM or YYYYMM) in its path; "
                    f"put each month's files under {self.where.rstrip('/')}/YYYY-MM/"
                )
            by_period.setdefault(f"{found.group(1)}-{found.group(2)}", []).append(file)
        return [
            Delivery(period, sorted(files, key=lambda f: f.key), None, label=f"{self.where} {period}")
            for period, files in sorted(by_period.items())
            if billing_period in (None, period)
        ]

    def download(self, file: ExportFile, dest: Path) -> None:
        blob = self.bucket.blob(file.key)
        try:
            blob.download_to_filename(str(dest), retry=None)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, f"downloading gs://{self.settings.bucket}/{file.key}")


# --- resources: Compute Engine ---


def _id_path(self_link: str, numeric_id) -> str:
    """'https://…/compute/v1/projects/p/zones/z/instances/web-1' + 123
    -> '//compute.googleapis.com/projects/p/zones/z/instances/123'."""
    path = self_link.split("/compute/v1/", 1)[-1] if "/compute/v1/" in self_link else self_link.lstrip("/")
    head = path.rsplit("/", 1)[0]
    return f"//compute.googleapis.com/{head}/{numeric_id}"


def _link_path(self_link: str) -> str:
    return self_link.split("/compute/v1/", 1)[-1] if "/compute/v1/" in (self_link or "") else (self_link or "")


def _last(url: str) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def _time(text: str) -> str:
    """RFC 3339 with an offset ('2024-09-01T10:00:00.000-07:00') -> ISO-8601 UTC."""
    if not text:
        return ""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).isoformat()
    except ValueError:
        return text


class ComputeResourceSource(ResourceSource):
    """Instances, disks, addresses (aggregatedList per project) and snapshots (global list) of settings.projects."""

    def __init__(self, account, settings: GcpSettings | None = None):
        super().__init__(account)
        self.settings = settings or gcp_settings(account, for_costs=False)
        self._credentials = None
        if not self.settings.projects:
            raise PermanentError(f"GCP account {account.name!r}: settings.projects (for the inventory) is missing")

    def _client(self, cls):
        if self._credentials is None:  # one key parse (and one token) for all of the listing's clients
            self._credentials = gcp_credentials(self.account)
        return cls(credentials=self._credentials, client_options=_options(self.settings, "compute"))

    def _zone_ok(self, scope: str) -> bool:
        if not self.settings.zones:
            return True
        name = _last(scope)
        regions = {z.rsplit("-", 1)[0] for z in self.settings.zones}
        return name in self.settings.zones or name in regions or scope == "global"

    def _aggregated(self, cls, project: str, permission: str):
        from google.cloud import compute_v1

        request_type = {
            "InstancesClient": compute_v1.AggregatedListInstancesRequest,
            "DisksClient": compute_v1.AggregatedListDisksRequest,
            "AddressesClient": compute_v1.AggregatedListAddressesRequest,
        }[cls.__name__]
        client = self._client(cls)
        try:
            pager = client.aggregated_list(request=request_type(project=project, max_results=500), retry=None)
            out = []
            for scope, scoped in pager:
                if not self._zone_ok(scope):
                    continue
                items = getattr(
                    scoped, {"InstancesClient": "instances", "DisksClient": "disks"}.get(cls.__name__, "addresses")
                )
                out.extend(items)
            return out
        except Exception as exc:  # noqa: BLE001
            _raise(exc, f"{permission} on project {project}")

    def resources(self) -> Iterator[dict]:
        from google.cloud import compute_v1

        for project in self.settings.projects:
            instances = self._aggregated(compute_v1.InstancesClient, project, "compute.instances.list")
            disks = self._aggregated(compute_v1.DisksClient, project, "compute.disks.list")
            addresses = self._aggregated(compute_v1.AddressesClient, project, "compute.addresses.list")
            try:
                snapshots = list(
                    self._client(compute_v1.SnapshotsClient).list(
                        request=compute_v1.ListSnapshotsRequest(project=project, max_results=500), retry=None
                    )
                )
            except Exception as exc:  # noqa: BLE001
                _raise(exc, f"compute.snapshots.list on project {project}")
            ids = {_link_path(i.self_link): _id_path(i.self_link, i.id) for i in instances}
            ids.update({_link_path(d.self_link): _id_path(d.self_link, d.id) for d in disks})
            running = any(i.status == "RUNNING" for i in instances)
            cpu = self.cpu_hourly(project) if running and self.settings.cpu_days > 0 else {}
            for instance in instances:
                row = self._instance(instance, ids)
                hours = cpu.get(str(instance.id))
                if hours:
                    row["attributes"]["cpu_hourly"], row["attributes"]["cpu_hourly_end"] = hours
                yield row
            for disk in disks:
                yield self._disk(disk, ids)
            for snapshot in snapshots:
                yield self._snapshot(snapshot, ids)
            for address in addresses:
                yield self._address(address, ids)

    def cpu_hourly(self, project: str, now: datetime | None = None) -> dict[str, tuple[list[float], str]]:
        """instance id -> (hourly mean CPU utilisation in percent, oldest first; end of the last hour), from
        Cloud Monitoring's compute.googleapis.com/instance/cpu/utilization (timeSeries.list over REST).

        Without monitoring.timeSeries.list the inventory is still listed, without CPU (logged)."""
        from datetime import timedelta

        import requests

        end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=self.settings.cpu_days)
        monitoring = self.settings.endpoints.get("monitoring")
        base = endpoint_now(monitoring, kind=Kind.GCP, field="settings.endpoints.monitoring")
        base = base or "https://monitoring.googleapis.com"
        params = {
            "filter": 'metric.type = "compute.googleapis.com/instance/cpu/utilization" '
            'AND resource.type = "gce_instance"',
            "interval.startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "interval.endTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "aggregation.alignmentPeriod": "3600s",
            "aggregation.perSeriesAligner": "ALIGN_MEAN",
            "view": "FULL",
        }
        session = authorized_session(self._credentials or gcp_credentials(self.account))
        what = f"monitoring.timeSeries.list on project {project}"
        out: dict[str, tuple[list[float], str]] = {}
        token = None
        while True:
            try:
                response = session.get(
                    f"{base.rstrip('/')}/v3/projects/{project}/timeSeries",
                    params={**params, **({"pageToken": token} if token else {})},
                    timeout=60,
                )
            except (requests.RequestException, Exception) as exc:  # noqa: BLE001
                _raise(exc, what)
            if response.status_code == 403:
                logger.warning("%s: permission denied; instances listed without CPU utilisation", what)
                return {}
            if response.status_code >= 400:
                from google.api_core import exceptions as gexc

                if "json" not in response.headers.get("content-type", ""):
                    # Not Google's JSON error: its body is no message for the user (nor for a dead letter).
                    response._content = b""  # noqa: SLF001
                _raise(gexc.from_http_response(response), what)
            body = response.json()
            for series in body.get("timeSeries", []):
                instance_id = (series.get("resource", {}).get("labels", {}) or {}).get("instance_id")
                points = sorted(series.get("points", []), key=lambda p: p["interval"]["endTime"])
                if not instance_id or not points:
                    continue
                values = [round(float(p["value"].get("doubleValue", 0.0)) * 100, 2) for p in points]
                out[instance_id] = (values, _time(points[-1]["interval"]["endTime"]))
            token = body.get("nextPageToken")
            if not token:
                return out

    @staticmethod
    def _base(item, kind: str, service: str, region: str, state: str) -> dict:
        return {
            "resource_id": _id_path(item.self_link, item.id),
            "resource_type": kind,
            "service_name": service,
            "region": region,
            "name": item.name,
            "state": state,
            "tags": dict(item.labels),
        }

    def _instance(self, instance, ids: dict) -> dict:
        zone = _last(instance.zone)
        status = instance.status.lower()
        row = self._base(instance, "instance", "Compute Engine", zone.rsplit("-", 1)[0], status)
        attributes = {
            "created_at": _time(instance.creation_timestamp),
            "instance_type": _last(instance.machine_type),
            "attached_volume_ids": [ids.get(_link_path(d.source), _link_path(d.source)) for d in instance.disks],
            "zone": zone,
        }
        if status in ("terminated", "stopped", "suspended") and instance.last_stop_timestamp:
            attributes["stopped_at"] = _time(instance.last_stop_timestamp)
        row["attributes"] = attributes
        return row

    def _disk(self, disk, ids: dict) -> dict:
        scope = _last(disk.zone) if disk.zone else _last(disk.region)
        region = scope.rsplit("-", 1)[0] if disk.zone else scope
        attached = [ids.get(_link_path(u), _link_path(u)) for u in disk.users]
        row = self._base(disk, "volume", "Compute Engine", region, "in-use" if attached else "available")
        row["attributes"] = {
            "created_at": _time(disk.creation_timestamp),
            "size_gb": int(disk.size_gb),
            "volume_type": _last(disk.type_),
            "attached_to": attached,
        }
        return row

    def _snapshot(self, snapshot, ids: dict) -> dict:
        row = self._base(snapshot, "snapshot", "Compute Engine", "", snapshot.status.lower())
        source = ""
        if snapshot.source_disk:
            path = _link_path(snapshot.source_disk)
            source = ids.get(path) or (
                _id_path(snapshot.source_disk, snapshot.source_disk_id) if snapshot.source_disk_id else path
            )
        row["attributes"] = {
            "created_at": _time(snapshot.creation_timestamp),
            "size_gb": int(snapshot.disk_size_gb),
            "source_volume_id": source,
        }
        return row

    def _address(self, address, ids: dict) -> dict:
        region = _last(address.region) if address.region else "global"
        users = [ids.get(_link_path(u), _link_path(u)) for u in address.users]
        row = self._base(address, "ip_address", "Networking", region, address.status.lower())
        row["attributes"] = {
            "created_at": _time(address.creation_timestamp),
            "address": address.address,
            "associated_with": users[0] if users else "",
            "address_type": address.address_type.lower(),
        }
        return row


# --- the registry's three entry points ---


def cost_source(account) -> CostSource:
    settings = gcp_settings(account)
    if settings.source == "gcs":
        return GcsExportSource(account, settings)
    return BigQueryExportSource(account, settings)


def resource_source(account) -> ResourceSource:
    return ComputeResourceSource(account, gcp_settings(account, for_costs=False))


def connection_check(account) -> ConnectionReport:
    """Credentials (a token from the key), the export (table or bucket) and Compute Engine listing; never raises."""
    report = ConnectionReport(provider=account.provider, account=account.name)
    try:
        settings = gcp_settings(account, for_costs=False)  # first: its egress check refuses before any token request
        credentials = gcp_credentials(account)
    except (PermanentError, TransientError) as exc:
        report.failed("credentials", str(exc))
        return report
    try:
        credentials.refresh(token_request())
        report.passed("credentials", f"token issued to {credentials.service_account_email}")
    except Exception as exc:  # noqa: BLE001
        report.failed("credentials", str(gcp_error(exc, f"token for {credentials.service_account_email}")))
        return report
    try:
        settings = gcp_settings(account)
    except PermanentError as exc:
        report.failed("settings", str(exc))
        return report
    if settings.source == "bigquery":
        source = BigQueryExportSource(account, settings)
        name = f"BigQuery table {settings.table_id}"
        try:
            source.table_columns()
            months = source.month_fingerprints()
        except Exception as exc:  # noqa: BLE001
            report.failed(name, str(gcp_error(exc, name)))
        else:
            if months:
                report.passed(name, f"invoice months {', '.join(sorted(months))}")
            else:
                report.failed(name, "no export yet: the table has no rows")
    else:
        source = GcsExportSource(account, settings)
        name = f"bucket {source.where}"
        try:
            files = source.export_files()
        except Exception as exc:  # noqa: BLE001
            report.failed(name, str(gcp_error(exc, name)))
        else:
            if files:
                report.passed(name, f"{len(files)} export file(s)")
            else:
                report.failed(name, f"no export yet: no *.csv, *.csv.gz or *.parquet under {source.where}")
    try:
        inventory = ComputeResourceSource(account, settings)
    except PermanentError as exc:
        report.failed("compute.instances.list", str(exc))
        return report
    from google.cloud import compute_v1

    for project in settings.projects:
        name = f"compute.instances.list on project {project}"
        try:
            client = inventory._client(compute_v1.InstancesClient)
            pager = client.aggregated_list(
                request=compute_v1.AggregatedListInstancesRequest(project=project, max_results=1), retry=None
            )
            next(iter(pager.pages), None)
            report.passed(name)
        except Exception as exc:  # noqa: BLE001
            report.failed(name, str(gcp_error(exc, name)))
    return report
