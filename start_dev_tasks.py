#!/usr/bin/env python3
"""Run the whole system for development: `python3 start_dev_tasks.py [--port 8000] [--no-seed] [--no-beat] [--check]`.

Creates .venv and installs the requirements when needed; finds PostgreSQL and Redis (DATABASE_URL /
CELERY_BROKER_URL, else 127.0.0.1:5432 and :6379, else embedded ones under .data/); migrates; seeds the demo
data; starts the web server, a Celery worker on every queue and Celery beat; stops all of it on Ctrl-C.
`--check` starts everything, waits until the web answers, the worker replies to a ping and beat writes its
heartbeat, prints OK and stops.

While it runs, .data/dev-services.env holds the services' URLs (manage.py in another terminal uses them) and
e-mail goes to files in .data/mail/. The demo admin's generated password is kept in .data/admin-password (0600):
`--print-admin-password` shows it, `--reset-admin-password` sets a new one (both then exit).
"""

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def load_devstack():
    """finops/devstack.py by path: importing the finops package itself needs Celery, which may not be installed yet."""
    spec = importlib.util.spec_from_file_location("finops_devstack", ROOT / "finops" / "devstack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


devstack = load_devstack()
say = devstack.say
LOG_DIR = devstack.DATA / "logs"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the FinOps task system for development.")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    parser.add_argument("--no-seed", action="store_true", help="do not run `manage.py seed_demo`")
    parser.add_argument("--no-beat", action="store_true", help="do not start Celery beat")
    parser.add_argument("--check", action="store_true", help="start, verify web/worker/beat answer, print OK, stop")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds --check waits for readiness")
    parser.add_argument(
        "--print-admin-password", action="store_true", help="print the demo admin's generated password and exit"
    )
    parser.add_argument(
        "--reset-admin-password",
        action="store_true",
        help="give the admin user a new random password (kept in .data/admin-password), print it and exit",
    )
    return parser.parse_args(argv)


def stack_env(services, port: int) -> dict:
    """The environment every child runs with: our services, DEBUG on, the dev secrets of .env."""
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "finops.settings")
    name = os.environ.get("FINOPS_DATABASE_NAME") or devstack.read_env_file().get("FINOPS_DATABASE_NAME") or "finops"
    env["DATABASE_URL"] = services.database_url(name)
    env.update(services.redis_env(os.environ, broker_db=0, result_db=1, cache_db=2))
    env.update(devstack.dev_mail_env(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    env["FINOPS_WEB_PORT"] = str(port)
    return env


def manage(env: dict, *args: str) -> None:
    """Run one manage.py command in the foreground; a failure stops the start with its name."""
    say(f"manage.py {' '.join(args)}")
    if subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env).returncode != 0:
        raise devstack.DevStackError(f"`manage.py {' '.join(args)}` failed; see its output above")


def prepare_database(env: dict, *, seed: bool) -> None:
    if devstack.ensure_database(env["DATABASE_URL"]):
        say(f"created the database {devstack.url_path(env['DATABASE_URL'])}")
    manage(env, "migrate", "--noinput")
    if not seed:
        return
    if devstack.find_management_command("seed_demo") is None:
        say("manage.py seed_demo does not exist yet: no demo data (skipped)")
        return
    manage(env, "seed_demo", "--password-file", str(devstack.admin_password_file()))


def worker_hostname() -> str:
    return f"dev-{os.getpid()}@{socket.gethostname()}"


def start_children(env: dict, args: argparse.Namespace) -> list:
    python = sys.executable
    web = [python, "manage.py", "runserver", f"127.0.0.1:{args.port}"]
    if args.check:
        web.append("--noreload")  # one process to stop; autoreload is for people editing code
    if env.get("DEBUG", "").lower() not in devstack.TRUTHY:
        web.append("--insecure")  # runserver serves the admin's static files only in DEBUG otherwise
    worker = [python, "-m", "celery", "-A", "finops", "worker", "-Q", ",".join(devstack.TASK_QUEUES),
              "-l", "INFO", "--hostname", worker_hostname()]  # fmt: skip
    beat = [python, "-m", "celery", "-A", "finops", "beat", "-l", "INFO",
            "--pidfile", str(devstack.DATA / "run" / f"beat-{os.getpid()}.pid")]  # fmt: skip
    (devstack.DATA / "run").mkdir(parents=True, exist_ok=True)
    children = [devstack.Child("web", web, env, LOG_DIR), devstack.Child("worker", worker, env, LOG_DIR)]
    if not args.no_beat:
        children.append(devstack.Child("beat", beat, env, LOG_DIR))
    return children


def print_banner(port: int, with_beat: bool, env: dict) -> None:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "FinOps task system is starting:",
        f"  admin        {base}/admin/",
        f"  API health   {base}/api/v1/tasks/health",
        f"  API docs     {base}/api/docs/",
        f"  login        admin / {admin_password_hint()}",
        f"  mail         {devstack.mail_destination(env)}",
        f"  services     {services_file_label()} (manage.py in another terminal uses them)",
        f"  worker       queues {', '.join(devstack.TASK_QUEUES)}",
        f"  beat         {'schedules from the database (edit them in the admin)' if with_beat else 'not started'}",
        f"  logs         {LOG_DIR.relative_to(ROOT)}/",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def admin_password_hint() -> str:
    if devstack.admin_password_read() is None:
        return "the password you set (or: python3 start_dev_tasks.py --reset-admin-password)"
    return "python3 start_dev_tasks.py --print-admin-password shows the password"


def services_file_label() -> str:
    path = devstack.services_file()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def print_admin_password() -> int:
    password = devstack.admin_password_read()
    if password is None:
        say(f"no generated admin password in {devstack.admin_password_file()} (set with --password, or made before):"
            " use --reset-admin-password")  # fmt: skip
        return 1
    print(password, flush=True)  # the terminal only: never into the logs
    return 0


def reset_admin_password(env: dict, username: str = "admin") -> None:
    """A new random password for `username` (made a superuser if missing), stored in the 0600 file and printed."""
    import secrets

    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    password = secrets.token_urlsafe(12)
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    if user is None:
        User.objects.create_superuser(username=username, email="admin@example.com", password=password)
    else:
        user.set_password(password)
        user.save(update_fields=["password"])
    devstack.admin_password_write(password)
    say(f"new password of {username!r} (also in {devstack.admin_password_file()}):")
    print(password, flush=True)


def check_ready(env: dict, port: int, *, with_beat: bool, timeout: float) -> None:
    """The --check probe: web answers, the worker replies to a ping, beat writes a fresh heartbeat."""
    started = time.time()
    os.environ.update(env)  # this process now talks to the same database and broker as the children
    import django

    django.setup()
    import redis
    from django.conf import settings

    from finops.celery import app
    from tasks_app.beat import HEARTBEAT_KEY

    url = f"http://127.0.0.1:{port}/admin/login/"
    devstack.wait_until(lambda: devstack.http_answers(url) == 200, timeout=timeout, what=f"the web on {url}")
    say(f"web answers on {url}")
    hostname = worker_hostname()
    devstack.wait_until(
        lambda: app.control.ping(destination=[hostname], timeout=1.0), timeout=timeout, what=f"worker {hostname}"
    )
    say(f"worker {hostname} answers ping")
    if with_beat:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)

        def fresh_heartbeat() -> bool:
            raw = client.get(HEARTBEAT_KEY)
            return raw is not None and float(raw) >= started

        devstack.wait_until(fresh_heartbeat, timeout=timeout, what="a beat heartbeat")
        say("beat heartbeat written")


