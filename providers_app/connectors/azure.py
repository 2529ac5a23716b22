"""Azure: Cost Management exports in Blob storage (actual, amortized, FOCUS) and the ARM inventory of VMs,
managed disks, public IPs and snapshots, through azure-identity, azure-storage-blob and azure-mgmt-*.

Account settings (CloudAccount.settings, JSON):

    {
      "subscription_ids": ["<guid>", ...],          # inventory; defaults to [external_id]
      "storage_account_url": "https://<account>.blob.core.windows.net",
      "container": "cost-exports",                   # the export's storage container
      "directory": "finops",                         # the export's directory in it ("" for the root)
      "export_name": "daily-actual",                 # the export's name (a folder under directory)
      "dataset": "ActualCost",                       # ActualCost | AmortizedCost | FocusCost; only read when
                                                     #   a run has no manifest.json (older exports)
      "cpu_lookback_hours": 168,                     # hourly CPU history per VM (Azure Monitor), 0 = none
      # overrides, for sovereign clouds, proxies that re-sign TLS, and the tests' local servers:
      "authority_host": "login.microsoftonline.com", "arm_endpoint": "https://management.azure.com",
      "storage_account_name": "<account>",           # when the URL does not start with it (Azurite)
      "ca_bundle": "/path/to/ca.pem", "sdk_retry_total": 1
    }

Credential (encrypted Credential, JSON): a service principal, used for ARM and, by default, for storage:

    {"tenant_id": "<guid>", "client_id": "<app id>", "client_secret": "<secret value>"}

optionally with "storage_account_key": "<key>" or "storage_sas_token": "<sv=...&sig=...>" for the storage
account instead of the service principal (an account key is what Azurite accepts; a SAS needs Read + List on
the container). RBAC: Reader on each subscription (inventory; Monitoring Reader is part of Reader) and
Storage Blob Data Reader on the container (unless a key or SAS is given).

Export layout (what Cost Management writes; see `export_runs`):

    <container>/<directory>/<export_name>/<YYYYMMDD-YYYYMMDD>/<run id>/manifest.json + part_*.csv(.gz)|.parquet
    <container>/<directory>/<export_name>/<YYYYMMDD-YYYYMMDD>/<export_name>_<run id>.csv     (older exports)

Every run holds the whole billing period as of its run (month-to-date for daily runs), so for each billing
period the newest *complete* run wins: a run folder counts once its manifest.json is there and every blob it
lists exists (runs are ordered by the manifest's runInfo.submittedTime); a single-file run is complete and is
ordered by the blob's last-modified time. A run folder without a manifest is still being written and is
skipped. The files' ETags fingerprint the period, so an unchanged period is not downloaded again.

The SDKs retry at most `sdk_retry_total` times (default 1): the platform's policy (backoff, dead letter) does
the rest. Throttling, 5xx and network errors become TransientError; rejected credentials, missing
permissions (the ARM action is named), missing containers and subscriptions become PermanentError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from finops.egress import Kind, authority_url
from finops.errors import PermanentError, TransientError

from .base import ConnectionReport, ResourceSource
from .endpoints import endpoint_now, settings_check
from .exports import Delivery, ExportCostSource, ExportFile
from .mapping import ColumnMapping, Rule, as_text, coalesce, lookup

logger = logging.getLogger(__name__)
# The SDK logs every request and response header at INFO; keep the worker's log to what matters.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
logging.getLogger("azure.identity").setLevel(logging.ERROR)  # its failures reach the user through our errors

ARM_SCOPE = "https://management.azure.com/.default"
DATASETS = ("ActualCost", "AmortizedCost", "FocusCost")
DATA_SUFFIXES = (".csv", ".csv.gz", ".gz", ".parquet")
PERIOD_FOLDER_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})-(\d{8})$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# AADSTS codes that point at one credential key.
AADSTS_KEYS = {
    "7000215": "client_secret",  # invalid client secret
    "7000222": "client_secret",  # expired client secret
    "700016": "client_id",  # application not found in the directory
    "700024": "client_id",
    "90002": "tenant_id",  # tenant not found
    "900023": "tenant_id",  # tenant id malformed
}


# --- configuration ---


@dataclass
class AzureConfig:
    account_name: str  # our CloudAccount's name, for messages
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    subscription_ids: list[str]
    storage_account_url: str = ""
    storage_account_name: str = ""
    container: str = ""
    directory: str = ""
    export_name: str = ""
    dataset: str = ""
    storage_account_key: str = field(default="", repr=False)
    storage_sas_token: str = field(default="", repr=False)
    authority_host: str = "login.microsoftonline.com"
    arm_endpoint: str = "https://management.azure.com"
    ca_bundle: str = ""
    cpu_lookback_hours: int = 168
    sdk_retry_total: int = 1

    @property
    def export_prefix(self) -> str:
        return "/".join(part.strip("/") for part in (self.directory, self.export_name) if part.strip("/")) + "/"

    def transport(self) -> dict:
        """Keyword arguments every SDK client and the credential take: few retries, the CA bundle if any."""
        # No redirects (azure-core's RedirectPolicy would follow one to any host): the checked endpoint is the one
        # called. azure-identity's token pipeline has no redirect policy at all.
        kwargs: dict = {"retry_total": self.sdk_retry_total, "retry_backoff_factor": 0.2, "permit_redirects": False}
        if self.ca_bundle:
            kwargs["connection_verify"] = self.ca_bundle
        return kwargs


def azure_config(account) -> AzureConfig:
    """The account's settings and credential, validated; a PermanentError names the bad or missing key."""
    settings = account.settings or {}
    if not isinstance(settings, dict):
        raise PermanentError(f"Azure account {account.name!r}: settings must be a JSON object")
    settings_check("azure", settings)  # the egress policy (also for a row written before it existed)
    credential = getattr(account, "credential", None)
    if credential is None:
        raise PermanentError(
            f"Azure account {account.name!r} has no credential: give a service principal "
            '{"tenant_id": ..., "client_id": ..., "client_secret": ...}'
        )
    secret = credential.get_secret()
    if not isinstance(secret, dict):
        raise PermanentError(
            f"Azure account {account.name!r}: the credential must be a JSON object with tenant_id, client_id and "
            "client_secret"
        )
    missing = [key for key in ("tenant_id", "client_id", "client_secret") if not str(secret.get(key) or "").strip()]
    if missing:
        raise PermanentError(f"Azure account {account.name!r}: the credential lacks {', '.join(missing)}")
    tenant = str(secret["tenant_id"]).strip()
    if not (GUID_RE.match(tenant) or re.match(r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$", tenant)):
        raise PermanentError(
            f"Azure account {account.name!r}: credential tenant_id {tenant!r} is neither a GUID nor a domain"
        )
    subscriptions = settings.get("subscription_ids")
    if subscriptions is None:
        subscriptions = [account.external_id] if account.external_id else []
    if isinstance(subscriptions, str):
        subscriptions = [subscriptions]
    if not isinstance(subscriptions, list) or not all(isinstance(s, str) for s in subscriptions):
        raise PermanentError(f"Azure account {account.name!r}: settings.subscription_ids must be a list of GUIDs")
    bad = [s for s in subscriptions if not GUID_RE.match(s.strip())]
    if bad:
        raise PermanentError(f"Azure account {account.name!r}: settings.subscription_ids has {bad[0]!r}, not a GUID")
    dataset = str(settings.get("dataset") or "")
    if dataset and dataset not in DATASETS:
        raise PermanentError(
            f"Azure account {account.name!r}: settings.dataset {dataset!r} is not one of {', '.join(DATASETS)}"
        )
    try:
        lookback = int(settings.get("cpu_lookback_hours", 168))
        retries = int(settings.get("sdk_retry_total", 1))
    except (TypeError, ValueError):
        raise PermanentError(
            f"Azure account {account.name!r}: settings.cpu_lookback_hours and sdk_retry_total are whole numbers"
        ) from None
    url = str(settings.get("storage_account_url") or "").rstrip("/")
    if url and urlsplit(url).scheme not in ("http", "https"):
        raise PermanentError(f"Azure account {account.name!r}: settings.storage_account_url {url!r} is not a URL")
    arm_endpoint = str(settings.get("arm_endpoint") or "https://management.azure.com").rstrip("/")
    if not arm_endpoint.startswith("https://"):
        raise PermanentError(f"Azure account {account.name!r}: settings.arm_endpoint {arm_endpoint!r} must be https")
    ca_bundle = str(settings.get("ca_bundle") or "")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise PermanentError(f"Azure account {account.name!r}: settings.ca_bundle {ca_bundle!r} is not a file")
    return AzureConfig(
        account_name=account.name,
        tenant_id=tenant,
        client_id=str(secret["client_id"]).strip(),
        client_secret=str(secret["client_secret"]),
        subscription_ids=[s.strip().lower() for s in subscriptions],
        storage_account_url=url,
        storage_account_name=str(settings.get("storage_account_name") or ""),
        container=str(settings.get("container") or ""),
        directory=str(settings.get("directory") or ""),
        export_name=str(settings.get("export_name") or ""),
        dataset=dataset,
        storage_account_key=str(secret.get("storage_account_key") or ""),
        storage_sas_token=str(secret.get("storage_sas_token") or "").lstrip("?"),
        authority_host=str(settings.get("authority_host") or "login.microsoftonline.com"),
        arm_endpoint=arm_endpoint,
        ca_bundle=ca_bundle,
        cpu_lookback_hours=max(0, lookback),
        sdk_retry_total=max(0, retries),
    )


def storage_account_name(config: AzureConfig) -> str:
    """The storage account's name: from settings, else the URL's first host label (or first path segment for
    emulator-style URLs such as http://127.0.0.1:10000/devstoreaccount1)."""
    if config.storage_account_name:
        return config.storage_account_name
    parts = urlsplit(config.storage_account_url)
    host = parts.hostname or ""
    if re.match(r"^[\d.]+$", host) or host == "localhost":
        return parts.path.strip("/").split("/")[0]
    return host.split(".")[0]


# --- clients ---


def _credential(config: AzureConfig):
    from azure.identity import ClientSecretCredential

    # The client_secret goes to the authority: checked (DNS included) right before the credential is built.
    endpoint_now(authority_url(config.authority_host), kind=Kind.AZURE_AUTHORITY, field="settings.authority_host")
    return ClientSecretCredential(
        config.tenant_id,
        config.client_id,
        config.client_secret,
        authority=config.authority_host,
        disable_instance_discovery=config.authority_host != "login.microsoftonline.com",
        **config.transport(),
    )


def _container_client(config: AzureConfig, credential=None):
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.storage.blob import BlobServiceClient

    if not config.storage_account_url or not config.container:
        missing = "storage_account_url" if not config.storage_account_url else "container"
        raise PermanentError(
            f"Azure account {config.account_name!r}: settings.{missing} is not set (where the Cost Management "
            "export is delivered)"
        )
    if config.storage_account_key:
        storage_credential = AzureNamedKeyCredential(storage_account_name(config), config.storage_account_key)
    elif config.storage_sas_token:
        storage_credential = AzureSasCredential(config.storage_sas_token)
    else:
        if not config.storage_account_url.startswith("https://"):
            raise PermanentError(
                f"Azure account {config.account_name!r}: settings.storage_account_url {config.storage_account_url!r} "
                "is not https: the service principal's token is only sent over TLS (use https, or put "
                "storage_account_key or storage_sas_token in the credential)"
            )
        storage_credential = credential or _credential(config)
    endpoint_now(config.storage_account_url, kind=Kind.AZURE_STORAGE, field="settings.storage_account_url")
    service = BlobServiceClient(config.storage_account_url, credential=storage_credential, **config.transport())
    return service.get_container_client(config.container)


class _Clients:
    """ARM clients per subscription, sharing one credential (one token)."""

    def __init__(self, config: AzureConfig, credential=None):
        self.config = config
        self.credential = credential or _credential(config)

    def _kwargs(self) -> dict:
        endpoint_now(self.config.arm_endpoint, kind=Kind.AZURE_ARM, field="settings.arm_endpoint")
        return {"base_url": self.config.arm_endpoint, "credential_scopes": [ARM_SCOPE], **self.config.transport()}

    def compute(self, subscription: str):
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, subscription, **self._kwargs())

    def network(self, subscription: str):
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, subscription, **self._kwargs())

    def monitor(self, subscription: str):
        from azure.mgmt.monitor import MonitorManagementClient

        return MonitorManagementClient(self.credential, subscription, **self._kwargs())


