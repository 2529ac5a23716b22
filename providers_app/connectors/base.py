"""The connector interface: cost sources yield FOCUS 1.2 batches, resource sources yield inventory rows.

Every connector (FOCUS files, AWS, Azure, GCP) speaks these types, so ingestion, inventory
and the tasks never know which cloud they talk to. Cloud SDKs are imported only under
providers_app/connectors/, and their exceptions are translated into TransientError / PermanentError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from finops.errors import PermanentError

if TYPE_CHECKING:
    import pyarrow as pa

    from providers_app.models import CloudAccount

# How many example rows a rule keeps; the count is always complete.
MAX_EXAMPLES = 5
ERROR, WARNING = "error", "warning"


@dataclass
class RuleViolation:
    rule: str
    column: str
    severity: str
    problem: str  # e.g. "is not a decimal"; the message puts the value in front of it
    count: int = 0
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "column": self.column,
            "severity": self.severity,
            "problem": self.problem,
            "count": self.count,
            "examples": self.examples,
        }

    def message(self) -> str:
        first = self.examples[0] if self.examples else {}
        where = str(first.get("file", "?"))
        if first.get("row") is not None:
            where += f" row {first['row']}"
        if self.column:
            where += f" column {self.column}"
        value = first.get("value")
        text = f"{where}: {value!r} {self.problem}" if value is not None else f"{where}: {self.problem}"
        if self.count > 1:
            text += f" ({self.count - 1} more row{'s' if self.count > 2 else ''} with this problem)"
        return text


@dataclass
class RuleReport:
    """FOCUS rule checks of one import: per rule and column, the count and the first example rows."""

    violations: dict[tuple[str, str], RuleViolation] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unknown_columns: dict[str, list[str]] = field(default_factory=dict)  # file -> ignored column names
    missing_columns: dict[str, list[str]] = field(default_factory=dict)  # file -> FOCUS 1.2 columns set to NULL
    versions: dict[str, str] = field(default_factory=dict)  # file -> detected FOCUS version

    def add(
        self,
        *,
        rule: str,
        column: str,
        severity: str,
        problem: str,
        count: int,
        examples: list[dict],
    ) -> None:
        if count <= 0:
            return
        key = (rule, column)
        violation = self.violations.get(key)
        if violation is None:
            violation = self.violations[key] = RuleViolation(rule, column, severity, problem)
        violation.count += count
        room = MAX_EXAMPLES - len(violation.examples)
        if room > 0:
            violation.examples.extend(examples[:room])

    @property
    def errors(self) -> list[RuleViolation]:
        return [v for v in self.violations.values() if v.severity == ERROR]

    @property
    def has_errors(self) -> bool:
        return any(v.severity == ERROR for v in self.violations.values())

    def error_message(self) -> str:
        lines = [v.message() for v in self.errors]
        head = lines[0]
        if len(lines) > 1:
            head += f"; and {len(lines) - 1} more problem{'s' if len(lines) > 2 else ''}: " + "; ".join(lines[1:])
        return head + ". Nothing was imported."

    def as_dict(self) -> dict:
        return {
            "ok": not self.has_errors,
            "violations": [v.as_dict() for v in self.violations.values()],
            "warnings": list(self.warnings),
            "unknown_columns": self.unknown_columns,
            "missing_columns": self.missing_columns,
            "versions": self.versions,
        }


@dataclass
class CostBatch:
    """A slice of one source file, already normalised to the 57 FOCUS 1.2 columns in spec order.

    Money and quantities are validated decimal *strings* (never float: PostgreSQL parses them exactly),
    date-times are timestamp[us, UTC], JSON columns are validated JSON text.
    """

    file: str
    first_row: int  # 1-based data row (the header is not a row) of table's first row within its file
    table: pa.Table
    periods: dict[str, int]  # billing period "YYYY-MM" -> rows of this batch in it
    # 1-based source row of each table row when rows were filtered out; None means first_row, first_row+1, ...
    row_numbers: pa.Array | None = None


class CostSource(ABC):
    """Yields a whole cost export for one account as FOCUS 1.2 batches; checks the FOCUS rules as it goes.

    Consumers iterate `batches()` to the end, then look at `report`: when it has errors, the data must
    not be kept (batches stop being yielded at the first error, but checking continues so the counts
    are complete).
    """

    def __init__(self, account: CloudAccount):
        self.account = account
        self.report = RuleReport()
        self.files: list[str] = []
        self.rows_read = 0
        self.rows_skipped = 0  # outside the requested billing period; counted, never silently lost
        # Change detection: billing period -> fingerprint (e.g. the export files' ETags) of what was loaded last
        # time, set by ingestion before `batches()`. A source skips a period whose fingerprint is unchanged,
        # lists it in `unchanged_periods`, and puts the fingerprint of every period it yields in `fingerprints`
        # (ingestion stores them once the load has committed).
        self.known_fingerprints: dict[str, str] = {}
        self.fingerprints: dict[str, str] = {}
        self.unchanged_periods: list[str] = []

    @abstractmethod
    def batches(self, *, billing_period: str | None = None) -> Iterator[CostBatch]: ...


# --- Resources: what discovery yields, and what the optimisation rules read ---
#
# A ResourceSource yields one dict per resource with Resource's field names:
#   resource_id    the string the provider's cost data uses as FOCUS ResourceId, so cost lines join on it
#                  (AWS: "i-0abc…", "vol-…", "snap-…", "eipalloc-…", ARNs for load balancers and RDS, bucket
#                  names; Azure: the ARM id, lower-cased; GCP: the detailed billing export's resource.global_name,
#                  "//compute.googleapis.com/projects/P/zones/Z/instances/<numeric id>" and the like)
#   resource_type  one of RESOURCE_KINDS
#   service_name   the FOCUS ServiceName of its charges ("Amazon Elastic Compute Cloud", "Virtual Machines", …)
#   region, name, state (the provider's state, lower-case: "running", "stopped", "available", "in-use", …)
#   tags           {key: value}
#   attributes     the kind's keys below; time values are ISO-8601 UTC strings, sizes in GiB, CPU in percent.
RESOURCE_KINDS = {
    "instance": "a virtual machine (EC2 instance, Azure VM, Compute Engine instance)",
    "volume": "a block storage disk (EBS volume, Azure managed disk, GCP persistent disk)",
    "snapshot": "a disk snapshot",
    "ip_address": "a reserved public IP address (Elastic IP, Azure public IP, GCP static address)",
    "load_balancer": "a load balancer",
    "database": "a managed database instance (RDS)",
    "bucket": "an object storage bucket",
}
RESOURCE_ATTRIBUTES = {
    "*": ["created_at"],
    "instance": [
        "instance_type",  # "m5.xlarge", "Standard_D4s_v3", "n2-standard-4"
        "stopped_at",  # when it was stopped (state "stopped"/"deallocated"/"terminated" on GCP), else absent
        "attached_volume_ids",  # resource ids of its disks
        "cpu_hourly",  # hourly average CPU utilisation, oldest first (up to the connector's look-back)
        "cpu_hourly_end",  # end of the last hour in cpu_hourly
    ],
    "volume": ["size_gb", "volume_type", "attached_to"],  # attached_to: instance resource ids, [] when unattached
    "snapshot": ["size_gb", "source_volume_id"],  # the volume it was taken of ("" when unknown)
    "ip_address": ["address", "associated_with"],  # associated_with: resource id, "" when unassociated
    "load_balancer": ["lb_type", "target_count", "request_count_daily"],  # requests per day, oldest first
    "database": ["instance_class", "engine", "cpu_hourly", "cpu_hourly_end"],
    "bucket": [],
}
# Attributes only some connectors can give (absent: unknown; rules then judge without them).
OPTIONAL_RESOURCE_ATTRIBUTES = {
    "instance": [
        "memory_available_hourly",  # hourly average free memory in bytes, oldest first (Azure VMs)
        "memory_hourly_end",  # end of the last hour in memory_available_hourly
    ],
}


class ResourceSource(ABC):
    """Yields the account's resources as dicts with Resource field names (see RESOURCE_ATTRIBUTES above)."""

    def __init__(self, account: CloudAccount):
        self.account = account

    @abstractmethod
    def resources(self) -> Iterator[dict]: ...


