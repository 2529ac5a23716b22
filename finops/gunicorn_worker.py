"""gunicorn's threaded worker (gthread), with the connections spread over the processes.

gunicorn's processes share one listening socket, and a keep-alive connection stays with the process that accepted it
for as long as the client keeps it open. gthread accepts whenever a connection is waiting, however busy its threads
are, so clients that connect together (a dashboard's, a proxy's upstream pool, a load test) mostly land on whichever
process woke first and stay there: one process serves them on one core while the other idles. bench/api.py saw 49 of
58 connections on one process of two; its `active` p95 was 179-183 ms, 141-182 ms with the measures below.

- Each process publishes how many connections it holds in a table shared with its siblings (set up by
  finops/gunicorn_conf.py's pre_fork / child_exit hooks). A process whose threads are all busy waits
  WEB_ACCEPT_DEFER_MS before it accepts; one that holds more than the least-loaded sibling waits that long for each
  connection it is ahead by, up to DEFER_STEPS times (on a loaded machine a sibling may need more than one step to
  be scheduled: one step alone had let 33/15 connections through). It stops waiting as soon as a sibling took the
  connection; when none does, it accepts it all the same (never refused, never left waiting longer).
- Like nginx's `keepalive_requests`, the WEB_KEEPALIVE_REQUESTS-th request of a connection is answered with
  `Connection: close`. The client opens a new connection, which the rule above gives to the process with the fewest,
  so a lasting imbalance (after a restart, or a burst while every process was busy) evens out. 0: no cap.
"""

import os
import select
import time
from multiprocessing import sharedctypes

from gunicorn.workers import gthread

DEFAULT_KEEPALIVE_REQUESTS = 100
DEFAULT_ACCEPT_DEFER_MS = 10
# The most steps of WEB_ACCEPT_DEFER_MS a process that holds more connections than a sibling leaves a new one to it.
DEFER_STEPS = 4


def _setting(name: str, default: int, maximum: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number from 0 to {maximum}, not {raw!r}") from None
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be a whole number from 0 to {maximum}, not {value}")
    return value


def keepalive_requests() -> int:
    """Requests one keep-alive connection serves before the server closes it (0: no cap)."""
    return _setting("WEB_KEEPALIVE_REQUESTS", DEFAULT_KEEPALIVE_REQUESTS, 1_000_000)


def accept_defer_seconds() -> float:
    """How long a process that holds more connections than a sibling, or whose threads are all busy, leaves a new
    connection to the others before it accepts it itself (0: never)."""
    return _setting("WEB_ACCEPT_DEFER_MS", DEFAULT_ACCEPT_DEFER_MS, 1000) / 1000


# Connections held by each process, by slot; -1: no process in the slot. Created in gunicorn's master when it loads
# the worker class, before it forks, so every process shares it. Plain ints written by one process each: a reader
# may see a value one step old, which only makes a deferral a little less exact.
SLOTS = 256
_connections = sharedctypes.RawArray("i", [-1] * SLOTS)


def slot_assign(server, worker) -> None:
    """gunicorn's pre_fork hook (master): a free slot for the worker about to be forked."""
    used = {getattr(sibling, "balance_slot", None) for sibling in server.WORKERS.values()}
    worker.balance_slot = next((i for i in range(SLOTS) if i not in used), None)
    if worker.balance_slot is not None:
        _connections[worker.balance_slot] = 0


def slot_release(server, worker) -> None:
    """gunicorn's child_exit hook (master): the exited worker's slot is free again and no longer counts."""
    slot = getattr(worker, "balance_slot", None)
    if slot is not None:
        _connections[slot] = -1


class ThreadWorker(gthread.ThreadWorker):
    """gthread that leaves new connections to idler processes and caps the requests of a keep-alive connection."""

    def init_process(self):
        self.keepalive_requests = keepalive_requests()
        # With one process there is nobody to leave a connection to.
        self.accept_defer = accept_defer_seconds() if self.cfg.workers > 1 else 0.0
        super().init_process()

    def _publish(self) -> None:
        slot = getattr(self, "balance_slot", None)
        if slot is not None:
            _connections[slot] = max(self.nr_conns, 0)

    def _defer_steps(self) -> int:
        """How many steps of accept_defer to leave a waiting connection to the siblings: one when every thread is
        busy, one per connection this process is ahead of the least-loaded sibling (at most DEFER_STEPS)."""
        # self.futures: the requests handed to the pool and not yet collected by the main loop (queued or running).
        busy = 1 if len(self.futures) >= self.cfg.threads else 0
        slot = getattr(self, "balance_slot", None)
        if slot is None:
            return busy
        others = [n for i, n in enumerate(_connections) if i != slot and n >= 0]
        ahead = self.nr_conns - min(others) if others else 0
        return max(busy, min(ahead, DEFER_STEPS))

    def accept(self, server, listener):
        if self.accept_defer:
            # the main thread only waits; this process's requests run meanwhile
            for _ in range(self._defer_steps()):
                time.sleep(self.accept_defer)
                if not select.select([listener], [], [], 0)[0]:
                    return  # a sibling took it (or the client gave up): nothing to accept
        super().accept(server, listener)  # non-blocking: when another process took the connection, nothing happens
        self._publish()

    def murder_keepalived(self):
        super().murder_keepalived()  # once per turn of the main loop: the count published stays current
        self._publish()

    def handle_request(self, req, conn):
        conn.requests_served = getattr(conn, "requests_served", 0) + 1
        if self.keepalive_requests and conn.requests_served >= self.keepalive_requests:
            req.must_close = True  # answered with Connection: close, then gthread closes the socket
        return super().handle_request(req, conn)
