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
- Entries expire in place; the table is bounded (MAX_ENTRIES, expired entries dropped first).
"""

import threading
import time
from collections.abc import Callable, Hashable

MAX_ENTRIES = 1024


class ScopedAnswerCache:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, object]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.computed = 0  # how many times an answer was computed (tests and benchmarks read it)

    def get(self, key: Hashable, ttl: float, compute: Callable[[], object]) -> object:
        if ttl <= 0:
            return compute()
        entry = self._entries.get(key)
        if entry is not None:
            expires, value = entry
            now = time.monotonic()
            if now < expires:
                return value
            if now < expires + ttl:
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
            return entry[1]
        started = time.monotonic()
        value = compute()
        with self._guard:
            self.computed += 1
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._evict(time.monotonic())
            self._entries[key] = (started + ttl, value)
        return value

    def _evict(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
        while len(self._entries) >= self.max_entries:  # all fresh: drop the oldest
            key = next(iter(self._entries))
            del self._entries[key]

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()
            self._locks.clear()


active_answers = ScopedAnswerCache()
