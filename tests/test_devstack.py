"""finops/devstack.py: service discovery on answering and silent ports, .env secrets, requirements hashing,
the embedded PostgreSQL/Redis, and `start_dev_tasks.py --check` for real."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from finops import devstack
from tests.celery_procs import database_url, flush_broker

ROOT = Path(__file__).resolve().parent.parent


def machine_postgres() -> tuple[str, int]:
    db = connection.settings_dict
    return db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)


def machine_redis() -> tuple[str, int]:
    url = redis.connection.parse_url(settings.CELERY_BROKER_URL)
    return url.get("host", "127.0.0.1"), int(url.get("port", 6379))


@pytest.fixture
def silent_port():
    """A port nothing listens on (bound, then released)."""
    return devstack.free_port()


@pytest.fixture
def mute_server():
    """A TCP server that accepts connections and never says anything: open, but neither PostgreSQL nor Redis."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


# --- probes -----------------------------------------------------------------------------------------------------


def test_probes_recognise_the_real_postgres_and_redis():
    # given
    pg_host, pg_port = machine_postgres()
    redis_host, redis_port = machine_redis()
    # when / then
    assert devstack.postgres_answers(pg_host, pg_port)
    assert devstack.redis_answers(redis_host, redis_port)


def test_probes_say_no_for_a_port_nobody_listens_on(silent_port):
    assert not devstack.postgres_answers("127.0.0.1", silent_port)
    assert not devstack.redis_answers("127.0.0.1", silent_port)


def test_probes_do_not_mistake_one_service_or_a_mute_port_for_the_other(mute_server):
    # given
    pg_host, pg_port = machine_postgres()
    redis_host, redis_port = machine_redis()
    # then: an open port is not enough, the protocol must answer
    assert not devstack.postgres_answers(redis_host, redis_port, timeout=0.5)
    assert not devstack.redis_answers(pg_host, pg_port, timeout=0.5)
    assert not devstack.postgres_answers("127.0.0.1", mute_server, timeout=0.3)
    assert not devstack.redis_answers("127.0.0.1", mute_server, timeout=0.3)


# --- choosing the services ---------------------------------------------------------------------------------------


def test_urls_in_the_environment_win():
    # given
    environ = {"DATABASE_URL": "postgres://u:p@db.example:5432/finops", "CELERY_BROKER_URL": "redis://r.example/3"}
    # when
    pg, rd = devstack.choose_postgres(environ), devstack.choose_redis(environ)
    # then
    assert (pg.kind, pg.url) == ("env", "postgres://u:p@db.example:5432/finops")
    assert (rd.kind, rd.url) == ("env", "redis://r.example/3")


def test_urls_from_dot_env_are_used_when_the_environment_has_none():
    pg = devstack.choose_postgres({}, {"DATABASE_URL": "postgres://postgres@10.9.9.9:5432/x"})
    assert pg.kind == "env"
    assert pg.reason == "DATABASE_URL from .env"


def test_answering_local_services_are_used():
    # given
    pg_host, pg_port = machine_postgres()
    redis_host, redis_port = machine_redis()
    environ = {"FINOPS_PG_HOST": pg_host, "FINOPS_PG_PORT": str(pg_port), "FINOPS_REDIS_PORT": str(redis_port)}
    # when
    pg, rd = devstack.choose_postgres(environ), devstack.choose_redis(environ)
    # then
    assert pg == devstack.Choice("local", f"postgres://postgres@{pg_host}:{pg_port}/postgres", pg.reason)
    assert rd.kind == "local"
    assert rd.url == f"redis://127.0.0.1:{redis_port}/0"


def test_silent_ports_lead_to_the_embedded_services(silent_port):
    # given
    environ = {"FINOPS_PG_PORT": str(silent_port), "FINOPS_REDIS_PORT": str(silent_port)}
    # when
    pg, rd = devstack.choose_postgres(environ), devstack.choose_redis(environ)
    # then
    assert pg.kind == rd.kind == "embedded"
    assert pg.reason == f"PostgreSQL not answering on 127.0.0.1:{silent_port}"
    assert rd.reason == f"Redis not answering on 127.0.0.1:{silent_port}"


def test_finops_embedded_forces_embedded_even_with_urls_set():
    environ = {"FINOPS_EMBEDDED": "1", "DATABASE_URL": "postgres://x/y", "CELERY_BROKER_URL": "redis://x/0"}
    assert devstack.choose_postgres(environ).kind == "embedded"
    assert devstack.choose_redis(environ).kind == "embedded"


def test_redis_urls_keep_what_is_given_and_fill_the_rest_on_the_chosen_server():
    # given
    services = devstack.Services(
        devstack.Choice("local", "postgres://postgres@127.0.0.1:5432/postgres", ""),
        devstack.Choice("local", "redis://127.0.0.1:6379/0", ""),
        postgres_url="postgres://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:6379/0",
    )
    # when
    urls = services.redis_env({"CELERY_RESULT_BACKEND": "redis://other:6379/9"}, broker_db=0, result_db=1, cache_db=2)
    # then
    assert urls == {
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        "CELERY_RESULT_BACKEND": "redis://other:6379/9",
        "CACHE_URL": "redis://127.0.0.1:6379/2",
    }
    assert services.database_url("finops") == "postgres://postgres@127.0.0.1:5432/finops"


