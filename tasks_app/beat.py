"""The beat scheduler: django-celery-beat's DatabaseScheduler plus a heartbeat for the health check."""

import logging
import time

from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

HEARTBEAT_KEY = "finops:beat:heartbeat"


class FinOpsScheduler(DatabaseScheduler):
    # Schedule edits in the admin are seen within this many seconds.
    max_interval = 5

    def tick(self, *args, **kwargs):
        self._heartbeat()
        return super().tick(*args, **kwargs)

    def _heartbeat(self) -> None:
        from .platform import redis_client

        try:
            redis_client().set(HEARTBEAT_KEY, str(time.time()), ex=24 * 3600)
        except Exception as exc:  # the schedule must keep running even if Redis hiccups
            logger.warning("beat heartbeat not written: %s", exc)