# --- errors ---


def azure_error(exc: Exception, *, what: str) -> Exception:
    """An SDK exception as TransientError (retry) or PermanentError (tell the user), naming what was tried."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    text = _first_line(str(exc))
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(f"{what}: could not reach Azure ({text})")
    if isinstance(exc, ClientAuthenticationError) and _aadsts(text):
        return PermanentError(f"{what}: {credential_problem(text)}")
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        # From azure-identity: Entra ID answered without an AADSTS error (throttled, down) or the tenant's
        # OpenID configuration could not be read (no such tenant, or a wrong authority_host).
        if re.search(r"HTTP Error: (429|5\d\d)|TooManyRequests|throttl|temporarily unavailable", text, re.I):
            return TransientError(f"{what}: Microsoft Entra ID is throttling or unavailable ({text})")
        if "authority configuration" in text:
            return PermanentError(
                f"{what}: Microsoft Entra ID does not know the credential's tenant_id (or settings.authority_host is "
                f"wrong): {text.split('. Authority would')[0]}"
            )
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = _error_code(exc)
        if status == 429 or status >= 500 or code in ("ServerBusy", "OperationTimedOut", "InternalError"):
            return TransientError(f"{what}: Azure answered {status} {code or ''} (throttled or unavailable): {text}")
        if code == "AuthorizationFailed":
            action = re.search(r"perform action '([^']+)' over scope '([^']+)'", str(exc))
            detail = f"the service principal may not perform {action.group(1)} on {action.group(2)}" if action else text
            return PermanentError(f"{what}: permission denied: {detail} (grant it the Reader role there)")
        if code in ("AuthorizationPermissionMismatch", "AuthorizationFailure"):
            return PermanentError(
                f"{what}: permission denied on the storage container: the service principal needs the Storage Blob "
                "Data Reader role (Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read), or give "
                "storage_account_key / storage_sas_token in the credential"
            )
        if code == "ContainerNotFound":
            return PermanentError(f"{what}: the container does not exist")
        if code == "AuthenticationFailed" or isinstance(exc, ClientAuthenticationError):
            return PermanentError(f"{what}: Azure rejected the credentials: {text}")
        if code in ("SubscriptionNotFound", "InvalidSubscriptionId"):
            return PermanentError(f"{what}: {text}")
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            return PermanentError(f"{what}: not found ({code or status}): {text}")
        return PermanentError(f"{what}: Azure refused the request ({status} {code or ''}): {text}")
    if isinstance(exc, ValueError) and "authority" in str(exc).lower():
        return PermanentError(f"{what}: tenant_id or authority_host is wrong ({text})")
    return exc


@contextlib.contextmanager
def _calls(what: str):
    """Translate the Azure SDK's exceptions raised inside the block."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except Exception as exc:
        translated = azure_error(exc, what=what)
        if translated is exc:
            raise
        raise translated from None


def credential_problem(text: str) -> str:
    """An AADSTS error as a sentence naming the credential key to fix."""
    code = _aadsts(text)
    key = AADSTS_KEYS.get(code or "", "")
    message = re.sub(r"^.*?(AADSTS\d+:)", r"\1", text)
    message = re.split(r"\s+Trace ID:", message)[0].strip()
    if key:
        return f"Microsoft Entra ID rejected the credential's {key}: {message}"
    return f"Microsoft Entra ID refused the service principal: {message}"


