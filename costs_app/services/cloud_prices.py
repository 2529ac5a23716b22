"""A small list-price and size catalogue: what the optimisation rules fall back to when a resource has no cost line.

Prices are public on-demand list prices in USD (Linux, no licence) of one reference region per cloud —
AWS us-east-1, Azure East US, GCP us-central1 — as published in 2024. They are only used when the cost
data has nothing on the resource (a resource newer than the last export, or a cost export that does not
name resources); the cost lines always win. A wrong or missing entry makes an estimate rougher, never a
recommendation wrong: sizes and generations are about the *shape* of an instance, prices only rank them.

Instance families are listed with their sizes; within a family the price scales with the size
(AWS's normalisation factor, Azure's and GCP's vCPU count), so one price per unit describes the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

HOURS_PER_MONTH = Decimal("730.5")  # 365.25 * 24 / 12


@dataclass(frozen=True)
class InstanceType:
    provider: str
    name: str
    family: str
    vcpus: int
    hourly_usd: Decimal
    # Burstable types run on CPU credits: their utilisation does not scale with the size, so no rightsizing.
    burstable: bool = False
    # False for families where CPU is not what is bought (storage-optimised): no CPU-based rightsizing.
    rightsizable: bool = True
    # Memory in GiB, where a connector reports memory use (Azure's "Available Memory Bytes"); None: not listed.
    memory_gib: Decimal | None = None


_TYPES: dict[tuple[str, str], InstanceType] = {}
_FAMILIES: dict[tuple[str, str], list[InstanceType]] = {}


def _add(t: InstanceType) -> None:
    _TYPES[(t.provider, t.name)] = t
    _FAMILIES.setdefault((t.provider, t.family), []).append(t)


# --- AWS: family -> (USD per normalisation-factor unit and hour, sizes) ---
# Normalisation factors (AWS: "instance size flexibility"): the price ratio between sizes of one family.
AWS_SIZE_FACTOR = {
    "nano": Decimal("0.25"), "micro": Decimal("0.5"), "small": Decimal(1), "medium": Decimal(2), "large": Decimal(4),
    "xlarge": Decimal(8), "2xlarge": Decimal(16), "3xlarge": Decimal(24), "4xlarge": Decimal(32),
    "6xlarge": Decimal(48), "8xlarge": Decimal(64), "9xlarge": Decimal(72), "10xlarge": Decimal(80),
    "12xlarge": Decimal(96), "16xlarge": Decimal(128), "18xlarge": Decimal(144), "24xlarge": Decimal(192),
    "32xlarge": Decimal(256), "48xlarge": Decimal(384),
}  # fmt: skip
_M5 = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
_M6 = (*_M5, "32xlarge")
_M7 = (*_M5, "48xlarge")
_GRAVITON = ("medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
_BURST = ("nano", "micro", "small", "medium", "large", "xlarge", "2xlarge")
AWS_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    # general purpose
    "m3": ("0.03325", ("medium", "large", "xlarge", "2xlarge")),
    "m4": ("0.025", ("large", "xlarge", "2xlarge", "4xlarge", "10xlarge", "16xlarge")),
    "m5": ("0.024", _M5),
    "m5a": ("0.0215", _M5),
    "m6i": ("0.024", _M6),
    "m6a": ("0.0216", (*_M6, "48xlarge")),
    "m6g": ("0.01925", _GRAVITON),
    "m7i": ("0.0252", _M7),
    "m7g": ("0.0204", _GRAVITON),
    # compute optimised
    "c3": ("0.02625", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge")),
    "c4": ("0.025", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge")),
    "c5": ("0.02125", ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge")),
    "c6i": ("0.02125", _M6),
    "c6g": ("0.017", _GRAVITON),
    "c7i": ("0.0223125", _M7),
    # memory optimised
    "r3": ("0.0415", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge")),
    "r4": ("0.03325", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")),
    "r5": ("0.0315", _M5),
    "r6i": ("0.0315", _M6),
    "r6g": ("0.0252", _GRAVITON),
    "r7i": ("0.033075", _M7),
    # burstable
    "t2": ("0.0232", _BURST),
    "t3": ("0.0208", _BURST),
    "t3a": ("0.0188", _BURST),
    # storage optimised
    "i2": ("0.106625", ("xlarge", "2xlarge", "4xlarge", "8xlarge")),
    "i3": ("0.039", ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")),
}
_AWS_BURST_VCPUS = {
    "t2": {"nano": 1, "micro": 1, "small": 1, "medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8},
    "t3": {"nano": 2, "micro": 2, "small": 2, "medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8},
}
_AWS_BURST_VCPUS["t3a"] = _AWS_BURST_VCPUS["t3"]


def _aws_vcpus(size: str) -> int:
    if size == "medium":
        return 1
    if size == "large":
        return 2
    if size == "xlarge":
        return 4
    return 4 * int(size.removesuffix("xlarge"))


for _family, (_unit, _sizes) in AWS_FAMILIES.items():
    for _size in _sizes:
        _burst = _family in _AWS_BURST_VCPUS
        _add(
            InstanceType(
                provider="aws",
                name=f"{_family}.{_size}",
                family=_family,
                vcpus=_AWS_BURST_VCPUS[_family][_size] if _burst else _aws_vcpus(_size),
                hourly_usd=(Decimal(_unit) * AWS_SIZE_FACTOR[_size]).quantize(Decimal("0.0001")),
                burstable=_burst,
                rightsizable=not _burst and not _family.startswith("i"),
            )
        )

# --- Azure: family (name template) -> (USD per vCPU and hour, vCPU counts) ---
AZURE_FAMILIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "Standard_D{n}s_v3": ("0.048", (2, 4, 8, 16, 32, 48, 64)),
    "Standard_D{n}_v3": ("0.048", (2, 4, 8, 16, 32, 48, 64)),
    "Standard_D{n}s_v4": ("0.048", (2, 4, 8, 16, 32, 48, 64)),
    "Standard_D{n}s_v5": ("0.048", (2, 4, 8, 16, 32, 48, 64, 96)),
    "Standard_D{n}as_v5": ("0.043", (2, 4, 8, 16, 32, 48, 64, 96)),
    "Standard_E{n}s_v3": ("0.063", (2, 4, 8, 16, 20, 32, 48, 64)),
    "Standard_E{n}s_v5": ("0.063", (2, 4, 8, 16, 20, 32, 48, 64, 96)),
    "Standard_E{n}as_v5": ("0.0565", (2, 4, 8, 16, 20, 32, 48, 64, 96)),
    "Standard_F{n}s_v2": ("0.0423", (2, 4, 8, 16, 32, 48, 64, 72)),
}
# GiB of memory per vCPU by series (D: 4, E: 8, F: 2), and the sizes that break the rule.
AZURE_GIB_PER_VCPU = {"D": 4, "E": 8, "F": 2}
AZURE_MEMORY_GIB = {"Standard_E64s_v3": 432, "Standard_E96s_v5": 672, "Standard_E96as_v5": 672}
for _template, (_unit, _counts) in AZURE_FAMILIES.items():
    for _n in _counts:
        _name = _template.format(n=_n)
        _add(
            InstanceType(
                provider="azure",
                name=_name,
                family=_template,
                vcpus=_n,
                hourly_usd=(Decimal(_unit) * _n).quantize(Decimal("0.0001")),
                memory_gib=Decimal(AZURE_MEMORY_GIB.get(_name, AZURE_GIB_PER_VCPU[_template[9]] * _n)),
            )
        )
# Dv2 / DSv2 (previous generation): the number in the name is not the vCPU count, so they are listed one by one;
# Standard_D2_v2 and Standard_DS2_v2 cost the same.
for _number, _vcpus, _price, _gib in [
    (1, 1, "0.057", "3.5"), (2, 2, "0.114", "7"), (3, 4, "0.229", "14"), (4, 8, "0.458", "28"),
    (5, 16, "0.916", "56"), (11, 2, "0.148", "14"), (12, 4, "0.296", "28"), (13, 8, "0.593", "56"),
    (14, 16, "1.186", "112"),
]:  # fmt: skip
    for _series in ("D", "DS"):
        _family = "Dv2" if _number < 11 else "Dv2-mem"  # D11-D14: the memory-optimised ones
        _add(
            InstanceType(
                "azure", f"Standard_{_series}{_number}_v2", _family, _vcpus, Decimal(_price), memory_gib=Decimal(_gib)
            )
        )

# --- GCP: family -> (USD per vCPU and hour, vCPU counts); names are "<family>-<n>" ---
GCP_FAMILIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "n1-standard": ("0.0475", (1, 2, 4, 8, 16, 32, 64, 96)),
    "n1-highmem": ("0.0592", (2, 4, 8, 16, 32, 64, 96)),
    "n1-highcpu": ("0.03545", (2, 4, 8, 16, 32, 64, 96)),
    "n2-standard": ("0.04855", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    "n2-highmem": ("0.0655", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    "n2-highcpu": ("0.03585", (2, 4, 8, 16, 32, 48, 64, 80, 96)),
    "n2d-standard": ("0.04225", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224)),
    "e2-standard": ("0.0335", (2, 4, 8, 16, 32)),
    "e2-highmem": ("0.0452", (2, 4, 8, 16)),
    "e2-highcpu": ("0.0247", (2, 4, 8, 16, 32)),
    "c2-standard": ("0.0522", (4, 8, 16, 30, 60)),
}
for _family, (_unit, _counts) in GCP_FAMILIES.items():
    for _n in _counts:
        _add(InstanceType("gcp", f"{_family}-{_n}", _family, _n, (Decimal(_unit) * _n).quantize(Decimal("0.0001"))))

for _members in _FAMILIES.values():
    _members.sort(key=lambda t: (t.hourly_usd, t.vcpus))

# --- Previous generations: family -> the current family that replaces it (same size, or the nearest larger) ---
PREVIOUS_GENERATION: dict[tuple[str, str], str] = {
    ("aws", "m3"): "m5",
    ("aws", "m4"): "m5",
    ("aws", "c3"): "c5",
    ("aws", "c4"): "c5",
    ("aws", "r3"): "r5",
    ("aws", "r4"): "r5",
    ("aws", "t2"): "t3",
    ("aws", "i2"): "i3",
    ("azure", "Dv2"): "Standard_D{n}s_v5",
    ("azure", "Dv2-mem"): "Standard_E{n}s_v5",
    ("azure", "Standard_D{n}s_v3"): "Standard_D{n}as_v5",
    ("azure", "Standard_D{n}_v3"): "Standard_D{n}as_v5",
    ("azure", "Standard_D{n}s_v4"): "Standard_D{n}as_v5",
    ("azure", "Standard_E{n}s_v3"): "Standard_E{n}as_v5",
    ("gcp", "n1-standard"): "e2-standard",
    ("gcp", "n1-highmem"): "e2-highmem",
    ("gcp", "n1-highcpu"): "e2-highcpu",
}

# --- Storage, addresses, load balancers ---
VOLUME_GB_MONTH_USD: dict[str, dict[str, Decimal]] = {
    "aws": {
        "gp2": Decimal("0.10"), "gp3": Decimal("0.08"), "io1": Decimal("0.125"), "io2": Decimal("0.125"),
        "st1": Decimal("0.045"), "sc1": Decimal("0.015"), "standard": Decimal("0.05"), "": Decimal("0.08"),
    },
    "azure": {
        "premium_lrs": Decimal("0.15"), "premium_zrs": Decimal("0.19"), "premiumv2_lrs": Decimal("0.12"),
        "standardssd_lrs": Decimal("0.075"), "standardssd_zrs": Decimal("0.094"), "standard_lrs": Decimal("0.045"),
        "ultrassd_lrs": Decimal("0.12"), "": Decimal("0.10"),
    },
    "gcp": {
        "pd-standard": Decimal("0.04"), "pd-balanced": Decimal("0.10"), "pd-ssd": Decimal("0.17"),
        "pd-extreme": Decimal("0.125"), "hyperdisk-balanced": Decimal("0.08"), "": Decimal("0.10"),
    },
}  # fmt: skip
SNAPSHOT_GB_MONTH_USD = {"aws": Decimal("0.05"), "azure": Decimal("0.05"), "gcp": Decimal("0.05")}
# A public IPv4 address that is reserved but not in use, per hour.
IDLE_IP_HOUR_USD = {"aws": Decimal("0.005"), "azure": Decimal("0.005"), "gcp": Decimal("0.01")}
# A load balancer's fixed hourly charge (capacity units come on top, and are zero when idle).
LOAD_BALANCER_HOUR_USD: dict[str, dict[str, Decimal]] = {
    "aws": {"application": Decimal("0.0225"), "network": Decimal("0.0225"), "gateway": Decimal("0.0125"),
            "classic": Decimal("0.025"), "": Decimal("0.0225")},
    "azure": {"": Decimal("0.025")},
    "gcp": {"": Decimal("0.025")},
}  # fmt: skip


def instance_type(provider: str, name: str) -> InstanceType | None:
    return _TYPES.get((provider, (name or "").strip()))


def family_members(t: InstanceType) -> list[InstanceType]:
    """The sizes of t's family, cheapest first."""
    return list(_FAMILIES.get((t.provider, t.family), []))


