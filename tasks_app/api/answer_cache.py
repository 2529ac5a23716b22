"""A short-lived, per-process cache of rendered answers, keyed by what the caller may see.

`GET /api/v1/tasks/active` is polled by dashboards and scripts, often by many clients at once, and its answer
changes at the pace of the workers' heartbeat snapshots (every 2 s) anyway. Each web process keeps the rendered
answer of each visibility scope for TASKS_ACTIVE_CACHE_SECONDS (default 1 s; 0 turns the cache off):

- The key is the caller's scope, never a shared one: platform admins share one entry; anyone else's entry is
  keyed by the model permission and the exact set of accounts visible to them (providers_app.selectors), so two
  users share an answer only when they would see the same runs, and a user of team A can never be served an
  answer computed for team B. The key also holds the request's parameters and the scheme and host (status URLs
  are absolute).
- Single flight: when an entry is missing, one request per process computes it while the others asking for the
  same key wait for it (a lock per key) instead of all running the same queries. When it is stale, one request
  refreshes it and the others are served the previous answer meanwhile (stale-while-revalidate), for at most one
  more TTL: so an answer is at most TTL + the refresh's duration old, counted from when the ledger was read (an
  entry's age starts when its computation started).
- The table is bounded: entries that can no longer be served are dropped as new ones come in, and it never holds more
  than MAX_ENTRIES (the oldest go first), whatever the number of scopes and limits asked for.
"""

import threading
import time
from collections.abc import Callable, Hashable

# An answer lists at most 500 runs (a few hundred KB): the table holds a few dozen of them at most per process.
MAX_ENTRIES = 64
SWEEP_ABOVE = 16  # above this many entries, each insert first drops the ones that can no longer be served


class ScopedAnswerCache:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, float, object]] = {}  # key: (fresh until, servable until, answer)
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0  # how many times an answer was computed (tests and benchmarks read it)

    def get(self, key: Hashable, ttl: float, compute: Callable[[], object]) -> object:
        if ttl <= 0:
            return compute()
        entry = self._entries.get(key)
        if entry is not None:
            expires, servable, value = entry
            now = time.monotonic()
            if now < expires:
                return value
            if now < servable:
                # Stale: one request refreshes it; the others keep the last answer meanwhile, for at most one more
                # TTL (a refresh slower than that makes them wait for it below).
                lock = self._lock(key)
                if not lock.acquire(blocking=False):
                    return value
                try:
                    return self._refresh(key, ttl, compute)
                finally:
                    lock.release()
        with self._lock(key):
            return self._refresh(key, ttl, compute)

    def _lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _refresh(self, key: Hashable, ttl: float, compute: Callable[[], object]) -> object:
        entry = self._entries.get(key)  # refreshed by the request this one waited for
        if entry is not None and entry[0] > time.monotonic():
            return entry[2]
        started = time.monotonic()
        value = compute()
        with self._guard:
            self.computed += 1
            if key not in self._entries and len(self._entries) >= SWEEP_ABOVE:
                self._evict(time.monotonic())
            self._entries[key] = (started + ttl, started + 2 * ttl, value)
        return value

    def _evict(self, now: float) -> None:
        # Entries past their stale window are never served again: dropped. Then, if still full, the oldest.
        for key in [k for k, (_, servable, _) in self._entries.items() if servable <= now]:
            del self._entries[key]
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()
            self._locks.clear()


active_answers = ScopedAnswerCache()
