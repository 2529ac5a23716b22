#!/usr/bin/env python3
"""Run the test suite: `python3 run_tests.py [pytest args]` (default: the whole suite).

Creates .venv and installs requirements/dev.txt when needed, then finds PostgreSQL and Redis (DATABASE_URL /
CELERY_BROKER_URL, else 127.0.0.1:5432 and :6379, else embedded ones under .data/), and runs pytest on them.
Exits with pytest's exit code; "no tests collected" (5) counts as a failure.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NO_TESTS_COLLECTED = 5


def load_devstack():
    """finops/devstack.py by path: importing the finops package itself needs Celery, which may not be installed yet."""
    spec = importlib.util.spec_from_file_location("finops_devstack", ROOT / "finops" / "devstack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


devstack = load_devstack()


def test_env(services) -> dict:
    """The environment pytest runs in: our database and the test Redis databases (as finops/test_settings.py)."""
    env = dict(os.environ)
    env["DATABASE_URL"] = services.database_url("finops")  # pytest-django creates and drops test_finops
    env.update(services.redis_env(os.environ, broker_db=14, result_db=15, cache_db=15))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["FINOPS_TEST_RUNNER"] = "run_tests.py"  # it brought .venv up to date before pytest started
    return env


def run_pytest(args: list[str], env: dict) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue  # pytest got the Ctrl-C too; let it finish its report and exit


def main(argv: list[str]) -> int:
    devstack.bootstrap(Path(__file__), argv, [devstack.REQUIREMENTS / "dev.txt"])
    services = devstack.Services.discover(os.environ)
    try:
        for line in services.describe("finops"):
            devstack.say(line)
        devstack.say("pytest-django creates and drops the database test_<name> on that server")
        code = run_pytest(argv, test_env(services))
    finally:
        services.stop()
    if code == NO_TESTS_COLLECTED:
        devstack.say("pytest collected no tests: counted as a failure")
        return 1
    return code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except devstack.DevStackError as exc:
        devstack.say(f"error: {exc}")
        sys.exit(2)
