"""The beat scheduler: django-celery-beat's DatabaseScheduler, one leader at a time, with a heartbeat.

Two beats started by mistake (or a standby kept on purpose) must not send a schedule twice: only the
beat holding the leader lease in Redis (BEAT_LEADER_LEASE s, renewed at every tick, i.e. every few
seconds) sends anything. A standby keeps trying to take the lease; when the leader dies the lease lapses
and the standby takes over within BEAT_LEADER_LEASE s, first re-reading every schedule's last run from
the database (the leader writes it after each send), so the slot the old leader sent is not sent again.

The leader also watches the broker's sentinel (tasks_app.services.runs.BROKER_SENTINEL_KEY): when Redis
comes back empty it sends the reconciler at once, which republishes every queued run.
"""

import logging
import os
import socket
import time
import uuid

import redis
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

HEARTBEAT_KEY = "finops:beat:heartbeat"
LEADER_KEY = "finops:beat:leader"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class FinOpsScheduler(DatabaseScheduler):
    # Schedule edits in the admin are seen within this many seconds; the leader lease is renewed as often.
    max_interval = 5

    def __init__(self, *args, **kwargs):
        # Every send's last_run_at reaches the database at once: a standby taking over starts from it.
        kwargs.setdefault("sync_every_tasks", 1)
        self.leader_token = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._broker_checked_at = 0.0
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        if not self._lead():
            return min(self.max_interval, 2.0)
        self._heartbeat()
        self._watch_broker()
        return super().tick(*args, **kwargs)

    def _lead(self) -> bool:
        """Hold (or take) the leader lease; False while another beat holds it or Redis cannot be asked."""
        from django.conf import settings

        from .platform import redis_client

        lease_ms = settings.BEAT_LEADER_LEASE * 1000
        client = redis_client()
        try:
            if self.leading:
                kept = bool(client.eval(_RENEW, 1, LEADER_KEY, self.leader_token, lease_ms))
                # Redis restarted empty: the key is gone; take it again unless another beat was quicker.
                kept = kept or bool(client.set(LEADER_KEY, self.leader_token, nx=True, px=lease_ms))
                if not kept:
                    logger.warning("beat %s lost the leader lease; standing by", self.leader_token)
                    self.leading = False
                return kept
            if client.set(LEADER_KEY, self.leader_token, nx=True, px=lease_ms):
                logger.warning("beat %s is now the leader; re-reading the schedules", self.leader_token)
                self.leading = True
                self._reload()
                return True
        except redis.RedisError as exc:
            logger.warning("beat cannot reach Redis for the leader lease: %s", exc)
            return False
        return False

    def _reload(self) -> None:
        """Forget what this beat knew as a standby: the schedules' last runs are the leader's, in the database."""
        self._dirty.clear()
        self._initial_read = True
        self._heap = []
        self._heap_invalidated = True

    def _heartbeat(self) -> None:
        from .platform import redis_client

        try:
            redis_client().set(HEARTBEAT_KEY, str(time.time()), ex=24 * 3600)
        except Exception as exc:  # the schedule must keep running even if Redis hiccups
            logger.warning("beat heartbeat not written: %s", exc)

    def _watch_broker(self) -> None:
        """A broker that lost its data (sentinel gone): the reconciler now, not at its next minute."""
        from .platform import redis_client
        from .services.runs import BROKER_SENTINEL_KEY

        now = time.monotonic()
        if now - self._broker_checked_at < 10:
            return
        self._broker_checked_at = now
        try:
            if not redis_client().exists(BROKER_SENTINEL_KEY):
                logger.warning("the broker lost its data (sentinel gone): sending the reconciler now")
                self.app.send_task("reconcile_task_runs", queue="default")
        except Exception as exc:
            logger.warning("beat cannot check the broker sentinel: %s", exc)