def test_an_embedded_redis_serves_broker_results_and_cache():
    # given
    services = devstack.Services(
        devstack.Choice("embedded", None, ""),
        devstack.Choice("embedded", None, ""),
        postgres_url="postgres://postgres@127.0.0.1:40001/postgres",
        redis_url="redis://127.0.0.1:40002/0",
    )
    # when
    urls = services.redis_env({"CELERY_RESULT_BACKEND": "redis://elsewhere/1"}, broker_db=14, result_db=15, cache_db=15)
    # then
    assert set(urls.values()) == {"redis://127.0.0.1:40002/14", "redis://127.0.0.1:40002/15"}


def test_passwords_are_masked_in_printed_urls():
    assert devstack.masked("postgres://finops:s3cret@db:5432/finops") == "postgres://finops:***@db:5432/finops"
    assert devstack.masked("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_worker_queues_are_the_settings_queues():
    queues_in_settings = tuple(settings.TASK_QUEUES)
    assert queues_in_settings == devstack.TASK_QUEUES


# --- .env and requirements ---------------------------------------------------------------------------------------


def test_dev_secrets_are_written_once_and_kept(tmp_path):
    # given
    env_file = tmp_path / ".env"
    env_file.write_text("DEBUG=1\nJWT_SECRET_KEY='given'\n")
    # when
    first = devstack.ensure_dev_secrets(env_file, environ={})
    values = devstack.read_env_file(env_file)
    second = devstack.ensure_dev_secrets(env_file, environ={})
    # then
    assert first == ["SECRET_KEY", "ENCRYPTION_KEY"]
    assert second == []
    assert devstack.read_env_file(env_file) == values
    assert values["JWT_SECRET_KEY"] == "given"
    assert values["DEBUG"] == "1"
    assert len(values["SECRET_KEY"]) >= 50
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"


def test_secrets_set_in_the_environment_are_not_written(tmp_path):
    env_file = tmp_path / ".env"
    written = devstack.ensure_dev_secrets(env_file, environ=dict.fromkeys(devstack.DEV_SECRETS, "x"))
    assert written == []
    assert not env_file.exists()


def test_generated_encryption_key_is_a_fernet_key():
    from cryptography.fernet import Fernet

    token = Fernet(devstack.new_dev_secret("ENCRYPTION_KEY")).encrypt(b"secret")
    assert token


def test_requirements_digest_follows_includes(tmp_path):
    # given
    base = tmp_path / "base.txt"
    dev = tmp_path / "dev.txt"
    base.write_text("Django==5.2.8\n")
    dev.write_text("-r base.txt\npytest==8.4.2\n")
    before = devstack.requirements_digest(dev)
    # when: only the included file changes
    base.write_text("Django==5.2.9\n")
    # then
    assert devstack.requirement_files(dev) == [dev.resolve(), base.resolve()]
    assert devstack.requirements_digest(dev) != before


def test_the_project_venv_is_recorded_as_up_to_date_after_an_install():
    """run_tests.py installed requirements/dev.txt before this suite ran, so it must not reinstall next time."""
    if os.environ.get("FINOPS_TEST_RUNNER") != "run_tests.py":
        pytest.skip("the suite was not started through run_tests.py, which is what brings .venv up to date")
    assert devstack.stale_requirements([devstack.REQUIREMENTS / "dev.txt"]) == []


# --- embedded services and the whole stack, for real ------------------------------------------------------------


@pytest.mark.integration
def test_embedded_postgres_and_redis_start_answer_and_stop(tmp_path):
    # given
    pg = devstack.EmbeddedPostgres(tmp_path / "postgres")
    rd = devstack.EmbeddedRedis(tmp_path / "redis")
    try:
        # when
        pg_url = pg.start()
        redis_url = rd.start()
        created = devstack.ensure_database(devstack.url_with_path(pg_url, "finops_embedded"))
        # then
        assert created
        with psycopg.connect(devstack.url_with_path(pg_url, "finops_embedded")) as conn:
            assert conn.execute("select current_database()").fetchone() == ("finops_embedded",)
        client = redis.Redis.from_url(devstack.url_with_path(redis_url, "3"))
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
    finally:
        rd.stop()
        pg.stop()
    # then: both are gone
    assert not devstack.postgres_answers("127.0.0.1", pg.port)
    assert not devstack.redis_answers("127.0.0.1", rd.port)


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_start_dev_tasks_check_brings_up_web_worker_and_beat():
    # given: its own database, and the test Redis databases (no other worker runs during this test)
    name = f"finops_devcheck_{uuid.uuid4().hex[:6]}"
    db_url = devstack.url_with_path(database_url(), name)
    env = dict(os.environ)
    for var in ("DJANGO_SETTINGS_MODULE", "FINOPS_EMBEDDED", "FINOPS_BOOTSTRAPPED"):
        env.pop(var, None)
    env.update(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_RESULT_BACKEND=settings.CELERY_RESULT_BACKEND,
        CACHE_URL=settings.CACHES["default"]["LOCATION"],
        DEBUG="1",
    )
    port = devstack.free_port()
    started = time.monotonic()
    try:
        # when
        proc = subprocess.run(
            [sys.executable, "start_dev_tasks.py", "--check", "--port", str(port), "--timeout", "120"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        flush_broker()  # what its beat enqueued must not reach a later test's worker
        with psycopg.connect(devstack.url_with_path(db_url, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # then
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "[finops] OK" in proc.stdout
    assert "[finops] stopped" in proc.stdout
    assert time.monotonic() - started < 400
    # and nothing it started is left answering
    assert devstack.http_answers(f"http://127.0.0.1:{port}/admin/login/") is None