def _aadsts(text: str) -> str | None:
    match = re.search(r"AADSTS(\d+)", text)
    return match.group(1) if match else None


def _error_code(exc) -> str:
    code = getattr(exc, "error_code", None)
    if not code and getattr(exc, "error", None) is not None:
        code = getattr(exc.error, "code", None)
    if not code:
        match = re.search(r"(?:Code|ErrorCode):\s*(\w+)", str(exc))
        code = match.group(1) if match else ""
    return str(code or "")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:500]


# --- export runs ---


@dataclass
class ExportRun:
    period: str  # "YYYY-MM"
    folder: str  # "<YYYYMMDD-YYYYMMDD>"
    label: str  # the run folder or the single file's name
    submitted: datetime
    files: list[ExportFile]
    dataset: str = ""  # from the manifest's exportConfig.type, when there is one
    complete: bool = True
    problem: str = ""


def export_runs(container, config: AzureConfig, *, period: str | None = None) -> list[ExportRun]:
    """Every run under <directory>/<export_name>/ (of one billing period "YYYY-MM" when given), complete or not,
    read from the blob listing and the runs' manifests."""
    prefix = config.export_prefix
    with _calls(f"listing blobs under {config.container}/{prefix}"):
        blobs = {b.name: b for b in container.list_blobs(name_starts_with=prefix)}
    singles: list[ExportRun] = []
    folders: dict[tuple[str, str], dict[str, object]] = {}
    for name, blob in blobs.items():
        parts = name[len(prefix) :].split("/")
        match = PERIOD_FOLDER_RE.match(parts[0])
        if not match or len(parts) < 2:
            continue
        if period and f"{match.group(1)}-{match.group(2)}" != period:
            continue
        if len(parts) == 2:
            if name.lower().endswith(DATA_SUFFIXES):
                month = f"{match.group(1)}-{match.group(2)}"
                singles.append(ExportRun(month, parts[0], parts[1], _utc(blob.last_modified), [_export_file(blob)]))
            continue
        folders.setdefault((parts[0], parts[1]), {})[name] = blob
    runs = singles
    for (folder, run_id), members in folders.items():
        month = f"{folder[:4]}-{folder[4:6]}"
        manifest = next((n for n in members if n.rsplit("/", 1)[-1].lower() == "manifest.json"), None)
        newest = max(_utc(b.last_modified) for b in members.values())
        if manifest is None:
            runs.append(ExportRun(month, folder, run_id, newest, [], complete=False, problem="no manifest.json yet"))
            continue
        runs.append(_manifest_run(container, config, month, folder, run_id, manifest, blobs, newest))
    return runs


def _manifest_run(container, config, period, folder, run_id, manifest_name, blobs, newest) -> ExportRun:
    with _calls(f"reading {config.container}/{manifest_name}"):
        raw = container.download_blob(manifest_name).readall()
    try:
        manifest = json.loads(raw.decode("utf-8-sig"))
        listed = [entry["blobName"] for entry in manifest.get("blobs", [])]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return ExportRun(period, folder, run_id, newest, [], complete=False, problem=f"unreadable manifest ({exc})")
    run_info = manifest.get("runInfo") or {}
    submitted = _parse_time(run_info.get("submittedTime")) or newest
    dataset = str((manifest.get("exportConfig") or {}).get("type") or "")
    files, missing = [], []
    for name in listed:
        blob = blobs.get(name) or blobs.get(name.removeprefix(f"{config.container}/"))
        if blob is None:
            missing.append(name)
        elif blob.name.lower().endswith(DATA_SUFFIXES):
            files.append(_export_file(blob))
    if missing or not listed:
        problem = f"manifest lists {missing[0]!r}, which is not there" if missing else "manifest lists no blob"
        return ExportRun(period, folder, run_id, submitted, files, dataset, complete=False, problem=problem)
    return ExportRun(period, folder, run_id, submitted, sorted(files, key=lambda f: f.key), dataset)


def newest_runs(runs: list[ExportRun]) -> dict[str, ExportRun]:
    """Billing period -> its newest complete run."""
    best: dict[str, ExportRun] = {}
    for run in runs:
        # Ties (last-modified has 1 s resolution) go to the later name, so the choice is at least stable.
        if run.complete and (
            run.period not in best or (run.submitted, run.label) > (best[run.period].submitted, best[run.period].label)
        ):
            best[run.period] = run
    return best


def _export_file(blob) -> ExportFile:
    return ExportFile(blob.name, str(blob.etag or "").strip('"'), int(blob.size or 0))


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.min.replace(tzinfo=UTC)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_time(value) -> datetime | None:
    """ARM / manifest time stamps: ISO 8601 with up to 7 fractional digits, 'Z' or an offset, or none (UTC)."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _iso(value) -> str | None:
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ") if parsed else None


# --- cost data ---


class AzureExportSource(ExportCostSource):
    """The account's Cost Management export: the newest complete run of each billing period, mapped to FOCUS."""

    def __init__(self, account, config: AzureConfig | None = None):
        super().__init__(account)
        self.config = config or azure_config(account)
        self._container = None
        self.incomplete_runs: list[str] = []

    @property
    def container(self):
        if self._container is None:
            self._container = _container_client(self.config)
        return self._container

    def deliveries(self, *, billing_period: str | None = None) -> list[Delivery]:
        if not self.config.export_name:
            raise PermanentError(f"Azure account {self.config.account_name!r}: settings.export_name is not set")
        runs = export_runs(self.container, self.config, period=billing_period)
        chosen = newest_runs(runs)
        # A run newer than the one loaded that is not complete (still being written, or broken): say so.
        self.incomplete_runs = [
            f"{self.config.export_prefix}{r.folder}/{r.label}: {r.problem}"
            for r in runs
            if not r.complete and (r.period not in chosen or r.submitted > chosen[r.period].submitted)
        ]
        for text in self.incomplete_runs:
            self.report.warnings.append(f"export run skipped, not complete: {text}")
        out = []
        for period, run in sorted(chosen.items()):
            if billing_period and period != billing_period:
                continue
            dataset = run.dataset or self.config.dataset or "ActualCost"
            if self.config.dataset and run.dataset and run.dataset != self.config.dataset:
                raise PermanentError(
                    f"{self.config.container}/{self.config.export_prefix}{run.folder}/{run.label}: the manifest says "
                    f"the export is {run.dataset}, settings.dataset says {self.config.dataset}"
                )
            mapping = MAPPINGS.get(dataset)
            label = f"{run.folder}/{run.label} ({dataset}, submitted {run.submitted:%Y-%m-%dT%H:%M:%SZ})"
            out.append(Delivery(period, run.files, mapping, label=label, extra={"dataset": dataset}))
        return out

    def column_names(self, names: list[str]) -> list[str]:
        return canonical_columns(names) if names and "BilledCost" not in names else names

    def download(self, file: ExportFile, dest: Path) -> None:
        with _calls(f"downloading {self.config.container}/{file.key}"), open(dest, "wb") as fh:
            self.container.download_blob(file.key).readinto(fh)


# Column names of the "Cost and usage details" files vary by agreement (EA, MCA, pay-as-you-go) and schema
# version, in case and in a few names; the mapping reads the lower-case names of the current MCA schema.
ALIASES = {
    "billingcurrencycode": "billingcurrency",
    "currency": "billingcurrency",
    "resourcegroup": "resourcegroupname",
    "subscriptionguid": "subscriptionid",
    "instanceid": "resourceid",
    "cost": "costinbillingcurrency",
    "pretaxcost": "costinbillingcurrency",
    "usagedatetime": "date",
    "usagedate": "date",
    "product": "productname",
    "consumedquantity": "quantity",
}


def canonical_columns(names: list[str]) -> list[str]:
    """Lower-case names with the aliases resolved; a name whose canonical form is already taken stays as it is."""
    out: list[str] = []
    taken = {name.strip().lower() for name in names}
    for name in names:
        low = name.strip().lower()
        alias = ALIASES.get(low)
        canonical = alias if alias and alias not in taken else low
        if canonical in out:
            canonical = name
        out.append(canonical)
    return out


# --- derivations (vectorised; Python only loops over distinct values) ---

NULL = pa.scalar(None, pa.string())


def _blank_to_null(arr: pa.Array) -> pa.Array:
    text = pc.utf8_trim_whitespace(as_text(arr))
    return pc.if_else(pc.equal(text, ""), NULL, text)


def per_distinct(fn) -> Callable[[pa.Array], pa.Array]:
    """Apply a Python function to each distinct value only (dates, ids and tags repeat a lot), then spread
    the results back with one vectorised take."""

    def derive(arr: pa.Array) -> pa.Array:
        text = _blank_to_null(arr)
        values = [v for v in pc.unique(text).to_pylist() if v is not None]
        if not values:
            return pa.nulls(len(text), pa.string())
        keys = pa.array(values, pa.string())
        return pc.take(pa.array([fn(v) for v in values], pa.string()), pc.index_in(text, value_set=keys))

    return derive


US_DATE_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:\s.*)?$")
ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ].*)?$")


def _day(value: str) -> date | None:
    """MM/DD/YYYY (most Azure exports) or ISO YYYY-MM-DD[THH:MM...]: the day, else None."""
    if match := US_DATE_RE.match(value):
        month, day, year = (int(g) for g in match.groups())
    elif match := ISO_DATE_RE.match(value):
        year, month, day = (int(g) for g in match.groups())
    else:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _midnight(day: date) -> str:
    return f"{day:%Y-%m-%d}T00:00:00Z"


def azure_date(*, plus_days: int = 0, month_start: bool = False):
    """Dates as Azure writes them — MM/DD/YYYY (most exports), YYYY-MM-DD or ISO date-times — to UTC midnight
    ISO text; a value that is neither is passed on as it is, so the FOCUS check names its row."""

    def one(value: str) -> str:
        day = _day(value)
        if day is None:
            return value
        if month_start:
            day = day.replace(day=1)
        return _midnight(day + timedelta(days=plus_days))

    return per_distinct(one)


def _next_month(value: str) -> str | None:
    day = _day(value)
    return _midnight((day.replace(day=1) + timedelta(days=32)).replace(day=1)) if day else None


def _period_start(start: pa.Array, day: pa.Array) -> pa.Array:
    return pc.coalesce(azure_date()(start), azure_date(month_start=True)(day))


def _period_end(end: pa.Array, day: pa.Array) -> pa.Array:
    """Azure's billing period end is its last day (inclusive); FOCUS's is exclusive: the next midnight. Without
    BillingPeriodEndDate: the first of the month after the usage day."""
    return pc.coalesce(azure_date(plus_days=1)(end), per_distinct(_next_month)(day))


DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
ANY_DECIMAL_RE = DECIMAL_TEXT.pattern
# Decimal text decimal256 arithmetic takes exactly: (37, 22) operands, a (75, 44) product.
FAST_DECIMAL_RE = r"^[+-]?(\d{1,15}(\.\d{0,22})?|\.\d{1,22})$"


def multiply(a: pa.Array, b: pa.Array) -> pa.Array:
    """a × b for decimal text, exact, as text with 15 decimals; null when either is null; an operand that is not
    a decimal is passed on as it is (the FOCUS check then names its row).

    Prices and quantities repeat, so usually the product is computed once per distinct (a, b) pair with Python's
    Decimal; when most pairs are distinct, decimal256 arithmetic does the rows it holds exactly and Decimal the
    rest (exponents, more than 15 integer or 22 decimal digits)."""
    a, b = _blank_to_null(a), _blank_to_null(b)
    pairs = pc.binary_join_element_wise(a, b, "*")  # null when either is null
    if pc.count_distinct(pairs).as_py() * 8 <= len(pairs):
        return per_distinct(_product)(pairs)
    ok_a, ok_b = pc.match_substring_regex(a, ANY_DECIMAL_RE), pc.match_substring_regex(b, ANY_DECIMAL_RE)
    both = pc.fill_null(pc.and_(ok_a, ok_b), False)
    fast = pc.fill_null(
        pc.and_(pc.match_substring_regex(a, FAST_DECIMAL_RE), pc.match_substring_regex(b, FAST_DECIMAL_RE)), False
    )
    work = pa.decimal256(37, 22)
    x = pc.cast(pc.if_else(fast, a, "0"), work)
    y = pc.cast(pc.if_else(fast, b, "0"), work)
    product = pc.cast(pc.round(pc.multiply(x, y), ndigits=15), pa.decimal256(76, 15), safe=False)
    text = pc.cast(product, pa.string())
    slow = pc.indices_nonzero(pc.and_(both, pc.invert(fast))).to_pylist()
    if slow:
        values, joined = text.to_pylist(), pairs.to_pylist()
        for i in slow:
            values[i] = _product(joined[i])
        text = pa.array(values, pa.string())
    bad = pc.if_else(pc.fill_null(ok_a, True), b, a)  # the operand that is not a decimal
    return pc.if_else(both, text, pc.if_else(pc.is_null(pairs), NULL, bad))


def _product(pair: str) -> str:
    x, y = pair.split("*", 1)
    for operand in (x, y):
        if not DECIMAL_TEXT.match(operand):
            return operand
    with localcontext() as context:
        context.prec = 100
        return f"{(Decimal(x) * Decimal(y)).quantize(Decimal('1e-15')):f}"


def _list_cost(payg_cost, payg_price, quantity, cost):
    return coalesce(_blank_to_null(payg_cost), multiply(payg_price, quantity), cost)


def _contracted_cost(unit_price, quantity, cost):
    return coalesce(multiply(unit_price, quantity), cost)


def _is(arr: pa.Array, *values: str) -> pa.Array:
    folded = pc.utf8_lower(pc.fill_null(_blank_to_null(arr), ""))
    return pc.is_in(folded, pa.array([v.lower() for v in values], pa.string()))


def _has(arr: pa.Array) -> pa.Array:
    return pc.is_valid(_blank_to_null(arr))


def _commitment_id(benefit_id, reservation_id):
    ids = coalesce(benefit_id, reservation_id)
    return pc.if_else(pc.starts_with(pc.fill_null(ids, ""), "/"), pc.utf8_lower(ids), ids)


def _amortized_billed(cost, charge_type, pricing_model):
    """Amortized rows: commitment-covered usage and unused commitment were paid up front (the purchase), so
    they were not billed in this row: BilledCost 0."""
    prepaid = pc.or_(
        pc.and_(_is(charge_type, "Usage"), _is(pricing_model, "Reservation", "SavingsPlan")),
        _is(charge_type, "UnusedReservation", "UnusedSavingsPlan"),
    )
    return pc.if_else(prepaid, "0", as_text(cost))


def _amortized_effective(cost, charge_type, benefit_id, reservation_id):
    """Amortized rows: a commitment purchase is spread over the usage it covers, so the purchase row's
    EffectiveCost is 0 (its cost is in the covered usage and unused-commitment rows)."""
    purchase = pc.and_(_is(charge_type, "Purchase"), pc.or_(_has(benefit_id), _has(reservation_id)))
    return pc.if_else(purchase, "0", as_text(cost))


