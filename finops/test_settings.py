"""Settings for the test suite: the real settings, with safe defaults for what tests need set."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("ENCRYPTION_KEY", "_m_nKzUzKMkqk4YjPKPP6khX4UyCWHW20MBfhj2hUoE=")  # a Fernet key, test use only
os.environ.setdefault("JWT_SECRET_KEY", "test-jwt-secret-key-0123456789abcdef")
os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
# Separate Redis databases so tests never touch a running dev system's queues.
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/15")
os.environ.setdefault("CACHE_URL", "redis://127.0.0.1:6379/15")
# The emulators (moto, Azurite, the GCS emulator, the local Entra ID/ARM/Google APIs) and the webhook and SMTP
# sinks listen on loopback: the operator's escape hatch from the egress policy (tests/security sets it empty).
os.environ.setdefault("EGRESS_ALLOWED_HOSTS", "127.0.0.1,localhost")
# Tests read FOCUS files from the repository and from pytest's temporary folders; the tests of the root
# itself (tests/security/test_focus_bounds.py) set their own.
os.environ.setdefault("FOCUS_IMPORT_ROOT", "/")
# Every failure alerts in tests (no storm window carried from one test to the next); tests of the window set it.
os.environ.setdefault("TASK_FAILURE_ALERT_WINDOW", "0")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation
