"""Redis clients for the platform's own use (locks, leases, the broker sentinel key, health, metrics), from the same
URLs Celery reads — including kombu's Redis Sentinel form, which redis-py's `from_url` does not accept:

    sentinel://[:password@]host:port[/db][;sentinel://[:password@]host:port[/db]...]

The master's name comes from CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] (REDIS_SENTINEL_MASTER), and the
sentinels' own credentials from its "sentinel_kwargs", as kombu uses them; every connection then goes to whichever
server the sentinels name as master at that moment (redis-py's SentinelConnectionPool asks again after a failover).
"""

from urllib.parse import unquote, urlsplit

import redis
from django.conf import settings
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0] == SENTINEL_SCHEME


def redis_from_url(url: str, **kwargs) -> redis.Redis:
    """redis.Redis.from_url(url, **kwargs), or a client of the Sentinel-named master for a `sentinel://` URL."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    master = options.get("master_name")
    if not master:
        raise ValueError("a sentinel:// Redis URL needs the master's name: set REDIS_SENTINEL_MASTER")
    hosts, password, db = [], None, 0
    for part in filter(None, (p.strip() for p in url.split(";"))):
        parsed = urlsplit(part)
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        password = unquote(parsed.password) if parsed.password else password
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, **(options.get("sentinel_kwargs") or {})}, **timeouts)
    return sentinel.master_for(master, db=db, password=password, **kwargs)