def previous_generation_replacement(t: InstanceType) -> InstanceType | None:
    """The current-generation type with at least t's size, or None when t is current (or has no cheaper successor)."""
    target_family = PREVIOUS_GENERATION.get((t.provider, t.family))
    if target_family is None:
        return None
    candidates = _FAMILIES.get((t.provider, target_family), [])
    if t.provider == "aws":
        same = instance_type("aws", f"{target_family}.{t.name.split('.', 1)[1]}")
        if same is not None:
            return same
    fitting = [c for c in candidates if c.vcpus >= t.vcpus]
    return min(fitting, key=lambda c: (c.vcpus, c.hourly_usd)) if fitting else None


def monthly_usd(hourly: Decimal) -> Decimal:
    return hourly * HOURS_PER_MONTH


def volume_gb_month_usd(provider: str, volume_type: str) -> Decimal | None:
    table = VOLUME_GB_MONTH_USD.get(provider)
    if table is None:
        return None
    return table.get((volume_type or "").lower(), table[""])


def snapshot_gb_month_usd(provider: str) -> Decimal | None:
    return SNAPSHOT_GB_MONTH_USD.get(provider)


def idle_ip_hour_usd(provider: str) -> Decimal | None:
    return IDLE_IP_HOUR_USD.get(provider)


def load_balancer_hour_usd(provider: str, lb_type: str) -> Decimal | None:
    table = LOAD_BALANCER_HOUR_USD.get(provider)
    if table is None:
        return None
    return table.get((lb_type or "").lower(), table[""])
