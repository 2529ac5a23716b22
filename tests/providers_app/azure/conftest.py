"""Azure test servers: Azurite (the real Blob service emulator, npm) and a local HTTPS Entra ID + ARM server.

Both are session-scoped, on free loopback ports. Azurite is installed into <repo>/.data/npm on first use
(`npm install --prefix`); if it cannot be installed or started, the tests error: they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.providers_app.azure.arm_server import FakeAzureServer, make_certificate

ROOT = Path(__file__).resolve().parents[3]
NPM_PREFIX = ROOT / ".data" / "npm"
AZURITE_VERSION = "3.35.0"
AZURITE_BIN = NPM_PREFIX / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
TENANT = "6b1c4f0e-2a3d-4e5f-8a9b-0c1d2e3f4a5b"
CLIENT = "0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b"
SECRET = "Xy7Q~finops.test-secret_value"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def azurite_installed() -> Path:
    if AZURITE_BIN.exists():
        return AZURITE_BIN
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install Azurite (apt-get install nodejs npm)")
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Node trusts only its own CA list; where the registry is reached through a TLS-inspecting proxy (as on the CI
    # machine, whose CA is in the system bundle), npm hangs retrying unless it also trusts the system's CAs.
    system_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if "NODE_EXTRA_CA_CERTS" not in env and system_bundle.exists():
        env["NODE_EXTRA_CA_CERTS"] = str(system_bundle)
    subprocess.run(
        [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", "--fetch-retries=2",
         f"azurite@{AZURITE_VERSION}"],
        check=True,
        timeout=300,
        env=env,
    )  # fmt: skip
    return AZURITE_BIN


class Azurite:
    """azurite-blob on a free port; with `tls` (cert, key) it serves HTTPS and also accepts Entra ID bearer tokens
    (`--oauth basic`: it checks their issuer, audience and validity, as storage does; not their signature)."""

    def __init__(self, tmp: Path, tls: tuple[Path, Path] | None = None):
        self.port = free_port()
        self.tls = tls
        self.log_path = tmp / "azurite.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        extra = ["--cert", str(tls[0]), "--key", str(tls[1]), "--oauth", "basic"] if tls else []
        self.proc = subprocess.Popen(
            [str(azurite_installed()), "--skipApiVersionCheck", "--inMemoryPersistence", "--loose",
             "--blobHost", "127.0.0.1", "--blobPort", str(self.port), *extra],
            cwd=tmp,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("azurite did not listen within 60 s")

    def service(self):
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import BlobServiceClient

        verify = {"connection_verify": str(self.tls[0])} if self.tls else {}
        return BlobServiceClient(self.url, credential=AzureNamedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY), **verify)

    def new_container(self, prefix: str = "exports"):
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        return self.service().create_container(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self._log.close()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_tls(tmp_path_factory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("azure-tls"))


@pytest.fixture(scope="session")
def azurite_tls(tmp_path_factory, azure_tls):
    """Azurite over HTTPS accepting bearer tokens: storage read with the service principal's own token."""
    server = Azurite(tmp_path_factory.mktemp("azurite-tls"), tls=azure_tls)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_azure_server(azure_tls):
    server = FakeAzureServer(*azure_tls)
    yield server
    server.stop()


@pytest.fixture
def fake_azure(fake_azure_server):
    """The local Entra ID + ARM, reset for each test: one app registration, no resources, no faults."""
    state = fake_azure_server.state
    with state.lock:
        state.apps.clear()
        state.resources.clear()
        state.instance_views.clear()
        state.metrics.clear()
        state.denied.clear()
        state.faults.clear()
        state.requests.clear()
        state.scopes.clear()
        state.tokens.clear()
    state.register_app(TENANT, CLIENT, SECRET)
    return fake_azure_server


def account_settings(server, azurite, azure_tls, container: str, **extra) -> dict:
    """Settings that point the connector at the local servers (what a user sets for a sovereign cloud)."""
    settings = {
        "subscription_ids": [],
        "storage_account_url": azurite.url,
        "container": container,
        "directory": "finops",
        "export_name": "daily-actual",
        "authority_host": server.host,
        "arm_endpoint": server.state.base,
        "ca_bundle": str(azure_tls[0]),
        "cpu_lookback_hours": 0,
    }
    settings.update(extra)
    return settings


def credential(secret: str = SECRET, **extra) -> dict:
    value = {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": secret, "storage_account_key": AZURITE_KEY}
    value.update(extra)
    return value
