"""The FinOps Foundation's focus-validator (FOCUS 1.2 rules) on our export: no failure the source data did not have.

focus-validator 2.2.x needs Python >= 3.12 and numpy < 2, so it lives in its own virtual environment, created
on first use from pyenv's 3.12 under ~/.cache/finops/ (FOCUS_VALIDATOR_CACHE), named by the pinned packages, so
that clones and CI runs on one machine share it like pip's own cache (~30 s a clean clone). It is run with
--block-download from its package's parent folder, where it finds its rule model and currency list.

What remains, and why it is the source's (focus_sample_1.0.csv is FOCUS 1.0 data validated against 1.2):
- BilledCost-C-005-C: the rule reads ProviderName != InvoiceIssuerName as "paid to a third party" and then
  wants BilledCost 0; the sample names the provider "AWS" and the issuer "Amazon Web Services, Inc.".
- ContractedCost-C-003-M / C-004-M: the sample's 7 Oracle rows have no ContractedCost (kept null, reported).
- InvoiceId-C-005-C: FOCUS 1.0 has no InvoiceId, so it is null in every exported row (the source fails the
  InvoiceId rules through the missing column instead).
- PricingUnit-C-003-O: 9 sample rows use units outside the FOCUS UnitFormat ("GB Hours", "OCPU Per Hour", ...).
- ServiceName-C-005-C: the sample gives one ServiceName two ServiceCategory values.
- ServiceName-C-008-C, ServiceSubcategory-C-002-M: FOCUS 1.0 has no ServiceSubcategory (null in the export;
  the source fails the same rules through the missing column).
- and the composite rules over those: BilledCost-C-000-M, ContractedCost-C-000-M, PricingUnit-C-000-M,
  ServiceName-C-000-M, ServiceName-C-004-C, ServiceName-C-007-C, ServiceSubcategory-C-000-O.
"""

import glob
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from costs_app.services.export import focus_export
from costs_app.services.ingest import focus_file_import
from tests.factories import CloudAccountFactory
from tests.providers_app.focus_files import SAMPLE

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(900)]

# pyarrow is unpinned by focus-validator, but from 22 on it needs numpy 2 while the validator pins numpy < 2.
VALIDATOR_PACKAGES = ["focus-validator==2.2.1", "pyarrow==21.0.0"]
VALIDATOR_VENV = Path(os.environ.get("FOCUS_VALIDATOR_CACHE") or Path.home() / ".cache" / "finops") / (
    "focus-validator-" + hashlib.sha256(" ".join(VALIDATOR_PACKAGES).encode()).hexdigest()[:12]
)
FAILED_RULE = re.compile(r"^❌ (\S+): FAIL\s+\(violations=(\d+)", re.MULTILINE)

EXPECTED_EXPORT_FAILURES = {
    "BilledCost-C-000-M",
    "BilledCost-C-005-C",
    "ContractedCost-C-000-M",
    "ContractedCost-C-003-M",
    "ContractedCost-C-004-M",
    "InvoiceId-C-005-C",
    "PricingUnit-C-000-M",
    "PricingUnit-C-003-O",
    "ServiceName-C-000-M",
    "ServiceName-C-004-C",
    "ServiceName-C-005-C",
    "ServiceName-C-007-C",
    "ServiceName-C-008-C",
    "ServiceSubcategory-C-000-O",
    "ServiceSubcategory-C-002-M",
}


def python312() -> str | None:
    found = sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python")) + [
        p for p in (shutil.which("python3.12"),) if p
    ]
    return found[0] if found else None


@pytest.fixture(scope="session")
def validator() -> tuple[Path, Path]:
    """(focus-validator executable, the folder to run it from), installing it on first use."""
    executable = VALIDATOR_VENV / "bin" / "focus-validator"
    python = VALIDATOR_VENV / "bin" / "python"
    ready = VALIDATOR_VENV / ".installed"  # written last: a venv whose install was cut short is made again
    if not ready.exists():
        base = python312()
        if base is None:
            pytest.skip("focus-validator needs Python 3.12, and none is installed (pyenv 3.12 or python3.12)")
        subprocess.run([base, "-m", "venv", "--clear", str(VALIDATOR_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *VALIDATOR_PACKAGES], check=True)
        ready.write_text(" ".join(VALIDATOR_PACKAGES) + "\n")
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import os, focus_validator; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return executable, Path(where)


@pytest.fixture(scope="module")
def source_failures(validator) -> dict[str, int]:
    """The sample's own findings, the same for both formats: validated once (~8 s)."""
    return failed_rules(validator, SAMPLE)


def failed_rules(validator, data_file: Path) -> dict[str, int]:
    executable, cwd = validator
    run = subprocess.run(
        [str(executable), "--block-download", "--validate-version", "1.2.0.1", "--data-file", str(data_file)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "=== Validation Results ===" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    return {rule: int(count) for rule, count in FAILED_RULE.findall(run.stdout)}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_validator_finds_nothing_in_the_export_the_source_did_not_have(validator, source_failures, tmp_path, fmt):
    # given
    account = CloudAccountFactory()
    focus_file_import(account=account, path=str(SAMPLE))
    exported = tmp_path / f"export.{fmt}"
    focus_export(account=account, start=None, end=None, out=exported, fmt=fmt)
    # when
    export_failures = failed_rules(validator, exported)
    # then
    assert set(export_failures) <= set(source_failures), set(export_failures) - set(source_failures)
    assert set(export_failures) == EXPECTED_EXPORT_FAILURES
    # the row-level findings the source has are the same rows, not more
    for rule in ("BilledCost-C-005-C", "ContractedCost-C-003-M", "PricingUnit-C-003-O"):
        assert export_failures[rule] == source_failures[rule]
