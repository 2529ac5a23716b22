"""ENCRYPTION_KEY: Fernet keys only, refused at startup otherwise with the problem named (and the key not
repeated); the old "hash anything into a key" behaviour only through the explicit legacy: prefix."""

import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from finops import crypto
from finops.devstack import new_dev_secret
from tests.test_project import import_settings, isolated_project, production_env

ROOT = Path(__file__).resolve().parents[2]
GOOD = Fernet.generate_key().decode()
STANDARD_B64 = base64.b64encode(b"\xfb\xff" * 16).decode()  # 32 bytes, but "+" and "/" instead of "-" and "_"


def old_derivation(value: str) -> Fernet:
    """What finops.crypto did before with a value that was not a Fernet key."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (GOOD.rstrip("="), "it is a Fernet key without its '=' padding"),
        (STANDARD_B64, "standard base64"),
        ("your-32-char-encryption-key", "it is not a Fernet key (44 characters of urlsafe base64 ending in '='"),
        ("legacy:", "'legacy:' is followed by no passphrase"),
        (f"{GOOD},not-a-key", "entry 2 of 2 is refused"),
    ],
)  # fmt: skip
def test_a_value_that_is_not_a_fernet_key_is_refused_naming_the_problem(settings, value, problem):
    settings.ENCRYPTION_KEY = value
    with pytest.raises(ImproperlyConfigured) as refused:
        crypto.encrypt("secret")
    message = str(refused.value)
    assert problem in message
    assert "legacy:<the same value>" in message  # how a deployment that relied on hashing keeps its data
    bad_entry = value.split(",")[-1]
    if len(bad_entry) > 8:
        assert bad_entry not in message  # the key itself is never echoed (error pages, logs)


def test_the_settings_refuse_to_start_with_an_unpadded_key(tmp_path):
    # given a production environment whose key lost its "=" (e.g. to a shell or a YAML quoting mistake)
    env = {**production_env(), "ENCRYPTION_KEY": GOOD.rstrip("=")}
    # when
    proc = import_settings(isolated_project(tmp_path), env)
    # then: it does not start, instead of quietly encrypting under another key
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last and "without its '=' padding" in last
    assert GOOD.rstrip("=") not in proc.stderr


def test_legacy_prefix_decrypts_what_the_old_derivation_encrypted(settings):
    # given data encrypted by an earlier version running with the seed's passphrase as ENCRYPTION_KEY
    passphrase = "your-32-char-encryption-key"
    token = old_derivation(passphrase).encrypt(b"aws-secret").decode()
    # when the same value is configured with the legacy: prefix
    settings.ENCRYPTION_KEY = f"legacy:{passphrase}"
    # then it still decrypts
    assert crypto.decrypt(token) == "aws-secret"
    # and with a new key first, rotation moves it to the new key, after which the legacy entry can go
    settings.ENCRYPTION_KEY = f"{GOOD},legacy:{passphrase}"
    rotated = crypto.rotate(token)
    settings.ENCRYPTION_KEY = GOOD
    assert crypto.decrypt(rotated) == "aws-secret"


def test_an_unpadded_key_that_was_hashed_before_is_recovered_with_legacy(settings):
    # the old code hashed a key missing its padding instead of using it: legacy: reproduces exactly that
    unpadded = GOOD.rstrip("=")
    token = old_derivation(unpadded).encrypt(b"client-secret").decode()
    settings.ENCRYPTION_KEY = f"legacy:{unpadded}"
    assert crypto.decrypt(token) == "client-secret"


def test_the_keys_the_project_ships_and_generates_are_fernet_keys():
    # the test settings' key, the dev default (DEBUG on, no .env) and what start_dev_tasks.py writes into .env
    test_key = os.environ.get("ENCRYPTION_KEY") or re.search(
        r'"ENCRYPTION_KEY", "([^"]+)"', (ROOT / "finops" / "test_settings.py").read_text()
    ).group(1)
    settings_py = (ROOT / "finops" / "settings.py").read_text()
    dev_default = re.search(r'"ENCRYPTION_KEY",\s*default="([^"]+)" if DEBUG', settings_py).group(1)
    for key in (test_key, dev_default, new_dev_secret("ENCRYPTION_KEY")):
        assert crypto.key_problem(key) is None, key
        Fernet(key.encode())  # and cryptography agrees


def test_the_dev_default_is_used_only_with_debug_on(tmp_path):
    env = production_env()
    del env["ENCRYPTION_KEY"]
    assert import_settings(isolated_project(tmp_path), env).returncode != 0
    env |= {"DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import finops.settings as s; print(s.ENCRYPTION_KEY[-1])"],
        cwd=isolated_project(tmp_path / "debug"),
        env={**env, "PYTHONPATH": str(tmp_path / "debug")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "="
