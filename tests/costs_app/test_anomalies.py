"""Anomaly detection over the daily rollups: spikes are found with expected/actual/impact, quiet data is left alone."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from costs_app.models import Anomaly, AnomalyStatus, CostDailyRollup
from costs_app.services.anomalies import anomalies_detect
from tests.factories import CloudAccountFactory

pytestmark = pytest.mark.django_db

LAST_DAY = date(2024, 9, 14)  # a Saturday
# Data arrives late: the run happens days after the latest data day and must still judge that day.
NOW = datetime(2024, 9, 19, 6, 0, tzinfo=UTC)


def series(account, values, *, service="Amazon EC2", region="us-east-1", last_day=LAST_DAY, currency="USD"):
    """One rollup row per day, the last value on `last_day`."""
    first = last_day - timedelta(days=len(values) - 1)
    CostDailyRollup.objects.bulk_create(
        CostDailyRollup(
            account=account,
            day=first + timedelta(days=i),
            billing_period_start=datetime(2024, 9, 1, tzinfo=UTC),
            service_name=service,
            region_id=region,
            billing_currency=currency,
            billed_cost=Decimal(f"{v:.4f}"),
            effective_cost=Decimal(f"{v:.4f}"),
            list_cost=Decimal(f"{v:.4f}"),
            line_count=1,
        )
        for i, v in enumerate(values)
    )


def noisy(level: float, days: int, seed: int, spread: float = 0.03) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(level * (1 + rng.uniform(-spread, spread, days)))


def test_spike_is_detected_with_expected_actual_and_impact():
    # given: ~100/day for 40 days, then 400 on the latest day
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=1), 400.0])
    # when
    result = anomalies_detect(now=NOW)
    # then: one account-level and one service-level anomaly, on the latest data day
    assert result.anomalies == 2 and result.created == 2
    account_level = Anomaly.objects.get(account=account, service_name="")
    service_level = Anomaly.objects.get(account=account, service_name="Amazon EC2")
    for anomaly in (account_level, service_level):
        assert anomaly.day == LAST_DAY
        assert anomaly.currency == "USD"
        assert anomaly.actual == Decimal("400.000000")
        assert Decimal("97") < anomaly.expected < Decimal("103")
        assert anomaly.impact == anomaly.actual - anomaly.expected
        assert Decimal("280") < anomaly.impact_percent < Decimal("315")
        assert anomaly.score > 10
        assert anomaly.status == AnomalyStatus.OPEN
    assert account_level.root_causes[0]["dimension"] == "service"
    assert account_level.root_causes[0]["value"] == "Amazon EC2"
    assert {c["dimension"] for c in account_level.root_causes} == {"service", "region"}


def test_account_anomaly_names_the_service_and_region_that_caused_it():
    # given: EC2 stays quiet, S3 in eu-west-1 jumps from 50 to 250
    account = CloudAccountFactory()
    series(account, noisy(100, 41, seed=2), service="Amazon EC2", region="us-east-1")
    series(account, [*noisy(50, 40, seed=3), 250.0], service="Amazon S3", region="eu-west-1")
    # when
    anomalies_detect(now=NOW)
    # then
    assert set(Anomaly.objects.values_list("service_name", flat=True)) == {"", "Amazon S3"}
    causes = Anomaly.objects.get(account=account, service_name="").root_causes
    assert [(c["dimension"], c["value"]) for c in causes] == [("service", "Amazon S3"), ("region", "eu-west-1")]
    assert Decimal(causes[0]["impact"]) > Decimal("190")


def test_quiet_series_yields_no_anomaly():
    # given: several noisy but ordinary series
    for seed in range(5):
        account = CloudAccountFactory()
        series(account, noisy(100, 45, seed=seed, spread=0.08), service="Amazon EC2")
        series(account, noisy(30, 45, seed=seed + 10, spread=0.08), service="Amazon RDS", region="eu-west-1")
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.accounts == 5
    assert result.series == 15
    assert result.points_evaluated == 15 * 3
    assert result.anomalies == 0
    assert Anomaly.objects.count() == 0


def test_small_absolute_increase_is_not_an_anomaly():
    # given: a tiny series quadruples, but only by $3
    account = CloudAccountFactory()
    series(account, [*[1.0] * 40, 4.0])
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.anomalies == 0


def test_weekday_pattern_is_the_baseline_when_there_is_enough_history():
    # given: 100 on weekdays, 10 at weekends, for 8 weeks ending on a Saturday
    quiet, busy = CloudAccountFactory(), CloudAccountFactory()
    days = [LAST_DAY - timedelta(days=55 - i) for i in range(56)]
    pattern = [10.0 if d.weekday() >= 5 else 100.0 for d in days]
    series(quiet, pattern)
    # the same, except the latest Saturday costs a weekday's worth
    series(busy, [*pattern[:-1], 100.0])
    # when
    anomalies_detect(now=NOW)
    # then: a plain median (100) would miss the busy Saturday and flag the quiet Mondays; the weekly one does not
    assert not Anomaly.objects.filter(account=quiet).exists()
    anomaly = Anomaly.objects.get(account=busy, service_name="")
    assert anomaly.day == LAST_DAY
    assert anomaly.expected == Decimal("10.000000")
    assert anomaly.impact == Decimal("90.000000")


def test_rerun_updates_instead_of_duplicating():
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=4), 300.0, 320.0])
    first = anomalies_detect(now=NOW)
    # when
    second = anomalies_detect(now=NOW)
    # then
    assert first.created == 4
    assert (second.created, second.updated) == (0, 4)
    assert Anomaly.objects.count() == 4


def test_reviewed_anomalies_are_never_reopened_or_rewritten():
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=5), 400.0])
    anomalies_detect(now=NOW)
    Anomaly.objects.filter(service_name="").update(status=AnomalyStatus.ACKNOWLEDGED)
    Anomaly.objects.filter(service_name="Amazon EC2").update(status=AnomalyStatus.FALSE_POSITIVE)
    CostDailyRollup.objects.filter(account=account, day=LAST_DAY).update(effective_cost=Decimal("600"))
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.kept_as_reviewed == 2 and result.created == 0 and result.updated == 0
    statuses = dict(Anomaly.objects.values_list("service_name", "status"))
    assert statuses == {"": AnomalyStatus.ACKNOWLEDGED, "Amazon EC2": AnomalyStatus.FALSE_POSITIVE}
    assert set(Anomaly.objects.values_list("actual", flat=True)) == {Decimal("400.000000")}


def test_open_anomaly_is_resolved_when_corrected_data_no_longer_shows_it():
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=6), 400.0])
    anomalies_detect(now=NOW)
    CostDailyRollup.objects.filter(account=account, day=LAST_DAY).update(effective_cost=Decimal("101"))
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.resolved == 2
    assert set(Anomaly.objects.values_list("status", flat=True)) == {AnomalyStatus.RESOLVED}


def test_account_without_enough_history_is_not_judged_and_scope_is_respected():
    # given: a brand-new account whose first days look like a jump from nothing
    new = CloudAccountFactory()
    series(new, [5.0, 500.0, 800.0])
    other = CloudAccountFactory()
    series(other, [*noisy(100, 40, seed=7), 400.0])
    # when
    only_new = anomalies_detect(account_id=new.id, now=NOW)
    # then
    assert only_new.accounts == 0 and only_new.anomalies == 0
    assert Anomaly.objects.count() == 0


def test_only_days_up_to_now_count():
    # given: data that ends after `now` (e.g. a run replayed for an earlier date)
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=8), 400.0])
    # when
    result = anomalies_detect(now=datetime.combine(LAST_DAY - timedelta(days=1), datetime.min.time(), tzinfo=UTC))
    # then: the spike day is in the future of that run
    assert result.anomalies == 0
