"""finops/devstack.py: service discovery on answering and silent ports, .env secrets, requirements hashing,
the embedded PostgreSQL/Redis, and `start_dev_tasks.py --check` for real."""

import os
import socket
import stat
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
def test_start_dev_tasks_check_brings_up_web_worker_and_beat(tmp_path):
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
    # and its files in a folder of the test: the service URLs, the admin password, the e-mails
    services_file, password_file, mail_dir = tmp_path / "dev-services.env", tmp_path / "admin-pw", tmp_path / "mail"
    env.update(
        FINOPS_DEV_SERVICES_FILE=str(services_file),
        FINOPS_ADMIN_PASSWORD_FILE=str(password_file),
        EMAIL_FILE_PATH=str(mail_dir),
    )
    env.pop("EMAIL_BACKEND", None)
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
    # and it said where mail goes, and the demo's budget alerts were e-mailed there (no mail server)
    assert f"[finops] Mail:       files in {mail_dir}/" in proc.stdout
    assert any(mail_dir.glob("*.log")), output[-3000:]
    assert "finops-demo@example.com" in next(mail_dir.glob("*.log")).read_text()
    # and the demo admin's password went to the private file, not to the output
    password = password_file.read_text().strip()
    assert password and password not in output
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    # and the service URLs were there while it ran, and are gone with it
    assert f"service URLs written to {services_file}" in proc.stdout
    assert not services_file.exists()


# --- what a running stack leaves for other terminals ----------------------------------------------------------


def test_dev_mail_goes_to_files_unless_a_backend_is_chosen():
    mail = devstack.dev_mail_env({}, {})
    assert mail == {"EMAIL_BACKEND": devstack.FILE_EMAIL_BACKEND, "EMAIL_FILE_PATH": str(devstack.MAIL_DIR)}
    assert devstack.dev_mail_env({"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend"}, {}) == {}
    assert devstack.dev_mail_env({}, {"EMAIL_BACKEND": "x.smtp.EmailBackend"}) == {}
    assert "no mail server" in devstack.mail_destination(mail)


def test_production_settings_keep_smtp_from_the_environment():
    # the default outside the dev stack is unchanged: SMTP, host and port from the environment
    code = "from django.conf import settings; print(settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAIL_")}
    env.update(DJANGO_SETTINGS_MODULE="finops.settings", EMAIL_HOST="smtp.example.org", EMAIL_PORT="587")
    env["FINOPS_DEV_SERVICES_FILE"] = "/nonexistent/dev-services.env"
    proc = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]  # after the shell's "N objects imported automatically"
    assert last.split() == ["django.core.mail.backends.smtp.EmailBackend", "smtp.example.org", "587"]


def test_the_services_file_is_private_and_fills_only_what_is_not_set(tmp_path):
    # given
    path = tmp_path / "dev-services.env"
    stack = {"DATABASE_URL": "postgres://postgres:pw@127.0.0.1:5999/finops", "CELERY_BROKER_URL": "redis://x:1/0"}
    # when
    devstack.services_file_write(stack, path, pid=os.getpid())
    environ = {"CELERY_BROKER_URL": "redis://mine:6379/0"}
    applied = devstack.services_file_apply(environ, path)
    # then
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert applied == ["DATABASE_URL"]
    assert environ == {"DATABASE_URL": stack["DATABASE_URL"], "CELERY_BROKER_URL": "redis://mine:6379/0"}


def test_a_services_file_left_by_a_stack_that_is_gone_is_ignored(tmp_path):
    # given: a pid that is not running
    path = tmp_path / "dev-services.env"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    devstack.services_file_write({"DATABASE_URL": "postgres://x/y"}, path, pid=dead.pid)
    # when / then
    environ = {}
    assert devstack.services_file_apply(environ, path) == []
    assert environ == {}
    # and a stack removes only its own file
    devstack.services_file_remove(path, pid=os.getpid())
    assert path.exists()
    devstack.services_file_remove(path, pid=dead.pid)
    assert not path.exists()


@pytest.mark.django_db
def test_manage_py_in_another_terminal_uses_the_running_stack_s_services(tmp_path):
    """`manage.py monitor_tasks` with no DATABASE_URL / broker in its environment reaches the stack's."""
    # given: the stack (this test process stands for it) recorded the test database and broker
    path = tmp_path / "dev-services.env"
    stack = {
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "CACHE_URL": settings.CACHES["default"]["LOCATION"],
    }
    devstack.services_file_write(stack, path, pid=os.getpid())
    env = {k: v for k, v in os.environ.items() if k not in devstack.SERVICE_VARIABLES}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(FINOPS_DEV_SERVICES_FILE=str(path), DEBUG="1")
    if any(devstack.read_env_file().get(name) for name in stack):
        pytest.skip(".env of this checkout sets service URLs, which win over the stack's file")
    code = "from django.db import connection; print(connection.settings_dict['NAME'])"
    # when
    where = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    queues = subprocess.run([sys.executable, "manage.py", "monitor_tasks", "queues"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    # then
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().splitlines()[-1] == connection.settings_dict["NAME"]
    assert queues.returncode == 0, queues.stderr[-2000:]
    assert "cost_sync" in queues.stdout


def test_print_admin_password_reads_the_private_file_only(tmp_path):
    # given
    path = tmp_path / "admin-password"
    env = {**os.environ, "FINOPS_ADMIN_PASSWORD_FILE": str(path)}
    # when no password was generated
    missing = subprocess.run([sys.executable, "start_dev_tasks.py", "--print-admin-password"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    devstack.admin_password_write("s3cret-demo-pw", path)
    present = subprocess.run([sys.executable, "start_dev_tasks.py", "--print-admin-password"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    # then
    assert missing.returncode == 1 and "--reset-admin-password" in missing.stdout
    assert present.returncode == 0 and present.stdout.strip() == "s3cret-demo-pw"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_reset_admin_password_sets_a_new_one_that_logs_in(tmp_path):
    # given: its own database
    from django.contrib.auth.hashers import PBKDF2PasswordHasher  # the stack's hasher (tests use a faster one)

    name = f"finops_devreset_{uuid.uuid4().hex[:6]}"
    db_url = devstack.url_with_path(database_url(), name)
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "FINOPS_BOOTSTRAPPED")}
    env.update(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_RESULT_BACKEND=settings.CELERY_RESULT_BACKEND,
        CACHE_URL=settings.CACHES["default"]["LOCATION"],
        DEBUG="1",
        FINOPS_ADMIN_PASSWORD_FILE=str(tmp_path / "admin-password"),
    )
    try:
        # when
        proc = subprocess.run([sys.executable, "start_dev_tasks.py", "--reset-admin-password"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=280)  # fmt: skip
        with psycopg.connect(db_url) as conn:
            stored = conn.execute("SELECT password, is_superuser FROM auth_user WHERE username = 'admin'").fetchone()
    finally:
        with psycopg.connect(devstack.url_with_path(db_url, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # then
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    password = (tmp_path / "admin-password").read_text().strip()
    lines = proc.stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("[finops] new password of 'admin'"))
    assert lines[said + 1] == password  # printed on the terminal, its own line
    assert stored[1] and PBKDF2PasswordHasher().verify(password, stored[0])