CHARGE_CATEGORY = {
    "Usage": "Usage",
    "UnusedReservation": "Usage",
    "UnusedSavingsPlan": "Usage",
    "Purchase": "Purchase",
    "Refund": "Purchase",
    "Tax": "Tax",
    "Adjustment": "Adjustment",
    "RoundingAdjustment": "Adjustment",
    "Credit": "Credit",
}
PRICING_CATEGORY = {"OnDemand": "Standard", "Reservation": "Committed", "SavingsPlan": "Committed", "Spot": "Dynamic"}
CHARGE_FREQUENCY = {"OneTime": "One-Time", "Recurring": "Recurring", "UsageBased": "Usage-Based"}
COMMITMENT_TYPE = {"Reservation": "Reservation", "SavingsPlan": "Savings Plan"}
COMMITMENT_CATEGORY = {"Reservation": "Usage", "SavingsPlan": "Spend"}
# meterCategory -> FOCUS ServiceCategory (the common Azure meter categories; others are "Other").
SERVICE_CATEGORY = {
    "Virtual Machines": "Compute",
    "Virtual Machines Licenses": "Compute",
    "Azure App Service": "Web",
    "Functions": "Compute",
    "Container Instances": "Compute",
    "Azure Kubernetes Service": "Compute",
    "Cloud Services": "Compute",
    "Storage": "Storage",
    "Backup": "Storage",
    "Azure NetApp Files": "Storage",
    "Bandwidth": "Networking",
    "Virtual Network": "Networking",
    "Load Balancer": "Networking",
    "Application Gateway": "Networking",
    "VPN Gateway": "Networking",
    "Azure DNS": "Networking",
    "Content Delivery Network": "Networking",
    "Azure Front Door Service": "Networking",
    "Network Watcher": "Networking",
    "ExpressRoute": "Networking",
    "Azure Firewall": "Security",
    "Key Vault": "Security",
    "Microsoft Defender for Cloud": "Security",
    "SQL Database": "Databases",
    "SQL Managed Instance": "Databases",
    "Azure Cosmos DB": "Databases",
    "Azure Database for PostgreSQL": "Databases",
    "Azure Database for MySQL": "Databases",
    "Redis Cache": "Databases",
    "Azure Synapse Analytics": "Analytics",
    "Azure Data Factory v2": "Analytics",
    "Azure Databricks": "Analytics",
    "Event Hubs": "Analytics",
    "Log Analytics": "Management and Governance",
    "Azure Monitor": "Management and Governance",
    "Insight and Analytics": "Management and Governance",
    "Automation": "Management and Governance",
    "Service Bus": "Integration",
    "Logic Apps": "Integration",
    "API Management": "Integration",
    "Cognitive Services": "AI and Machine Learning",
    "Azure OpenAI": "AI and Machine Learning",
    "Machine Learning": "AI and Machine Learning",
    "IoT Hub": "Internet of Things",
    "Azure Active Directory": "Identity",
    "Microsoft Entra ID": "Identity",
}
# Legacy location spellings in EA exports ("EU West") -> ARM region names; anything else is lower-cased
# with the spaces removed ("West Europe" -> "westeurope").
LEGACY_REGIONS = {
    "eu west": "westeurope", "eu north": "northeurope", "us east": "eastus", "us east 2": "eastus2",
    "us west": "westus", "us west 2": "westus2", "us central": "centralus", "us north central": "northcentralus",
    "us south central": "southcentralus", "us west central": "westcentralus", "ap east": "eastasia",
    "ap southeast": "southeastasia", "ja east": "japaneast", "ja west": "japanwest", "br south": "brazilsouth",
    "au east": "australiaeast", "au southeast": "australiasoutheast", "ca central": "canadacentral",
    "ca east": "canadaeast", "in central": "centralindia", "in south": "southindia", "in west": "westindia",
    "kr central": "koreacentral", "kr south": "koreasouth", "uk south": "uksouth", "uk west": "ukwest",
    "fr central": "francecentral", "de west central": "germanywestcentral",
}  # fmt: skip


def region_id(arr: pa.Array) -> pa.Array:
    text = _blank_to_null(arr)
    values = [v for v in pc.unique(text).to_pylist() if v is not None]
    mapped = [LEGACY_REGIONS.get(v.lower(), re.sub(r"\s+", "", v.lower())) for v in values]
    return pc.take(pa.array(mapped, pa.string()), pc.index_in(text, value_set=pa.array(values, pa.string())))


def lower_resource_id(arr: pa.Array) -> pa.Array:
    return per_distinct(str.lower)(arr)


ARM_TYPE_RE = re.compile(r"/providers/([^/]+)/([^/]+)/[^/]+$")


def resource_name(resource_id: pa.Array, name: pa.Array) -> pa.Array:
    return coalesce(name, per_distinct(lambda rid: rid.rstrip("/").rsplit("/", 1)[-1] or None)(resource_id))


def resource_type(resource_id: pa.Array) -> pa.Array:
    """The ARM type of the id's last resource, e.g. microsoft.compute/virtualmachines."""

    def one(rid: str) -> str | None:
        match = ARM_TYPE_RE.search(rid.lower())
        return f"{match.group(1)}/{match.group(2)}" if match else None

    return per_distinct(one)(resource_id)


def sub_account_id(arr: pa.Array) -> pa.Array:
    return per_distinct(lambda sub: sub.lower() if sub.startswith("/") else f"/subscriptions/{sub.lower()}")(arr)


def azure_tags(arr: pa.Array) -> pa.Array:
    """Tags as a JSON object. Azure writes `{"k": "v"}` or, in some exports, `"k": "v","k2": "v2"` without the
    braces; both become {"k": "v", ...}. Empty -> null. Anything else is passed on (the FOCUS check names it)."""
    text = _blank_to_null(arr)
    values = [v for v in pc.unique(text).to_pylist() if v is not None]
    fixed = [_tags_json(v) for v in values]
    return pc.take(pa.array(fixed, pa.string()), pc.index_in(text, value_set=pa.array(values, pa.string())))


def _tags_json(value: str) -> str:
    text = value.strip()
    if not text.startswith("{"):
        text = "{" + text + "}"
    try:
        parsed = json.loads(text)
    except ValueError:
        return value
    if not isinstance(parsed, dict):
        return value
    return json.dumps({str(k): "" if v is None else str(v) for k, v in parsed.items()}, ensure_ascii=False)


def _charge_category(charge_type: pa.Array) -> pa.Array:
    return pc.coalesce(lookup(CHARGE_CATEGORY, default="Usage")(charge_type), pa.scalar("Usage", pa.string()))


def _charge_class(charge_type: pa.Array) -> pa.Array:
    return pc.if_else(_is(charge_type, "Refund"), "Correction", NULL)


def _commitment_status(charge_type, pricing_model, benefit_id, reservation_id):
    unused = _is(charge_type, "UnusedReservation", "UnusedSavingsPlan")
    used = pc.and_(_is(pricing_model, "Reservation", "SavingsPlan"), pc.or_(_has(benefit_id), _has(reservation_id)))
    used = pc.and_(used, _is(charge_type, "Usage"))
    return pc.if_else(unused, "Unused", pc.if_else(used, "Used", NULL))


def _when_commitment(table: dict[str, str]):
    look = lookup(table)

    def derive(pricing_model, benefit_id, reservation_id):
        has = pc.or_(_has(benefit_id), _has(reservation_id))
        return pc.if_else(has, look(pricing_model), NULL)

    return derive


def _pricing_category(pricing_model, charge_type):
    """OnDemand -> Standard, Reservation/SavingsPlan -> Committed, Spot -> Dynamic; empty model on usage ->
    Standard; none for taxes (FOCUS: PricingCategory is null when nothing is priced)."""
    look = lookup(PRICING_CATEGORY, default="Other")(pricing_model)
    look = pc.if_else(pc.is_null(_blank_to_null(pricing_model)), "Standard", look)
    return pc.if_else(_is(charge_type, "Tax"), NULL, look)


def _with_default(value: str):
    def derive(arr):
        return pc.coalesce(_blank_to_null(arr), pa.scalar(value, pa.string()))

    return derive


