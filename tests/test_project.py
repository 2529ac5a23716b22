"""Project-wide guarantees: no missing migrations, a clean deploy check, and settings that refuse to run
in production without their secrets."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent

# What `check --deploy` warns about with HTTPS off (a site on plain HTTP): exactly what the HTTPS switch turns on.
HTTPS_OFF_WARNINGS = {
    "security.W004",  # SECURE_HSTS_SECONDS not set
    "security.W008",  # SECURE_SSL_REDIRECT not True
    "security.W012",  # SESSION_COOKIE_SECURE not True
    "security.W016",  # CSRF_COOKIE_SECURE not True
}


def production_env() -> dict:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "finops.settings",
        "DEBUG": "0",
        "SECRET_KEY": "prod-like-" + "k3y-w1th-3nough-3ntropy-" * 3,
        "ENCRYPTION_KEY": "yQbK3Y0B4bHq4kTn2c8Yl9o1u7mYx0H6m2W4pXq9s1E=",
        "JWT_SECRET_KEY": "prod-like-jwt-" + "s3cr3t-" * 6,
        "ALLOWED_HOSTS": "finops.example.com",
        "DATABASE_URL": "postgres://finops:pw@db.invalid:5432/finops",
        "CELERY_BROKER_URL": "redis://redis.invalid:6379/0",
    }


def isolated_project(tmp_path: Path) -> Path:
    """A copy of the finops package alone, so the repo's .env (dev secrets) cannot fill in what is missing."""
    shutil.copytree(ROOT / "finops", tmp_path / "finops", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def import_settings(cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import finops.settings"],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_no_missing_migrations():
    # when / then: makemigrations --check exits non-zero when a model change has no migration
    try:
        call_command("makemigrations", "--check", "--dry-run", verbosity=1)
    except SystemExit as exc:
        pytest.fail(f"models have changes without a migration (makemigrations --check exited {exc.code})")


def deploy_check_warnings(env: dict) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERRORS:" not in output
    return {word.strip("():") for word in output.split() if word.strip("():").startswith("security.")}


def test_deploy_check_over_https_is_clean():
    env = {**production_env(), "HTTPS": "1"}
    # HSTS for subdomains and preload are the domain owner's decision, off by default: their warnings (W005, W021)
    # are silenced while off, with the reason written in settings.py (tests/security/test_check_deploy.py)
    assert deploy_check_warnings(env) == set()
    env |= {"SECURE_HSTS_INCLUDE_SUBDOMAINS": "1", "SECURE_HSTS_PRELOAD": "1"}
    assert deploy_check_warnings(env) == set()


def test_deploy_check_without_https_warns_only_about_what_the_https_switch_covers():
    assert deploy_check_warnings(production_env()) == HTTPS_OFF_WARNINGS


def test_settings_refuse_to_start_without_secret_key_when_debug_is_off(tmp_path):
    # given: a clean environment with DEBUG off and no SECRET_KEY
    env = production_env()
    del env["SECRET_KEY"]
    # when
    proc = import_settings(isolated_project(tmp_path), env)
    # then
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr
    assert "SECRET_KEY" in proc.stderr.strip().splitlines()[-1]


def test_settings_refuse_to_start_without_encryption_key_when_debug_is_off(tmp_path):
    # given
    env = production_env()
    del env["ENCRYPTION_KEY"]
    # when
    proc = import_settings(isolated_project(tmp_path), env)
    # then
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr
    assert "ENCRYPTION_KEY" in proc.stderr.strip().splitlines()[-1]


def test_settings_load_with_debug_off_when_the_secrets_are_given(tmp_path):
    proc = import_settings(isolated_project(tmp_path), production_env())
    assert proc.returncode == 0, proc.stderr


def test_debug_defaults_to_off(tmp_path):
    """A production server that forgets DEBUG must not run with it on (and so must have its secrets)."""
    env = production_env()
    del env["DEBUG"]
    del env["SECRET_KEY"]
    proc = import_settings(isolated_project(tmp_path), env)
    assert proc.returncode != 0
    assert "SECRET_KEY" in proc.stderr


def test_env_example_documents_every_setting_read_from_the_environment():
    # given
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "finops" / "settings.py").read_text()))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    # then
    assert read, "no env(...) calls found in settings.py"
    assert read - documented == set(), "add these to .env.example with a comment"
