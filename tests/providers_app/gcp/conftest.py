"""GCP test servers: gcp-storage-emulator for GCS, and a local Google REST API (OAuth, BigQuery, Compute)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .google_api import GoogleApi

PROJECT = "acme-billing"
BILLING_ACCOUNT = "01A2B3-C4D5E6-F7G8H9"
DATASET = "billing_export"
DETAILED_TABLE = f"{PROJECT}.{DATASET}.gcp_billing_export_resource_v1_01A2B3_C4D5E6_F7G8H9"
STANDARD_TABLE = f"{PROJECT}.{DATASET}.gcp_billing_export_v1_01A2B3_C4D5E6_F7G8H9"
READER = f"finops-reader@{PROJECT}.iam.gserviceaccount.com"
INVENTORY_PROJECT = "acme-prod"
EMULATOR_VERSION = "gcp-storage-emulator==2026.7.19"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def google_api():
    api = GoogleApi()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def service_account(google_api):
    """(key JSON, private key) of the reader service account the local token endpoint knows."""
    return google_api.register(READER, PROJECT)


@pytest.fixture
def api(google_api):
    """The local Google API with no faults, the detailed and standard export tables empty, acme-prod's resources."""
    google_api.reset_faults()
    google_api.tables.clear()
    google_api.compute_load(INVENTORY_PROJECT)
    google_api.cpu.clear()
    yield google_api
    google_api.reset_faults()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """gcp-storage-emulator on a free loopback port (installed into this interpreter if missing); its URL."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", EMULATOR_VERSION], check=True)
    port = free_port()
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "gcp_storage_emulator"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "start", "--in-memory", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"gcp-storage-emulator did not listen on {port}: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def gcs_client(gcs_emulator):
    """A storage client on the emulator, anonymous (the test's own set-up of buckets and objects)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_emulator}
    )


def billing_rows(
    month: str, n: int, *, cost: str = "1.25", credit: str | None = "-0.25", seed: int = 0, cost_type="regular"
) -> list[dict]:
    """n detailed-export lines of invoice month "YYYYMM" (every other one with a sustained-use credit)."""
    year, mon = int(month[:4]), int(month[4:])
    start = datetime(year, mon, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        day = start + timedelta(hours=(i * 7) % (24 * 27))
        instance = 4121876543210987654 if i % 2 == 0 else 7300218765432109876
        zone = "us-central1-a" if i % 2 == 0 else "europe-west1-b"
        rows.append(
            {
                "billing_account_id": BILLING_ACCOUNT,
                "service": {"id": "6F81-5844-456A", "description": "Compute Engine"},
                "sku": {"id": "CF4E-A0C7-E3BF", "description": "N2 Instance Core running in Americas"},
                "usage_start_time": day,
                "usage_end_time": day + timedelta(hours=1),
                "project": {
                    "id": "acme-prod",
                    "number": "123456789012",
                    "name": "Acme Prod",
                    "labels": [{"key": "cost-center", "value": "cc-42"}, {"key": "env", "value": "project-env"}],
                    "ancestry_numbers": "/987/123456789012/",
                    "ancestors": [],
                },
                "labels": [{"key": "env", "value": "prod"}, {"key": "team", "value": f"t{(i + seed) % 3}"}],
                "system_labels": [{"key": "compute.googleapis.com/machine_spec", "value": "n2-standard-4"}],
                "location": {"location": zone[:-2], "country": "US", "region": zone[:-2], "zone": zone},
                "tags": [],
                "transaction_type": "GOOGLE",
                "seller_name": None,
                "export_time": start + timedelta(days=2, minutes=seed),
                "cost": cost,
                "currency": "USD",
                "currency_conversion_rate": "1.0",
                "usage": {
                    "amount": "3600.0",
                    "unit": "seconds",
                    "amount_in_pricing_units": "1.0",
                    "pricing_unit": "hour",
                },
                "credits": (
                    [
                        {
                            "name": "Sustained Usage Discount",
                            "amount": credit,
                            "full_name": "Sustained usage discount: N2 core",
                            "id": "SUD-N2",
                            "type": "SUSTAINED_USAGE_DISCOUNT",
                        }
                    ]
                    if credit and i % 2 == 0
                    else []
                ),
                "invoice": {"month": month, "publisher_type": "GOOGLE"},
                "cost_type": cost_type,
                "adjustment_info": None,
                "cost_at_list": "1.5",
                "resource": {
                    "name": "web-1" if i % 2 == 0 else "batch-old",
                    "global_name": f"//compute.googleapis.com/projects/acme-prod/zones/{zone}/instances/{instance}",
                },
                "price": {"effective_price": "0.031611", "tier_start_amount": "0", "unit": "hour",
                          "pricing_unit_quantity": "1"},
            }
        )  # fmt: skip
    return rows


def bigquery_settings(api, **overrides) -> dict:
    return {
        "source": "bigquery",
        "billing_account_id": BILLING_ACCOUNT,
        "project": PROJECT,
        "dataset": DATASET,
        "projects": [INVENTORY_PROJECT],
        "endpoints": {"bigquery": api.url, "compute": api.url, "monitoring": api.url},
        "page_size": 40,
        **overrides,
    }


def env_without_emulator_host() -> dict:
    return {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
