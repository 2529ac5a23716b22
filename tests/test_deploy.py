"""The deployment files: docker-compose.yml follows the compose specification, docker-compose 1.29 reads it, the
Dockerfile is slim, pinned and non-root, and every service's command line from the compose file really runs.

No Docker engine runs on our machines, so the commands run outside a container, against the test PostgreSQL and
Redis: the compose file's own command lines and health checks, with only the listening ports and the pid file
moved (and each group's pool cut to one process to keep the machine free).
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import redis
import requests
import yaml
from django.conf import settings

from tests.celery_procs import ROOT, CeleryProcess, child_env, flush_broker, wait_for
from tests.security.live import LiveServer, free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose_spec.json"
LONG_RUNNING = ("postgres", "redis", "web", "beat", "flower")
# What the compose file points at its own postgres and redis services: outside a container, the test's instead.
TOPOLOGY = ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL")
REQUIRED = {"POSTGRES_PASSWORD": "compose-test", "FLOWER_BASIC_AUTH": "ops:flower-test-password"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def worker_services(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if role(s) == "worker"}


def role(service: dict) -> str | None:
    """worker, beat or flower for `celery -A finops <role> ...`."""
    command = service.get("command") or []
    return command[3] if command[:3] == ["celery", "-A", "finops"] else None


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# --- ${VAR} interpolation as compose does it (the forms the file uses) ---

INTERPOLATION = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\})")


def interpolate(value, env: dict):
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        escaped, name, op, arg = match.groups()
        if escaped:
            return "$"
        current = env.get(name)
        is_set = bool(current) if op and op.startswith(":") else current is not None
        if op in (":-", "-"):
            return current if is_set else arg
        if op in (":?", "?") and not is_set:
            raise ValueError(f"{name}: {arg}")
        return current or ""

    return INTERPOLATION.sub(replace, value)


def env_example() -> dict:
    """.env.example's uncommented assignments: what `cp .env.example .env` gives compose."""
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    return dict(pairs)


# --- the file as data ---


def schema_errors(document: dict) -> list[str]:
    # The schema declares draft 2019-09 (by its http:// name, which jsonschema does not look up).
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification():
    assert schema_errors(compose()) == []


def test_the_schema_refuses_the_env_file_form_docker_compose_1_29_cannot_read():
    # given: the long form compose v2 accepts and 1.29 fails on
    document = compose()
    document["services"]["web"]["env_file"] = [{"path": ".env", "required": False}]
    # then
    assert any(error.startswith("services/web/env_file") for error in schema_errors(document))


def test_compose_file_layout_one_beat_worker_groups_limits_health_checks():
    # given
    services = compose()["services"]
    workers = worker_services(services)
    # then: every queue consumed by exactly one worker group
    consumed = [queue for s in workers.values() for queue in option(s["command"], "-Q").split(",")]
    assert sorted(consumed) == sorted(settings.TASK_QUEUES)
    assert len(workers) >= 4
    # exactly one beat, not scaled
    beats = [name for name, service in services.items() if role(service) == "beat"]
    assert beats == ["beat"]
    assert "deploy" not in services["beat"] and "scale" not in services["beat"]
    # every long-running service has a health check and limits both compose v2 and 1.29 apply
    for name in [*LONG_RUNNING, *workers]:
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["mem_limit"] and services[name]["cpus"], name
    # flower behind basic auth, the env file in the list form docker-compose 1.29 reads
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    # Flower's task view: the workers send task events
    for name in workers:
        assert interpolate(services[name]["environment"]["CELERY_WORKER_SEND_TASK_EVENTS"], {}) == "true", name
    assert services["web"]["env_file"] == [".env"]
    assert {"pgdata", "redisdata"} <= set(compose()["volumes"])


def test_env_example_documents_every_variable_the_compose_file_reads():
    # given
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_FILE.read_text()))  # $${X} is the container's, not compose's
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE))
    # then
    assert used - documented == set()