@dataclass
class ConnectionCheck:
    name: str  # what was tried, e.g. "credentials", "s3:ListBucket on finops-exports", "export manifest"
    ok: bool
    detail: str = ""  # on failure: what is wrong and what to do, naming the key, permission, bucket or path

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class ConnectionReport:
    """The outcome of "test connection": each check in order; the first failure says what is wrong."""

    provider: str
    account: str
    checks: list[ConnectionCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def passed(self, name: str, detail: str = "") -> None:
        self.checks.append(ConnectionCheck(name, True, detail))

    def failed(self, name: str, detail: str) -> None:
        self.checks.append(ConnectionCheck(name, False, detail))

    def summary(self) -> str:
        failed = [check for check in self.checks if not check.ok]
        if not failed:
            return f"{self.account}: connection OK ({', '.join(check.name for check in self.checks)})"
        return f"{self.account}: {failed[0].name} failed: {failed[0].detail}"

    def as_dict(self) -> dict:
        return {
            "provider": self.provider,
            "account": self.account,
            "ok": self.ok,
            "summary": self.summary(),
            "checks": [check.as_dict() for check in self.checks],
        }


def _provider_module(account: CloudAccount):
    """providers_app.connectors.<provider>: defines cost_source(), resource_source() and connection_check()."""
    import importlib

    try:
        return importlib.import_module(f"providers_app.connectors.{account.provider}")
    except ModuleNotFoundError as exc:
        if exc.name != f"providers_app.connectors.{account.provider}":
            raise  # the connector exists but one of its SDKs is missing: say so, don't hide it
        raise PermanentError(f"{account.provider} connector not available (account {account.name!r})") from None


def egress_check(account: CloudAccount) -> None:
    """The egress policy over the account's endpoint settings and credential, before any SDK is touched: a row
    written before the policy existed (or straight into the database) is refused here, at call time, too."""
    from .endpoints import ENDPOINT_SETTINGS, credential_check, settings_check

    if account.provider not in ENDPOINT_SETTINGS:
        return
    settings_check(account.provider, account.settings or {})
    credential = getattr(account, "credential", None) if account.pk else None
    if credential is not None and account.provider == "gcp":
        credential_check(account.provider, credential.get_secret())


def get_cost_source(account: CloudAccount) -> CostSource:
    if account.provider == "focus":
        from .focus import FocusFileSource

        return FocusFileSource(account)
    egress_check(account)
    return _provider_module(account).cost_source(account)


def get_resource_source(account: CloudAccount) -> ResourceSource | None:
    """None for focus accounts: their inventory is derived from the cost lines (costs_app.services.inventory)."""
    if account.provider == "focus":
        return None
    egress_check(account)
    return _provider_module(account).resource_source(account)


def connection_check(account: CloudAccount) -> ConnectionReport:
    """Try the account's credentials and settings the way sync and discovery will use them; never raises."""
    if account.provider == "focus":
        from .focus import connection_check as focus_check

        return focus_check(account)
    from finops.egress import EgressRefused

    try:
        egress_check(account)
    except EgressRefused as exc:
        report = ConnectionReport(provider=account.provider, account=account.name)
        report.failed("egress policy", str(exc))
        return report
    return _provider_module(account).connection_check(account)
