"""The platform's own Redis clients follow a Redis Sentinel (sentinel:// URLs, as Celery's), against a real sentinel
process watching the test Redis."""

import socket
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from finops.redis_url import redis_from_url
from tasks_app.services import health


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sentinel(tmp_path):
    """A sentinel watching the test Redis as master "finops-test"; its URL's host:port."""
    target = urlsplit(settings.CELERY_BROKER_URL)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor finops-test {target.hostname} {target.port or 6379} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).sentinel_get_master_addr_by_name("finops-test"):
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the sentinel did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_sentinel_url_reaches_the_master_it_names(sentinel):
    # given: the test Redis, read directly (db 15, the tests' result/cache database)
    direct = redis.Redis.from_url(settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + "/15")
    key = f"sentinel-test:{uuid.uuid4().hex}"
    url = f"sentinel://{sentinel}/15;sentinel://127.0.0.1:1/15"  # a second sentinel that is down is skipped
    # when
    with override_settings(CELERY_BROKER_TRANSPORT_OPTIONS={"master_name": "finops-test"}):
        client = redis_from_url(url, socket_timeout=2, socket_connect_timeout=2)
        client.set(key, "through the sentinel", ex=30)
        # the health check's client too
        with health._redis(url) as checked:
            pong = checked.ping()
    # then
    assert direct.get(key) == b"through the sentinel"
    assert pong is True
    direct.delete(key)


def test_a_sentinel_url_without_a_master_name_is_refused():
    no_master = override_settings(CELERY_BROKER_TRANSPORT_OPTIONS={})
    with no_master, pytest.raises(ValueError, match="REDIS_SENTINEL_MASTER"):
        redis_from_url("sentinel://127.0.0.1:26379/0")


def test_plain_urls_are_redis_pys():
    client = redis_from_url(settings.CELERY_BROKER_URL)
    assert isinstance(client, redis.Redis) and client.ping()