def _cost_rules(*, amortized: bool) -> list[Rule]:
    cost = "costinbillingcurrency"
    if amortized:
        billed = Rule(
            "BilledCost",
            (cost, "chargetype", "pricingmodel"),
            fn=_amortized_billed,
            how="`costInBillingCurrency`, but 0 for usage covered by a reservation or savings plan "
            "(pricingModel Reservation/SavingsPlan with chargeType Usage) and for UnusedReservation/"
            "UnusedSavingsPlan rows: those were billed by the commitment's purchase",
            required=True,
        )
        effective = Rule(
            "EffectiveCost",
            (cost, "chargetype", "benefitid", "reservationid"),
            fn=_amortized_effective,
            how="`costInBillingCurrency` (amortized), but 0 for the Purchase row of a reservation or savings "
            "plan (benefitId/reservationId set): its cost is already spread over the rows it covers",
        )
    else:
        billed = Rule("BilledCost", cost, required=True, how="")
        effective = Rule(
            "EffectiveCost",
            cost,
            fn=as_text,
            how="`costInBillingCurrency` as billed: the actual-cost dataset is not amortized (commitment "
            "purchases count when bought); export AmortizedCost or FocusCost for amortized EffectiveCost",
        )
    return [
        Rule("AvailabilityZone", "availabilityzone"),
        billed,
        Rule(
            "BillingAccountId",
            ("billingaccountid", "subscriptionid"),
            fn=coalesce,
            how="`billingAccountId`; pay-as-you-go exports without one use the subscription id",
        ),
        Rule(
            "BillingAccountName",
            ("billingaccountname", "subscriptionname"),
            fn=coalesce,
            how="`billingAccountName`, else the subscription name",
        ),
        Rule("BillingCurrency", "billingcurrency", required=True),
        Rule(
            "BillingPeriodEnd",
            ("billingperiodenddate", "date"),
            fn=_period_end,
            how="`billingPeriodEndDate` (Azure's last day, inclusive) + 1 day, UTC midnight; without it, the "
            "first of the month after `date`",
        ),
        Rule(
            "BillingPeriodStart",
            ("billingperiodstartdate", "date"),
            fn=_period_start,
            how="`billingPeriodStartDate` (MM/DD/YYYY or ISO) at UTC midnight; without it, the first of `date`'s month",
        ),
        Rule(
            "ChargeCategory",
            "chargetype",
            fn=_charge_category,
            how="Usage, UnusedReservation, UnusedSavingsPlan -> Usage; Purchase, Refund -> Purchase; Tax -> Tax; "
            "Adjustment, RoundingAdjustment -> Adjustment; Credit -> Credit; empty -> Usage",
        ),
        Rule("ChargeClass", "chargetype", fn=_charge_class, how="Refund -> Correction, else null"),
        Rule(
            "ChargeDescription",
            ("productname", "metername"),
            fn=coalesce,
            how="`productName` (the product and meter in words), else `meterName`",
        ),
        Rule(
            "ChargeFrequency",
            "frequency",
            fn=lookup(CHARGE_FREQUENCY),
            how="OneTime -> One-Time, Recurring -> Recurring, UsageBased -> Usage-Based",
        ),
        Rule("ChargePeriodEnd", "date", fn=azure_date(plus_days=1), how="`date` + 1 day (each row is one day), UTC"),
        Rule(
            "ChargePeriodStart",
            "date",
            fn=azure_date(),
            how="`date` (MM/DD/YYYY or ISO) at UTC midnight",
            required=True,
        ),
        Rule(
            "CommitmentDiscountCategory",
            ("pricingmodel", "benefitid", "reservationid"),
            fn=_when_commitment(COMMITMENT_CATEGORY),
            how="rows with a benefitId/reservationId: Reservation -> Usage, SavingsPlan -> Spend",
        ),
        Rule(
            "CommitmentDiscountId",
            ("benefitid", "reservationid"),
            fn=_commitment_id,
            how="`benefitId`, else `reservationId` (ARM ids lower-cased)",
        ),
        Rule(
            "CommitmentDiscountName",
            ("benefitname", "reservationname"),
            fn=coalesce,
            how="`benefitName`, else `reservationName`",
        ),
        Rule(
            "CommitmentDiscountStatus",
            ("chargetype", "pricingmodel", "benefitid", "reservationid"),
            fn=_commitment_status,
            how="UnusedReservation/UnusedSavingsPlan -> Unused; usage priced Reservation/SavingsPlan with a "
            "commitment id -> Used; else null",
        ),
        Rule(
            "CommitmentDiscountType",
            ("pricingmodel", "benefitid", "reservationid"),
            fn=_when_commitment(COMMITMENT_TYPE),
            how="rows with a commitment id: Reservation -> Reservation, SavingsPlan -> Savings Plan",
        ),
        Rule("ConsumedQuantity", "quantity"),
        Rule("ConsumedUnit", "unitofmeasure"),
        Rule(
            "ContractedCost",
            ("unitprice", "quantity", cost),
            fn=_contracted_cost,
            how="`unitPrice` (the negotiated price) × `quantity`, exact; without a unit price, `costInBillingCurrency`",
        ),
        Rule("ContractedUnitPrice", "unitprice"),
        effective,
        Rule("InvoiceId", "invoiceid"),
        Rule(
            "InvoiceIssuerName",
            "partnername",
            fn=_with_default("Microsoft"),
            how="`partnerName` (CSP), else Microsoft",
        ),
        Rule(
            "ListCost",
            ("paygcostinbillingcurrency", "paygprice", "quantity", cost),
            fn=_list_cost,
            how="`paygCostInBillingCurrency`; else `PayGPrice` × `quantity` (exact decimal product); else "
            "`costInBillingCurrency` (purchases, taxes)",
        ),
        Rule("ListUnitPrice", "paygprice"),
        Rule(
            "PricingCategory",
            ("pricingmodel", "chargetype"),
            fn=_pricing_category,
            how="OnDemand -> Standard, Reservation/SavingsPlan -> Committed, Spot -> Dynamic, other -> Other, "
            "empty -> Standard; null on Tax rows",
        ),
        Rule(
            "PricingCurrency",
            ("pricingcurrency", "billingcurrency"),
            fn=coalesce,
            how="`pricingCurrency` (MCA), else the billing currency",
        ),
        Rule("PricingQuantity", "quantity"),
        Rule("PricingUnit", "unitofmeasure"),
        Rule("ProviderName", const="Microsoft"),
        Rule("PublisherName", "publishername", fn=_with_default("Microsoft"), how="`publisherName`, else Microsoft"),
        Rule(
            "RegionId",
            "resourcelocation",
            fn=region_id,
            how="`resourceLocation` lower-cased without spaces (West Europe -> westeurope); EA's legacy names "
            "(EU West, US East 2, ...) mapped to the ARM region",
        ),
        Rule("RegionName", "resourcelocation"),
        Rule(
            "ResourceId",
            "resourceid",
            fn=lower_resource_id,
            how="`ResourceId` lower-cased (ARM ids are case-insensitive; the inventory uses the same form)",
        ),
        Rule(
            "ResourceName",
            ("resourceid", "resourcename"),
            fn=lambda rid, name: resource_name(rid, name),
            how="`resourceName`, else the last segment of the resource id",
        ),
        Rule(
            "ResourceType",
            "resourceid",
            fn=resource_type,
            how="the resource id's provider/type, e.g. microsoft.compute/virtualmachines",
        ),
        Rule(
            "ServiceCategory",
            "metercategory",
            fn=lambda arr: pc.coalesce(lookup(SERVICE_CATEGORY, default="Other")(arr), pa.scalar("Other", pa.string())),
            how="from `meterCategory`: Virtual Machines -> Compute, Storage -> Storage, Bandwidth/Virtual "
            "Network/Load Balancer -> Networking, SQL Database -> Databases, ... (table SERVICE_CATEGORY), "
            "else (and when empty, as on tax rows) Other",
        ),
        Rule("ServiceName", "metercategory", fn=_with_default("Azure"), how="`meterCategory`, else Azure"),
        Rule("SkuId", ("productid", "partnumber"), fn=coalesce, how="`ProductId`, else `partNumber` (EA)"),
        Rule("SkuMeter", "metername"),
        Rule("SkuPriceId", "meterid"),
        Rule(
            "SubAccountId",
            "subscriptionid",
            fn=sub_account_id,
            how="/subscriptions/<`subscriptionId`>, lower-case (as in Azure's FOCUS export)",
            required=True,
        ),
        Rule("SubAccountName", "subscriptionname"),
        Rule("SubAccountType", const="Subscription"),
        Rule(
            "Tags",
            "tags",
            fn=azure_tags,
            how='JSON object; the brace-less form some exports write (`"k": "v","k2": "v2"`) is wrapped in braces',
        ),
    ]


# Columns of the files that no rule reads, on purpose (not reported as unknown).
KNOWN_UNMAPPED = frozenset(
    {"billingprofileid", "billingprofilename", "invoicesectionid", "invoicesectionname", "costcenter",
     "serviceperiodstartdate", "serviceperiodenddate", "servicefamily", "productorderid", "productordername",
     "consumedservice", "metersubcategory", "meterregion", "publishertype", "publisherid", "resourcegroupname",
     "location", "effectiveprice", "costinusd", "costinpricingcurrency", "exchangeratepricingtobilling",
     "exchangeratedate", "paygcostinusd", "isazurecrediteligible", "serviceinfo1", "serviceinfo2", "additionalinfo",
     "term", "costallocationrulename", "provider", "previousinvoiceid", "resellername", "resellermpnid",
     "accountownerid", "accountname", "offerid"}
)  # fmt: skip

ACTUAL = ColumnMapping("Azure Cost Management: actual cost", _cost_rules(amortized=False), KNOWN_UNMAPPED)
AMORTIZED = ColumnMapping("Azure Cost Management: amortized cost", _cost_rules(amortized=True), KNOWN_UNMAPPED)
MAPPINGS: dict[str, ColumnMapping | None] = {"ActualCost": ACTUAL, "AmortizedCost": AMORTIZED, "FocusCost": None}


# --- resources ---


class AzureResourceSource(ResourceSource):
    """VMs (with power state and hourly CPU), managed disks, public IPs and snapshots of every subscription."""

    def __init__(self, account, config: AzureConfig | None = None, now: datetime | None = None):
        super().__init__(account)
        self.config = config or azure_config(account)
        self.now = now

    def resources(self) -> Iterator[dict]:
        if not self.config.subscription_ids:
            raise PermanentError(
                f"Azure account {self.config.account_name!r}: no subscription to list (set settings.subscription_ids "
                "or the account's external_id)"
            )
        clients = _Clients(self.config)
        for subscription in self.config.subscription_ids:
            yield from self._subscription(clients, subscription)

    def _subscription(self, clients: _Clients, subscription: str) -> Iterator[dict]:
        compute, network = clients.compute(subscription), clients.network(subscription)
        where = f"subscription {subscription}"
        with _calls(f"listing virtual machines in {where}"):
            vms = [vm.as_dict() for vm in compute.virtual_machines.list_all()]
            # The instance views (power state) of all VMs in one paged call, not one call per VM.
            statuses = {
                vm.id.lower(): (vm.as_dict().get("properties") or {}).get("instanceView") or {}
                for vm in compute.virtual_machines.list_all(status_only="true")
            }
        with _calls(f"listing managed disks in {where}"):
            disks = [disk.as_dict() for disk in compute.disks.list()]
        with _calls(f"listing snapshots in {where}"):
            snapshots = [snap.as_dict() for snap in compute.snapshots.list()]
        with _calls(f"listing public IP addresses in {where}"):
            addresses = [ip.as_dict() for ip in network.public_ip_addresses.list_all()]
        monitor = clients.monitor(subscription) if self.config.cpu_lookback_hours else None
        for vm in vms:
            item = vm_resource(vm, statuses.get(vm["id"].lower(), {}))
            if monitor is not None:
                item["attributes"].update(self._cpu(monitor, vm["id"]))
            yield item
        for disk in disks:
            yield disk_resource(disk)
        for snapshot in snapshots:
            yield snapshot_resource(snapshot)
        for address in addresses:
            yield public_ip_resource(address)

    def _cpu(self, monitor, vm_id: str) -> dict:
        """Hourly average "Percentage CPU" and "Available Memory Bytes" over the look-back, oldest first.

        Both come in one metrics call; hours without data are left out. "Available Memory Bytes" is a platform
        metric (no guest agent needed), so memory use is known for every VM whose host reports it.
        """
        end = (self.now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(hours=self.config.cpu_lookback_hours)
        with _calls(f"reading Percentage CPU and Available Memory Bytes of {vm_id}"):
            response = monitor.metrics.list(
                vm_id,
                timespan=f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}",
                interval="PT1H",
                metricnames=f"{CPU_METRIC},{MEMORY_METRIC}",
                aggregation="Average",
            )
        points: dict[str, list] = {CPU_METRIC: [], MEMORY_METRIC: []}
        for metric in response.value or []:
            name = metric.name.value if metric.name is not None else CPU_METRIC
            found = points.setdefault(name, [])
            for series in metric.timeseries or []:
                found += [(p.time_stamp, p.average) for p in series.data or [] if p.average is not None]
        attributes = _hourly(points[CPU_METRIC], "cpu_hourly", "cpu_hourly_end", digits=4)
        if points[MEMORY_METRIC]:  # absent (not an empty list) when the VM reports none: rules fall back to CPU
            attributes |= _hourly(points[MEMORY_METRIC], "memory_available_hourly", "memory_hourly_end", digits=0)
        return attributes


CPU_METRIC = "Percentage CPU"
MEMORY_METRIC = "Available Memory Bytes"


