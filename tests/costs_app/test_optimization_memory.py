"""Memory-based rightsizing: where a connector reports memory use (Azure's "Available Memory Bytes"), a VM whose
CPU would fit a smaller size is not downsized when its memory would not."""

from __future__ import annotations

from decimal import Decimal

import pytest

from costs_app.models import Recommendation
from costs_app.services.optimization import recommendations_refresh
from tests.costs_app.test_optimization import HOURS, NOW, cents, iso, recs, resource, shaped_cpu
from tests.factories import CloudAccountFactory

GIB = 2**30
HOURS_SAMPLED = 14 * 24


def memory_used(*, total_gib: int, p95_pct: float, base_pct: float = 10.0) -> dict:
    """Hourly "Available Memory Bytes" over the CPU window whose used share has p95 `p95_pct` % (and max too)."""
    free = [total_gib * GIB * (1 - base_pct / 100)] * 300 + [total_gib * GIB * (1 - p95_pct / 100)] * 36
    return {"memory_available_hourly": [round(v) for v in free], "memory_hourly_end": iso(NOW)}


@pytest.fixture
def azure(db, settings):
    settings.OPTIMIZATION_REQUIRED_TAG_KEYS = []
    return CloudAccountFactory(provider="azure")


# Standard_D8s_v5: 8 vCPU, 32 GiB, 0.384 USD/h. CPU p95 15 %, peak 20 %: by CPU alone, 2 vCPU (8 GiB) fits.
LOW_CPU = {"state": "running", "instance_type": "Standard_D8s_v5", **shaped_cpu(base=10, p95=15, peak=20)}


def test_memory_bound_vm_with_low_cpu_is_not_downsized(azure):
    # given: memory p95 85 % of 32 GiB, above the 80 % limit; any smaller D*s_v5 has less memory
    resource(azure, "instance", "vm-memory-bound", **LOW_CPU, **memory_used(total_gib=32, p95_pct=85))
    # when
    result = recommendations_refresh(now=NOW)
    # then
    assert "vm-memory-bound" not in recs("rightsizing")
    assert result.found.get("rightsizing", 0) == 0


def test_memory_limits_how_far_a_vm_is_downsized_and_the_finding_states_the_evidence(azure):
    # given: memory p95 30 % of 32 GiB (9.6 GiB): 8 GiB (2 vCPU) would be 120 %, 16 GiB (4 vCPU) 60 %
    resource(azure, "instance", "vm-roomy", **LOW_CPU, **memory_used(total_gib=32, p95_pct=30))
    # when
    recommendations_refresh(now=NOW)
    # then: 4 vCPU, not the 2 vCPU that CPU alone would pick
    rec = recs("rightsizing")["vm-roomy"]
    assert rec.details["recommended_type"] == "Standard_D4s_v5"
    assert rec.details["memory_used_p95_pct"] == 30.0
    assert rec.details["memory_gib"] == "32" and rec.details["recommended_memory_gib"] == "16"
    assert rec.details["projected_memory_used_p95_pct"] == 60.0
    assert rec.details["thresholds"]["OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT"] == 80.0
    assert "memory use p95 was 30% of 32 GiB, about 60% of the 16 GiB of Standard_D4s_v5" in rec.details["summary"]
    assert rec.estimated_monthly_saving == cents(cents(Decimal("0.384") * HOURS) * Decimal("0.5"))


def test_memory_limit_comes_from_settings(azure, settings):
    # given: memory p95 45 %: 16 GiB would be 90 %, over the default 80 % but under 95 %
    resource(azure, "instance", "vm-1", **LOW_CPU, **memory_used(total_gib=32, p95_pct=45))
    recommendations_refresh(now=NOW)
    assert "vm-1" not in recs("rightsizing")  # 32 GiB is the only size with room; none smaller
    # when
    settings.OPTIMIZATION_RIGHTSIZING_MAX_MEMORY_PCT = 95
    recommendations_refresh(now=NOW)
    # then
    assert recs("rightsizing")["vm-1"].details["recommended_type"] == "Standard_D4s_v5"


@pytest.mark.parametrize(
    "memory",
    [
        {},  # the connector reports no memory
        {"memory_available_hourly": [], "memory_hourly_end": None},
        # too few samples to judge by (below OPTIMIZATION_CPU_MIN_COVERAGE): ignored, as for CPU
        {"memory_available_hourly": [GIB] * 24, "memory_hourly_end": iso(NOW)},
    ],
    ids=["absent", "empty", "sparse"],
)
def test_without_usable_memory_metrics_rightsizing_is_judged_by_cpu_as_before(azure, memory):
    # given
    resource(azure, "instance", "vm-1", **LOW_CPU, **memory)
    # when
    recommendations_refresh(now=NOW)
    # then: 2 vCPU as CPU alone picks, no memory evidence, the CPU-only wording
    rec = recs("rightsizing")["vm-1"]
    assert rec.details["recommended_type"] == "Standard_D2s_v5"
    assert not {key for key in rec.details if key.startswith("memory") or "memory" in key}
    assert rec.details["action"] == "Change the instance type to Standard_D2s_v5 (a stop/start), then watch its CPU."
    assert Recommendation.objects.count() == 1