def wait_for_exit(children: list) -> int:
    """Until Ctrl-C/SIGTERM (0) or until a child dies on its own (1)."""
    while True:
        for child in children:
            code = child.exited()
            if code is not None:
                say(f"{child.name} exited with code {code} (log: {child.log_path}); stopping everything")
                return 1
        time.sleep(0.5)


class Stop(Exception):
    """SIGTERM, turned into an exception so the same cleanup runs as for Ctrl-C."""


def on_sigterm(signum, frame):
    raise Stop()


def shutdown(children: list, services) -> None:
    # A second Ctrl-C while stopping would leave orphans; say so instead of obeying it.
    signal.signal(signal.SIGINT, lambda *_: say("still stopping, please wait ..."))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for child in reversed(children):  # beat first (no new work), then the worker (finishes its task), then web
        say(f"stopping {child.name} ...")
        try:
            child.stop(timeout=30 if child.name == "worker" else 10)
        except Exception as exc:  # keep going: the other children and the services must still stop
            say(f"could not stop {child.name}: {exc}")
    devstack.services_file_remove(devstack.services_file(), pid=os.getpid())
    if services is not None:
        services.stop()
    say("stopped")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.print_admin_password:
        return print_admin_password()  # reads a file: needs neither the venv nor the services
    requirements = [devstack.REQUIREMENTS / "dev.txt", devstack.REQUIREMENTS / "prod.txt"]
    devstack.bootstrap(Path(__file__), argv, requirements)
    signal.signal(signal.SIGTERM, on_sigterm)
    written = devstack.ensure_dev_secrets()
    if written:
        say(f"wrote dev {', '.join(written)} to .env (kept for the next runs)")
    services, children = None, []
    try:
        services = devstack.Services.discover(os.environ)
        env = stack_env(services, args.port)
        for line in services.describe(devstack.url_path(env["DATABASE_URL"])):
            say(line)
        say(f"Mail:       {devstack.mail_destination(env)}")
        if args.reset_admin_password:
            prepare_database(env, seed=False)
            reset_admin_password(env)
            return 0
        devstack.services_file_write(env, devstack.services_file(), pid=os.getpid())
        say(f"service URLs written to {services_file_label()} for manage.py in other terminals")
        prepare_database(env, seed=not args.no_seed)
        children = start_children(env, args)
        if args.check:
            check_ready(env, args.port, with_beat=not args.no_beat, timeout=args.timeout)
            say("OK")
            return 0
        print_banner(args.port, with_beat=not args.no_beat, env=env)
        return wait_for_exit(children)
    except (KeyboardInterrupt, Stop):
        say("stopping on request")
        return 0
    finally:
        shutdown(children, services)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except devstack.DevStackError as exc:
        say(f"error: {exc}")
        sys.exit(2)