def _hourly(points: list, values_key: str, end_key: str, *, digits: int) -> dict:
    """{values_key: hourly averages oldest first, end_key: the end of the last hour} from (time, average) points."""
    if not points:
        return {values_key: [], end_key: None}
    points = sorted(points, key=lambda p: p[0])
    last = _utc(points[-1][0]) + timedelta(hours=1)
    values = [round(float(avg), digits) for _, avg in points]
    return {
        values_key: [int(v) for v in values] if digits == 0 else values,
        end_key: last.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _disk_ids(vm: dict) -> list[str]:
    storage = (vm.get("properties") or {}).get("storageProfile") or {}
    disks = [storage.get("osDisk") or {}, *(storage.get("dataDisks") or [])]
    return [d["managedDisk"]["id"].lower() for d in disks if (d.get("managedDisk") or {}).get("id")]


def _arm_resource(item: dict, *, resource_type: str, service_name: str, state: str, attributes: dict) -> dict:
    """An inventory row from an ARM resource (its id, location, name and tags) and what the caller read of it."""
    return {
        "resource_id": item["id"].lower(),
        "resource_type": resource_type,
        "service_name": service_name,
        "region": item.get("location", ""),
        "name": item.get("name", ""),
        "state": state,
        "tags": item.get("tags") or {},
        "attributes": attributes,
    }


def vm_resource(vm: dict, instance_view: dict) -> dict:
    props = vm.get("properties") or {}
    statuses = instance_view.get("statuses") or []
    power = next((s["code"].split("/", 1)[1] for s in statuses if str(s.get("code", "")).startswith("PowerState/")), "")
    attributes = {
        "instance_type": (props.get("hardwareProfile") or {}).get("vmSize", ""),
        "attached_volume_ids": _disk_ids(vm),
        "created_at": _iso(props.get("timeCreated")),
    }
    if power in ("deallocated", "stopped"):
        # The instance view's provisioning status carries the time of the last operation: the stop/deallocate.
        changed = [s.get("time") for s in statuses if str(s.get("code", "")).startswith("ProvisioningState/")]
        attributes["stopped_at"] = _iso(changed[0]) if changed else None
    return _arm_resource(
        vm,
        resource_type="instance",
        service_name="Virtual Machines",
        state=power or str(props.get("provisioningState") or "").lower(),
        attributes=attributes,
    )


def disk_resource(disk: dict) -> dict:
    props = disk.get("properties") or {}
    managed_by = disk.get("managedBy") or ""
    return _arm_resource(
        disk,
        resource_type="volume",
        service_name="Storage",
        state=str(props.get("diskState") or "").lower(),
        attributes={
            "size_gb": props.get("diskSizeGB"),
            "volume_type": (disk.get("sku") or {}).get("name", ""),
            "attached_to": [managed_by.lower()] if managed_by else [],
            "created_at": _iso(props.get("timeCreated")),
        },
    )


def snapshot_resource(snapshot: dict) -> dict:
    props = snapshot.get("properties") or {}
    source = (props.get("creationData") or {}).get("sourceResourceId") or ""
    return _arm_resource(
        snapshot,
        resource_type="snapshot",
        service_name="Storage",
        state=str(props.get("provisioningState") or "").lower(),
        attributes={
            "size_gb": props.get("diskSizeGB"),
            "source_volume_id": source.lower(),
            "created_at": _iso(props.get("timeCreated")),
        },
    )


def public_ip_resource(address: dict) -> dict:
    """associated_with: the resource that holds the IP configuration (a NIC, load balancer, gateway), or ""."""
    props = address.get("properties") or {}
    config_id = str((props.get("ipConfiguration") or {}).get("id") or "").lower()
    owner = re.split(r"/(?:ipconfigurations|frontendipconfigurations)/", config_id)[0] if config_id else ""
    if not owner and (props.get("natGateway") or {}).get("id"):
        owner = props["natGateway"]["id"].lower()
    return _arm_resource(
        address,
        resource_type="ip_address",
        service_name="Virtual Network",
        state="associated" if owner else "unassociated",
        attributes={
            "address": props.get("ipAddress", ""),
            "associated_with": owner,
            "allocation": props.get("publicIPAllocationMethod", ""),
            "sku": (address.get("sku") or {}).get("name", ""),
        },
    )


# --- the registry's entry points ---


def cost_source(account) -> AzureExportSource:
    return AzureExportSource(account)


def resource_source(account) -> AzureResourceSource:
    return AzureResourceSource(account)


def connection_check(account) -> ConnectionReport:
    """Token, then inventory read per subscription, then the export container and its newest run; never raises."""
    report = ConnectionReport(provider="azure", account=account.name)
    try:
        config = azure_config(account)
    except PermanentError as exc:
        report.failed("settings and credential", str(exc))
        return report
    credential = _credential(config)
    check = "credentials"
    try:
        with _calls("getting a token"):
            credential.get_token(ARM_SCOPE)
        report.passed(check, f"token for client {config.client_id} in tenant {config.tenant_id}")
    except (PermanentError, TransientError) as exc:
        report.failed(check, str(exc).removeprefix("getting a token: "))
        return report
    clients = _Clients(config, credential)
    if not config.subscription_ids:
        report.failed("subscriptions", "no subscription: set settings.subscription_ids (or the account's external_id)")
    for subscription in config.subscription_ids:
        check = f"inventory read on subscription {subscription}"
        try:
            compute, network = clients.compute(subscription), clients.network(subscription)
            for action, pages in (
                ("Microsoft.Compute/virtualMachines/read", compute.virtual_machines.list_all),
                ("Microsoft.Compute/disks/read", compute.disks.list),
                ("Microsoft.Compute/snapshots/read", compute.snapshots.list),
                ("Microsoft.Network/publicIPAddresses/read", network.public_ip_addresses.list_all),
            ):
                with _calls(action):
                    next(iter(pages().by_page()), None)  # the first page is enough to prove the permission
            report.passed(check, "virtual machines, disks, snapshots and public IPs readable")
        except (PermanentError, TransientError) as exc:
            report.failed(check, str(exc))
    _check_exports(report, config, credential)
    return report


def _check_exports(report: ConnectionReport, config: AzureConfig, credential) -> None:
    check = f"export container {config.container or '(not set)'}"
    try:
        container = _container_client(config, credential)
        with _calls(f"reading container {config.container!r} in storage account {storage_account_name(config)!r}"):
            container.get_container_properties()
        report.passed(check, f"readable in {config.storage_account_url}")
    except (PermanentError, TransientError) as exc:
        report.failed(check, str(exc))
        return
    check = f"export {config.container}/{config.export_prefix}"
    if not config.export_name:
        report.failed(check, "settings.export_name is not set")
        return
    try:
        runs = export_runs(container, config)
    except (PermanentError, TransientError) as exc:
        report.failed(check, str(exc))
        return
    newest = newest_runs(runs)
    if not newest:
        pending = [f"{r.folder}/{r.label}: {r.problem}" for r in runs if not r.complete]
        detail = f"no export yet under {config.container}/{config.export_prefix}"
        detail += f" (incomplete runs: {'; '.join(pending[:3])})" if pending else " (no <YYYYMMDD-YYYYMMDD> run folder)"
        report.failed(check, detail)
        return
    last = newest[max(newest)]
    report.passed(
        check,
        f"{len(newest)} billing period(s), newest {last.period}: run {last.folder}/{last.label} "
        f"({last.dataset or config.dataset or 'ActualCost'}, {len(last.files)} file(s))",
    )


__all__ = [
    "ACTUAL",
    "AMORTIZED",
    "AzureConfig",
    "AzureExportSource",
    "AzureResourceSource",
    "azure_config",
    "azure_error",
    "connection_check",
    "cost_source",
    "resource_source",
]


def mapping_docs() -> str:
    """docs/mappings/azure.md: the mapping tables as the code has them (a test keeps the file equal to this)."""
    head = """# Azure Cost Management exports -> FOCUS 1.2

Generated from `providers_app/connectors/azure.py` (`mapping_docs()`); a test fails when this file and the
code differ. Regenerate with `.venv/bin/python -c "from providers_app.connectors.azure import mapping_docs;
print(mapping_docs(), end='')" > docs/mappings/azure.md`.

Which table applies: the run's `manifest.json` says `exportConfig.type` (ActualCost, AmortizedCost or
FocusCost); older exports without a manifest use the account's `settings.dataset` (default ActualCost).
The **FocusCost** export is FOCUS already (1.0, 1.0r2 or 1.2-preview columns, CSV or Parquet): its FOCUS
columns are read as they are and its `x_` columns are ignored.

Column names of the "Cost and usage details" files are matched case-insensitively, with these aliases
(EA and older schemas): """
    aliases = ", ".join(f"`{old}` -> `{new}`" for old, new in ALIASES.items() if old != new)
    notes = """

Money stays decimal text until PostgreSQL parses it; products (`PayGPrice` × `quantity`, `unitPrice` ×
`quantity`) are computed exactly in decimal arithmetic and kept to 15 decimals. Dates are `MM/DD/YYYY`
(most exports) or ISO `YYYY-MM-DD[THH:MM:SS...]`; each row covers one day, at UTC midnight. A value that
fails its FOCUS check (not a decimal, not a date, tags that are not an object) fails the import naming the
blob, the row and the FOCUS column; the period's earlier data stays.

**Actual vs amortized.** In the actual-cost dataset a reservation or savings plan costs what was paid
when it was paid (the Purchase row), and the usage it covers shows 0: BilledCost is `costInBillingCurrency`
and so is EffectiveCost (not amortized). In the amortized dataset the purchase is spread over the usage it
covers (and "UnusedReservation"/"UnusedSavingsPlan" rows carry the unused share): EffectiveCost is
`costInBillingCurrency` except on the commitment's Purchase row (0, so it is not counted twice), and
BilledCost is 0 on the covered usage and unused rows (they were billed by the purchase), the cost elsewhere.
Load one of the two per account, not both (they describe the same charges).

"""
    return head + aliases + "." + notes + ACTUAL.markdown() + "\n\n" + AMORTIZED.markdown() + "\n"
