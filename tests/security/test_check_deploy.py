"""`manage.py check --deploy` is clean under the production settings: DEBUG off, HTTPS on, real keys.

The only silenced checks are the two HSTS ones an operator has not opted into (includeSubDomains, preload); the
reason is written beside SILENCED_SYSTEM_CHECKS in finops/settings.py, and opting in brings the checks back.
"""

import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.test_project import production_env

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


def prod(**overrides) -> dict:
    return {**production_env(), "HTTPS": "1", "ENCRYPTION_KEY": Fernet.generate_key().decode(), **overrides}


def test_check_deploy_is_clean_under_production_settings():
    # when: WARNING is the failure level, so any warning (not only errors) fails the command
    proc = run(["check", "--deploy", "--fail-level", "WARNING"], prod())
    # then
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNINGS:" not in output and "ERRORS:" not in output
    assert "System check identified no issues (2 silenced)." in output


def test_only_the_hsts_opt_ins_are_silenced_and_only_while_off():
    show = "from django.conf import settings; print(sorted(settings.SILENCED_SYSTEM_CHECKS))"
    assert run(["shell", "-c", show], prod()).stdout.strip().splitlines()[-1] == "['security.W005', 'security.W021']"
    opted_in = prod(SECURE_HSTS_INCLUDE_SUBDOMAINS="1", SECURE_HSTS_PRELOAD="1")
    assert run(["shell", "-c", show], opted_in).stdout.strip().splitlines()[-1] == "[]"
    proc = run(["check", "--deploy", "--fail-level", "WARNING"], opted_in)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (0 silenced)." in proc.stdout + proc.stderr
    # the reason is written where they are silenced
    settings_py = (ROOT / "finops" / "settings.py").read_text()
    block = settings_py[settings_py.index("SECURE_HSTS_PRELOAD = env") : settings_py.index("SILENCED_SYSTEM_CHECKS")]
    assert "only the domain's owner may switch them on" in block


def test_the_check_does_fail_when_production_settings_are_weakened():
    # the counterpart: without HTTPS the same command fails on the warnings it finds
    proc = run(["check", "--deploy", "--fail-level", "WARNING"], prod(HTTPS="0"))
    assert proc.returncode != 0
    assert "security.W008" in proc.stdout + proc.stderr  # SECURE_SSL_REDIRECT
