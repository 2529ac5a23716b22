"""gunicorn settings that belong to the code rather than the deployment (`gunicorn -c python:finops.gunicorn_conf`).

The command line (docker-compose.yml's web service) still says how many processes and threads, where to bind, the
time limits and the access log; this module only adds what every deployment wants: the threaded worker that spreads
connections over the processes (finops/gunicorn_worker.py) and a garbage collector that leaves start-up objects alone.
"""

import gc

from finops import gunicorn_worker

worker_class = "finops.gunicorn_worker.ThreadWorker"
# Read here too, so that a bad WEB_KEEPALIVE_REQUESTS or WEB_ACCEPT_DEFER_MS stops gunicorn at start with its message
# rather than each worker process at boot.
gunicorn_worker.keepalive_requests()
gunicorn_worker.accept_defer_seconds()
# Each process's slot in the connection counts the worker class shares between the processes.
pre_fork = gunicorn_worker.slot_assign
child_exit = gunicorn_worker.slot_release


def post_worker_init(worker) -> None:
    """Once a worker process has loaded Django: freeze what it holds so the garbage collector stops walking it.

    A loaded web process holds a few hundred thousand long-lived objects (modules, URL resolvers, models, DRF
    serializers' fields). Each full collection walks all of them while holding the GIL, stalling every thread of the
    process: under load those stalls were the slow tail of cheap requests (`GET /tasks/active`). gc.freeze() moves
    them to a permanent generation that collections skip; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()
    worker.log.info("gc: %d objects frozen after start-up", gc.get_freeze_count())
