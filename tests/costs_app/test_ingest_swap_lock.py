"""An import's swap waits only briefly for readers of its month, without holding them up, and tries again."""

import threading
import time
from datetime import date

import psycopg
import pytest
from django.db import connection
from django.db.models import Count

from costs_app.models import CostLineItem
from costs_app.services.ingest import focus_file_import
from finops.errors import TransientError
from tests.celery_procs import database_url
from tests.costs_app.focus_lines import daily, days_before, write_focus
from tests.factories import CloudAccountFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def loaded(tmp_path):
    """An account whose November is loaded, and a second file of that month with other lines."""
    account = CloudAccountFactory()
    days = days_before(date(2025, 11, 20), 5)
    first = write_focus(tmp_path / "first.csv", daily("i-old", days, "1"))
    second = write_focus(tmp_path / "second.csv", daily("i-new", days, "2") + daily("i-new-2", days, "3"))
    focus_file_import(account=account, path=str(first))
    return account, second


def lines_of(account) -> dict:
    return dict(CostLineItem.objects.filter(account=account).values_list("resource_id").annotate(n=Count("id")))


def test_a_swap_behind_a_long_reader_gives_up_without_blocking_other_readers_and_leaves_the_month_old(loaded, settings):
    # given: a reader of the account's month inside an open transaction (a long dashboard query or export)
    account, second = loaded
    settings.INGEST_SWAP_LOCK_TIMEOUT = 0.3
    settings.INGEST_SWAP_ATTEMPTS = 3
    reader = psycopg.connect(database_url())
    reader.execute("SELECT count(*) FROM costs_app_costlineitem WHERE account_id = %s", [account.pk])
    waits = []

    def other_readers():  # meanwhile, other queries of the month keep being answered
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '5s'")
            for _ in range(8):
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM costs_app_costlineitem WHERE account_id = %s", [account.pk])
                waits.append(time.monotonic() - started)
                time.sleep(0.1)

    thread = threading.Thread(target=other_readers)
    try:
        thread.start()
        # when
        started = time.monotonic()
        with pytest.raises(TransientError, match="waited 3 x 0.3s for readers"):
            focus_file_import(account=account, path=str(second))
        elapsed = time.monotonic() - started
        thread.join(timeout=30)
    finally:
        reader.close()
    # then: it gave up after its attempts and pauses (not for as long as the reader ran), the month is the old
    # load, whole, no staging table is left, and no other reader waited longer than one attempt's timeout
    assert elapsed < 10
    assert lines_of(account) == {"i-old": 5}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relname ~ '^costs_app_costlineitem_s[0-9]+_' AND relkind IN ('r', 'p')"
        )
        assert cursor.fetchall() == []
    assert len(waits) == 8 and max(waits) < 0.3 + 0.5


def test_a_swap_tries_again_and_succeeds_once_the_reader_is_done(loaded, settings):
    # given: the same reader, ending after about a second
    account, second = loaded
    settings.INGEST_SWAP_LOCK_TIMEOUT = 0.2
    settings.INGEST_SWAP_ATTEMPTS = 10
    reader = psycopg.connect(database_url())
    reader.execute("SELECT count(*) FROM costs_app_costlineitem WHERE account_id = %s", [account.pk])
    timer = threading.Timer(1.0, reader.close)
    timer.start()
    try:
        # when
        result = focus_file_import(account=account, path=str(second))
    finally:
        timer.join()
    # then: the month is the new load, whole
    assert result.rows_replaced == 5
    assert lines_of(account) == {"i-new": 5, "i-new-2": 5}