def test_docker_compose_1_29_reads_the_file_and_refuses_it_without_the_env_file(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian's 1.29) is not installed; the schema test still ran")
    # given: the project folder as an operator has it after `cp .env.example .env` and setting the secrets
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    env_file = (ROOT / ".env.example").read_text() + "".join(f"{k}={v}\n" for k, v in REQUIRED.items())

    def config():
        return subprocess.run(
            [binary, "-f", "docker-compose.yml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    # when: no .env yet
    missing = config()
    (tmp_path / ".env").write_text(env_file)
    read = config()
    # then
    assert missing.returncode != 0
    assert read.returncode == 0, read.stderr
    resolved = yaml.safe_load(read.stdout)["services"]
    assert resolved["web"]["environment"]["DATABASE_URL"] == "postgres://finops:compose-test@postgres:5432/finops"
    assert resolved["flower"]["environment"]["FLOWER_BASIC_AUTH"] == REQUIRED["FLOWER_BASIC_AUTH"]
    assert resolved["worker-cost-sync"]["mem_limit"]


def test_dockerfile_is_pinned_slim_non_root_with_a_health_check():
    # given
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    final = text.split("\nFROM ")[-1]
    # then
    assert stages and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image) for image in stages), stages
    assert "requirements/prod.txt" in text
    assert re.search(r"^USER finops$", final, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final
    assert not re.search(r"apt-get install|build-essential|gcc", text)
    # every direct dependency of the image is pinned
    for line in (ROOT / "requirements" / "prod.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r"):
            assert "==" in line, line


# --- the command lines, run ---


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_every_compose_service_command_runs_and_passes_its_health_check(tmp_path):
    """migrate exits 0; gunicorn answers /healthz; each worker group answers a ping consuming exactly its queues;
    beat takes the leader lease; Flower answers 401 without its basic auth and 200 with it; every compose health
    check passes (beat's fails before beat runs)."""
    from celery import current_app

    from tasks_app.beat import LEADER_KEY

    flush_broker()
    started = time.monotonic()
    substitutions = {**env_example(), **REQUIRED}
    for group in ("COST_SYNC", "DISCOVERY", "MONITORING", "ANALYSIS"):
        substitutions[f"{group}_CONCURRENCY"] = "1"
    services = interpolate(compose()["services"], substitutions)
    hostname = socket.gethostname()
    bin_dir = str(Path(sys.executable).parent)

    def service_env(name: str) -> dict:
        own = {k: str(v) for k, v in services[name].get("environment", {}).items() if k not in TOPOLOGY}
        env = child_env(**own)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
        env["HOSTNAME"] = hostname  # as Docker sets it: the container's host name
        return env

    def health_check(name: str, **moved: str) -> subprocess.Popen:
        test = services[name]["healthcheck"]["test"]
        for old, new in moved.items():
            test = [part.replace(old, new) for part in test]
        argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
        return subprocess.Popen(argv, cwd=ROOT, env=service_env(name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def local(command: list[str], **moved: str) -> list[str]:
        return [moved.get(part, part) for part in command]

    processes: list[CeleryProcess] = []
    web = None
    try:
        # migrate (one-shot): the test database is migrated already, so this is the no-op a restart runs
        migrate = subprocess.run(
            services["migrate"]["command"], cwd=ROOT, env=service_env("migrate"), capture_output=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stderr[-2000:]

        # beat's health check fails while no beat leads
        assert health_check("beat").wait(timeout=60) != 0

        # every long-running app service, started together
        workers = worker_services(services)
        worker_processes = [
            CeleryProcess("worker", tmp_path, service["command"][4:], service_env(name))
            for name, service in workers.items()
        ]
        processes += worker_processes
        beat_cmd = local(services["beat"]["command"], **{"/tmp/celerybeat.pid": str(tmp_path / "beat.pid")})
        beat = CeleryProcess("beat", tmp_path, beat_cmd[4:], service_env("beat"))
        flower_port = free_port()
        flower_cmd = local(services["flower"]["command"], **{"--port=5555": f"--port={flower_port}"})
        flower = CeleryProcess("flower", tmp_path, flower_cmd[4:], service_env("flower"))
        processes += [beat, flower]
        web = LiveServer(tmp_path, command=services["web"]["command"][1:], **service_env("web"))

        # web
        assert requests.get(f"{web.url}/healthz", timeout=10).status_code == 200
        # workers: each answers by its compose name and consumes exactly its group's queues
        for (name, service), process in zip(workers.items(), worker_processes, strict=True):
            process.wait_ready("ready.", timeout=60)
            node = option(service["command"], "--hostname").replace("%h", hostname)
            queues = wait_for(
                lambda node=node: (current_app.control.inspect(destination=[node], timeout=2).active_queues() or {}),
                timeout=30,
                what=f"{node} to answer",
            )[node]
            assert sorted(q["name"] for q in queues) == sorted(option(service["command"], "-Q").split(",")), name
        # beat leads
        beat.wait_ready("beat: Starting")
        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        leader = wait_for(lambda: broker.get(LEADER_KEY), timeout=30, what="beat to take the leader lease")
        assert leader.decode().startswith(f"{hostname}/{beat.proc.pid}/")
        # flower, behind basic auth
        flower.wait_ready("Visit me at", timeout=60)
        flower_url = f"http://127.0.0.1:{flower_port}/"
        user, password = REQUIRED["FLOWER_BASIC_AUTH"].split(":")
        assert requests.get(flower_url, timeout=10).status_code == 401
        assert requests.get(flower_url, auth=(user, "wrong"), timeout=10).status_code == 401
        assert requests.get(flower_url, auth=(user, password), timeout=10).status_code == 200

        # every compose health check passes (the web and flower ones reach the container's port: moved here)
        checks = {name: health_check(name) for name in [*workers, "beat"]}
        checks["web"] = health_check("web", **{"127.0.0.1:8000": f"127.0.0.1:{web.port}"})
        checks["flower"] = health_check("flower", **{"127.0.0.1:5555": f"127.0.0.1:{flower_port}"})
        for name, check in checks.items():
            output = check.communicate(timeout=60)[0].decode(errors="replace")
            assert check.returncode == 0, f"{name}: {output[-2000:]}"
    finally:
        for process in processes:
            process.stop(timeout=20)
        if web is not None:
            web.stop()
    print(
        f"\ncompose services: migrate, web, {len(workers)} worker groups, beat, flower ran and stopped "
        f"in {time.monotonic() - started:.0f} s"
    )
