"""Anomaly detection: the baseline and band, floors per monitor, root causes, anomalies that grow, the lifecycle."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.test import override_settings

from costs_app.models import (
    Anomaly,
    AnomalyDimension,
    AnomalyMonitor,
    AnomalyStatus,
    CostAllocationTag,
    CostDailyRollup,
    CostTagRollup,
)
from costs_app.services import anomaly_detector as detector
from costs_app.services.anomalies import (
    AnomalyMonitorError,
    AnomalyStatusError,
    anomalies_detect,
    anomaly_days_assign,
    anomaly_monitor_save,
    anomaly_status_set,
)
from costs_app.services.ingest import focus_file_import
from tests.costs_app.anomaly_data import Usage, focus_file, steady, with_extra
from tests.costs_app.webhook_sink import webhook_sink  # noqa: F401  (fixture)
from tests.factories import CloudAccountFactory, NotificationChannelFactory, UserFactory

pytestmark = pytest.mark.django_db

LAST_DAY = date(2024, 9, 14)  # a Saturday
# Data arrives late: the run happens days after the latest data day and must still judge that day.
NOW = datetime(2024, 9, 19, 6, 0, tzinfo=UTC)


@pytest.fixture
def monitors():
    """The two monitors the data migration creates (recreated: transactional tests elsewhere flush them)."""
    return {
        "account": AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account"})[0],
        "service": AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service"})[
            0
        ],
    }


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


def add_day(account, value, day, *, service="Amazon EC2", region="us-east-1"):
    series(account, [value], service=service, region=region, last_day=day)


def noisy(level: float, days: int, seed: int, spread: float = 0.03) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(level * (1 + rng.uniform(-spread, spread, days)))


# --- the detector itself (pure NumPy) ---


def test_detector_band_and_verdict_per_day():
    # given: three series over 8 weeks: flat with a spike on the last day, a small bump, a big but cheap jump
    days = 56
    rng = np.random.default_rng(1)
    costs = np.vstack(
        [
            100 * (1 + rng.uniform(-0.02, 0.02, days)),
            100 * (1 + rng.uniform(-0.02, 0.02, days)),
            np.full(days, 2.0),
        ]
    )
    costs[0, -1] = 300.0  # +200 %
    costs[1, -1] = 112.0  # +12 %: outside the band but under the 20 % floor
    costs[2, -1] = 9.0  # +350 % but only +7: under the 10 absolute floor
    # when
    result = detector.series_evaluate(
        costs, first_column=28, baseline_days=28, score_threshold=3.5, min_impact=10.0, min_impact_percent=20.0
    )
    # then
    assert result.flags.shape == (3, 28)
    assert result.flags[:, :-1].sum() == 0
    assert list(result.flags[:, -1]) == [True, False, False]
    assert result.lower[0, -1] < result.expected[0, -1] < result.upper[0, -1] < 300
    assert 98 < result.expected[0, -1] < 102
    assert result.score[1, -1] > 3.5  # outside the band: only the percentage floor stops it
    assert result.impact_percent[0, -1] == pytest.approx(100 * (300 / result.expected[0, -1] - 1))


def test_detector_per_series_floors():
    # given: the same spike in two rows, floors that differ per row
    base = 100 * (1 + np.random.default_rng(2).uniform(-0.02, 0.02, 42))
    costs = np.vstack([base, base])
    costs[:, -1] = 160.0
    # when
    result = detector.series_evaluate(
        costs,
        first_column=35,
        baseline_days=28,
        score_threshold=3.5,
        min_impact=np.array([10.0, 100.0]),
        min_impact_percent=np.array([20.0, 20.0]),
    )
    # then
    assert list(result.flags[:, -1]) == [True, False]


def test_detector_uses_the_weekday_of_the_day():
    # given: 100 on weekdays, 10 at weekends; the last day (a Saturday) costs a weekday's worth
    days = [LAST_DAY - timedelta(days=55 - i) for i in range(56)]
    pattern = np.array([10.0 if d.weekday() >= 5 else 100.0 for d in days])
    busy = pattern.copy()
    busy[-1] = 100.0
    # when
    result = detector.series_evaluate(
        np.vstack([pattern, busy]),
        first_column=28,
        baseline_days=28,
        score_threshold=3.5,
        min_impact=10.0,
        min_impact_percent=20.0,
    )
    # then: a plain median (100) would miss the busy Saturday and flag every quiet weekend day
    assert not result.flags[0].any()
    assert list(np.nonzero(result.flags[1])[0]) == [27]
    assert result.expected[1, -1] == pytest.approx(10.0)
    assert result.weekly[1, -1]


def test_detector_refuses_a_baseline_that_is_not_whole_weeks():
    with pytest.raises(ValueError, match="whole weeks"):
        detector.series_evaluate(
            np.ones((1, 40)), first_column=30, baseline_days=30, score_threshold=3, min_impact=1, min_impact_percent=1
        )


def test_detector_reads_only_the_columns_it_says_it_reads():
    # given: 40 series over 140 days (from 1 June 2024) with a charge on every 1st, spikes and shifts; windows of
    # 7 judged days ending on each day of 25 September .. 10 October (seven judge 1 October, the others no 1st)
    days = [date(2024, 6, 1) + timedelta(days=i) for i in range(140)]
    rng = np.random.default_rng(11)
    costs = 100 * (1 + rng.uniform(-0.05, 0.05, (40, len(days))))
    costs[:, [d.day == 1 for d in days]] += rng.uniform(50, 300, (40, 1))
    costs[rng.random(costs.shape) < 0.02] *= 4
    costs[:20, 120:] *= 2
    month_starts = np.array([d.day == 1 for d in days])
    history = detector.history_days(28)
    judged_a_1st = 0
    for last in range(days.index(date(2024, 9, 25)), days.index(date(2024, 10, 10)) + 1):
        window = slice(last - history - 6, last + 1)
        first_column = history
        read = detector.columns_read(
            last + 1 - window.start, first_column=first_column, baseline_days=28, month_starts=month_starts[window]
        )
        # when: every column it does not read holds junk instead of the spend
        junk = costs[:, window].copy()
        junk[:, ~read] = rng.uniform(-1e6, 1e6, (40, int((~read).sum())))
        kwargs = {
            "first_column": first_column,
            "baseline_days": 28,
            "score_threshold": 6.5,
            "min_impact": 10.0,
            "min_impact_percent": 20.0,
            "month_starts": month_starts[window],
        }
        full = detector.series_evaluate(costs[:, window], **kwargs)
        partial = detector.series_evaluate(junk, **kwargs)
        # then: the same verdicts and figures to the bit
        for name in ("expected", "sigma", "lower", "upper", "actual", "impact", "impact_percent", "score", "weekly"):
            assert np.array_equal(getattr(full, name), getattr(partial, name), equal_nan=True), (days[last], name)
        assert np.array_equal(full.flags, partial.flags) and full.flags.any()
        # and every day from the first judged day's baseline on is read (the service reads them as one range), but
        # without a judged 1st no day before it
        assert read[first_column - 28 :].all()
        if month_starts[window][first_column:].any():
            judged_a_1st += 1
            assert read[: first_column - 28].any()
        else:
            assert read.sum() == 28 + 7 and not read[: first_column - 28].any()
    assert judged_a_1st == 7


def test_flagged_runs_merge_short_gaps():
    flags = np.array([[1, 1, 0, 0, 1, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=bool)
    assert detector.flagged_runs(flags, gap=0) == [(0, 0, 1), (0, 4, 4), (0, 8, 8), (1, 1, 1)]
    assert detector.flagged_runs(flags, gap=2) == [(0, 0, 4), (0, 8, 8), (1, 1, 1)]


def test_day_assignment_keeps_closed_days_and_grows_live_anomalies():
    d = [date(2024, 9, 1) + timedelta(days=i) for i in range(12)]
    monitor = AnomalyMonitor(name="m")
    live = Anomaly(pk=1, monitor=monitor, status=AnomalyStatus.ACKNOWLEDGED, days=[{"day": d[2].isoformat()}])
    closed = Anomaly(pk=2, monitor=monitor, status=AnomalyStatus.FALSE_POSITIVE, days=[{"day": d[6].isoformat()}])
    # when: the window is d[3]..d[11]; flagged: d[3] (continues the live one), d[6] (the false positive's), d[7]
    # (right after the closed one: a new anomaly), d[10]
    existing, new = anomaly_days_assign(
        flagged=[d[3], d[6], d[7], d[10]], window_start=d[3], window_end=d[11], records=[live, closed], gap=1
    )
    # then
    assert existing == {1: [d[2], d[3]]}
    assert new == [[d[7]], [d[10]]]


# --- detection over the rollups ---


def test_spike_is_one_anomaly_per_series_with_expected_band_actual_and_impact(monitors):
    # given: ~100/day for 40 days, then 400 on the latest day
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=1), 400.0])
    # when
    result = anomalies_detect(now=NOW)
    # then: one account-level and one service-level anomaly, on the latest data day
    assert (result.accounts, result.monitors, result.series, result.created) == (1, 2, 2, 2)
    account_level = Anomaly.objects.get(monitor=monitors["account"])
    service_level = Anomaly.objects.get(monitor=monitors["service"])
    assert service_level.dimension_value == "Amazon EC2" and account_level.dimension_value == ""
    for anomaly in (account_level, service_level):
        assert anomaly.account == account
        assert anomaly.start_day == anomaly.end_day == LAST_DAY
        assert anomaly.day_count == 1
        assert anomaly.currency == "USD"
        assert anomaly.actual == Decimal("400.000000")
        assert Decimal("97") < anomaly.expected < Decimal("103")
        assert anomaly.impact == anomaly.actual - anomaly.expected
        assert Decimal("280") < anomaly.impact_percent < Decimal("315")
        assert anomaly.score > 10
        assert anomaly.status == AnomalyStatus.OPEN
        (day,) = anomaly.days
        assert day["day"] == "2024-09-14"
        assert Decimal(day["lower"]) < Decimal(day["expected"]) < Decimal(day["upper"]) < Decimal(day["actual"])
    assert [(c["dimension"], c["value"]) for c in account_level.root_causes] == [
        ("service", "Amazon EC2"),
        ("region", "us-east-1"),
        ("sub_account", ""),
    ]
    assert [(c["dimension"], c["value"]) for c in service_level.root_causes] == [
        ("region", "us-east-1"),
        ("sub_account", ""),
    ]


def test_a_charge_on_the_1st_seen_on_the_previous_1sts_is_expected_and_twice_it_is_an_anomaly(monitors):
    # given: ~100/day since 1 July 2024 with a 250 charge on every 1st; on 1 October one account is charged 500
    usual, doubled = CloudAccountFactory(), CloudAccountFactory()
    first = date(2024, 7, 1)
    for account, october in ((usual, 250.0), (doubled, 500.0)):
        values = noisy(100, 93, seed=21)
        for i in range(93):
            day = first + timedelta(days=i)
            values[i] += (october if day == date(2024, 10, 1) else 250.0) if day.day == 1 else 0.0
        series(account, values, last_day=date(2024, 10, 1))
    # when: the run reads the rollups of 1 July, 1 August and 1 September and the weeks around them
    result = anomalies_detect(now=datetime(2024, 10, 2, 6, 0, tzinfo=UTC))
    # then: the usual charge is expected, the doubled one is an anomaly on 1 October only
    assert result.accounts == 2
    anomalies = list(Anomaly.objects.filter(monitor=monitors["account"]))
    assert [(a.account_id, a.start_day, a.end_day) for a in anomalies] == [
        (doubled.pk, date(2024, 10, 1), date(2024, 10, 1))
    ]
    (day,) = anomalies[0].days
    assert 320 < float(day["expected"]) < 380


def test_quiet_series_yield_no_anomaly(monitors):
    # given: several noisy but ordinary series
    for seed in range(5):
        account = CloudAccountFactory()
        series(account, noisy(100, 45, seed=seed, spread=0.08), service="Amazon EC2")
        series(account, noisy(30, 45, seed=seed + 10, spread=0.08), service="Amazon RDS", region="eu-west-1")
    # when
    result = anomalies_detect(now=NOW)
    # then: 5 accounts × (1 account series + 2 service series); the days after the 28-day baseline, at most 7
    assert (result.accounts, result.series) == (5, 15)
    assert result.points_evaluated == 15 * 7
    assert result.anomalous_days == 0 and Anomaly.objects.count() == 0


def test_each_monitor_applies_its_own_floors(monitors):
    # given: +60 (+60 %) on the latest day; one lenient monitor and two strict ones
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=3, spread=0.01), 160.0])
    monitors["service"].delete()
    lenient = monitors["account"]
    strict_absolute = AnomalyMonitor.objects.create(name="big money only", min_impact=Decimal("100"))
    strict_percent = AnomalyMonitor.objects.create(name="doubling only", min_impact_percent=Decimal("80"))
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.series == 3
    assert list(Anomaly.objects.values_list("monitor", flat=True)) == [lenient.pk]
    assert not Anomaly.objects.filter(monitor__in=[strict_absolute, strict_percent]).exists()


def test_monitor_scoped_to_one_account(monitors):
    # given
    watched, other = CloudAccountFactory(), CloudAccountFactory()
    for account in (watched, other):
        series(account, [*noisy(100, 40, seed=4), 400.0])
    AnomalyMonitor.objects.exclude(pk=monitors["account"].pk).delete()
    monitors["account"].account = watched
    monitors["account"].save()
    # when
    anomalies_detect(now=NOW)
    # then
    assert list(Anomaly.objects.values_list("account", flat=True)) == [watched.pk]


def test_account_without_a_whole_baseline_is_not_judged_and_scope_is_respected(monitors):
    # given: a new account (20 days: less than the 28-day baseline) whose spend jumps, and an older one
    new = CloudAccountFactory()
    series(new, [*noisy(100, 19, seed=5), 800.0])
    other = CloudAccountFactory()
    series(other, [*noisy(100, 40, seed=7), 400.0])
    # when
    only_new = anomalies_detect(account_id=new.id, now=NOW)
    # then
    assert only_new.accounts == 0 and only_new.created == 0
    assert Anomaly.objects.count() == 0


def test_only_days_up_to_now_count(monitors):
    # given: data that ends after `now` (e.g. a run replayed for an earlier date)
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=8), 400.0])
    # when
    result = anomalies_detect(now=datetime.combine(LAST_DAY - timedelta(days=1), datetime.min.time(), tzinfo=UTC))
    # then: the spike day is in the future of that run
    assert result.anomalous_days == 0


def test_an_account_whose_data_stopped_weeks_ago_is_not_judged(monitors):
    # given: the spike is the account's last data, and that was three weeks before the run
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=19), 400.0])
    # when
    result = anomalies_detect(now=NOW + timedelta(days=16))
    # then: history, not news
    assert (result.accounts, result.anomalous_days) == (0, 0)
    assert not Anomaly.objects.exists()


def test_inactive_monitor_and_monitor_on_an_inactive_tag_are_skipped(monitors):
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=9), 400.0])
    AnomalyMonitor.objects.filter(pk=monitors["service"].pk).update(is_active=False)
    CostAllocationTag.objects.create(key="team", is_active=False)
    AnomalyMonitor.objects.create(name="Teams", dimension=AnomalyDimension.TAG, tag_key="team")
    # when
    result = anomalies_detect(now=NOW)
    # then
    assert result.monitors == 1
    assert result.skipped_monitors == ["Teams: tag key 'team' is not an active tag"]
    assert list(Anomaly.objects.values_list("monitor", flat=True)) == [monitors["account"].pk]


# --- one record per anomaly ---


def test_rerun_changes_nothing(monitors):
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=10), 300.0, 320.0])
    first = anomalies_detect(now=NOW)
    before = list(Anomaly.objects.order_by("pk").values())
    # when
    second = anomalies_detect(now=NOW)
    # then: two consecutive anomalous days are one anomaly per series, and a re-run neither adds nor rewrites
    assert first.created == 2 and first.anomalous_days == 4
    assert (second.created, second.updated) == (0, 0)
    assert list(Anomaly.objects.order_by("pk").values()) == before
    assert set(Anomaly.objects.values_list("day_count", flat=True)) == {2}


def test_ongoing_anomaly_grows_over_two_runs(monitors):
    # given: a jump on the latest day, judged
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=11), 300.0])
    anomalies_detect(now=NOW)
    first = Anomaly.objects.get(monitor=monitors["account"])
    # when: the next day's data arrives, still high, and the task runs again
    add_day(account, 320.0, LAST_DAY + timedelta(days=1))
    result = anomalies_detect(now=NOW)
    # then: the same record, one day longer, its totals the sum of its days
    grown = Anomaly.objects.get(monitor=monitors["account"])
    assert grown.pk == first.pk
    assert (result.created, result.updated) == (0, 2)
    assert (grown.start_day, grown.end_day, grown.day_count) == (LAST_DAY, LAST_DAY + timedelta(days=1), 2)
    assert grown.actual == Decimal("620.000000")
    assert grown.impact == sum(Decimal(d["impact"]) for d in grown.days) == grown.actual - grown.expected
    assert grown.impact > first.impact + Decimal("190")
    assert grown.impact_percent == (grown.impact * 100 / grown.expected).quantize(Decimal("0.01"))
    assert Anomaly.objects.count() == 2


def test_a_short_lull_does_not_split_an_anomaly_but_a_long_one_does(monitors):
    # given: high, one normal day, high again (gap 2 allowed); then 4 normal days and high again
    account = CloudAccountFactory()
    base = noisy(100, 40, seed=12, spread=0.01)
    series(account, [*base, 300.0, 100.0, 300.0])
    AnomalyMonitor.objects.filter(pk=monitors["service"].pk).delete()
    anomalies_detect(now=NOW)
    assert Anomaly.objects.get().day_count == 2
    for offset, value in ((1, 100.0), (2, 100.0), (3, 100.0), (4, 100.0), (5, 300.0)):
        add_day(account, value, LAST_DAY + timedelta(days=offset))
    # when
    anomalies_detect(now=NOW + timedelta(days=5))
    # then
    spans = list(Anomaly.objects.order_by("start_day").values_list("start_day", "end_day", "day_count"))
    assert spans == [
        (LAST_DAY - timedelta(days=2), LAST_DAY, 2),
        (LAST_DAY + timedelta(days=5), LAST_DAY + timedelta(days=5), 1),
    ]


def test_acknowledged_anomaly_grows_false_positive_does_not(monitors):
    # given: one anomaly per series, then one acknowledged and one marked a false positive
    account = CloudAccountFactory()
    user = UserFactory(username="analyst")
    series(account, [*noisy(100, 40, seed=13), 300.0])
    anomalies_detect(now=NOW)
    acknowledged = Anomaly.objects.get(monitor=monitors["account"])
    dismissed = Anomaly.objects.get(monitor=monitors["service"])
    anomaly_status_set(anomaly_id=acknowledged.pk, status=AnomalyStatus.ACKNOWLEDGED, user=user, note="looking")
    anomaly_status_set(anomaly_id=dismissed.pk, status=AnomalyStatus.FALSE_POSITIVE, user=user, note="planned")
    # when: the spend stays high the next day
    add_day(account, 310.0, LAST_DAY + timedelta(days=1))
    result = anomalies_detect(now=NOW)
    # then: the acknowledged one grows; the false positive stays as it was and the new day is a new anomaly
    assert (result.created, result.updated) == (1, 1)
    acknowledged.refresh_from_db()
    assert (acknowledged.day_count, acknowledged.status) == (2, AnomalyStatus.ACKNOWLEDGED)
    assert list(Anomaly.objects.filter(monitor=monitors["service"]).order_by("start_day").values_list(
        "start_day", "day_count", "status"
    )) == [
        (LAST_DAY, 1, AnomalyStatus.FALSE_POSITIVE),
        (LAST_DAY + timedelta(days=1), 1, AnomalyStatus.OPEN),
    ]  # fmt: skip


def test_a_resolved_anomaly_that_recurs_later_is_a_new_record(monitors):
    # given: an anomaly, resolved
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=14, spread=0.01), 300.0])
    AnomalyMonitor.objects.filter(pk=monitors["service"].pk).delete()
    anomalies_detect(now=NOW)
    first = Anomaly.objects.get()
    anomaly_status_set(anomaly_id=first.pk, status=AnomalyStatus.RESOLVED, user=None, note="fixed")
    # when: normal for three days, then the spend jumps again
    for offset, value in ((1, 100.0), (2, 100.0), (3, 100.0), (4, 300.0)):
        add_day(account, value, LAST_DAY + timedelta(days=offset))
    anomalies_detect(now=NOW + timedelta(days=4))
    # then
    first.refresh_from_db()
    assert (first.status, first.end_day) == (AnomalyStatus.RESOLVED, LAST_DAY)
    recurrence = Anomaly.objects.exclude(pk=first.pk).get()
    assert (recurrence.start_day, recurrence.status) == (LAST_DAY + timedelta(days=4), AnomalyStatus.OPEN)


def test_open_anomaly_is_resolved_with_a_note_when_corrected_data_no_longer_shows_it(monitors):
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=15), 400.0])
    anomalies_detect(now=NOW)
    CostDailyRollup.objects.filter(account=account, day=LAST_DAY).update(effective_cost=Decimal("101"))
    # when
    result = anomalies_detect(now=NOW)
    # then: kept for the record (it may have been notified), closed with the reason
    assert result.auto_resolved == 2
    for anomaly in Anomaly.objects.all():
        assert anomaly.status == AnomalyStatus.RESOLVED
        assert "none of its days is anomalous" in anomaly.status_note
        assert anomaly.status_changed_by is None
        assert anomaly.status_history[-1]["from"] == AnomalyStatus.OPEN


def test_a_false_positive_changes_no_baseline(monitors):
    # given: two accounts with the same data and the same anomaly; one anomaly is marked a false positive
    twins = [CloudAccountFactory(), CloudAccountFactory()]
    values = [*noisy(100, 40, seed=16), 300.0]
    for account in twins:
        series(account, values)
    AnomalyMonitor.objects.filter(pk=monitors["service"].pk).delete()
    anomalies_detect(now=NOW)
    dismissed = Anomaly.objects.get(account=twins[0])
    anomaly_status_set(anomaly_id=dismissed.pk, status=AnomalyStatus.FALSE_POSITIVE, user=None)
    # when: both stay high the next day
    for account in twins:
        add_day(account, 300.0, LAST_DAY + timedelta(days=1))
    anomalies_detect(now=NOW)
    # then: the next day is judged against exactly the same expected value and band for both
    dismissed_next = Anomaly.objects.get(account=twins[0], status=AnomalyStatus.OPEN).days
    grown = Anomaly.objects.get(account=twins[1]).days
    assert dismissed_next == [grown[-1]]


# --- lifecycle ---


def test_status_changes_record_who_when_and_why_and_closed_is_final(monitors):
    # given
    account = CloudAccountFactory()
    series(account, [*noisy(100, 40, seed=17), 400.0])
    anomalies_detect(now=NOW)
    anomaly = Anomaly.objects.get(monitor=monitors["account"])
    user = UserFactory(username="alice")
    at = datetime(2024, 9, 20, 9, 0, tzinfo=UTC)
    # when
    anomaly_status_set(anomaly_id=anomaly.pk, status=AnomalyStatus.ACKNOWLEDGED, user=user, note=" on it ", now=at)
    anomaly_status_set(anomaly_id=anomaly.pk, status=AnomalyStatus.RESOLVED, user=user, note="rightsized", now=at)
    # then
    anomaly.refresh_from_db()
    assert (anomaly.status, anomaly.status_note, anomaly.status_changed_by, anomaly.status_changed_at) == (
        AnomalyStatus.RESOLVED,
        "rightsized",
        user,
        at,
    )
    assert [(h["from"], h["to"], h["by"], h["note"]) for h in anomaly.status_history] == [
        ("open", "acknowledged", "alice", "on it"),
        ("acknowledged", "resolved", "alice", "rightsized"),
    ]
    with pytest.raises(AnomalyStatusError, match="closed anomaly does not change again"):
        anomaly_status_set(anomaly_id=anomaly.pk, status=AnomalyStatus.FALSE_POSITIVE, user=user)
    other = Anomaly.objects.get(monitor=monitors["service"])
    with pytest.raises(AnomalyStatusError, match="cannot go from open to open"):
        anomaly_status_set(anomaly_id=other.pk, status=AnomalyStatus.OPEN, user=user)


# --- real cost lines: tags, resources, root causes ---


def import_usages(tmp_path, account, usages, last_day=LAST_DAY, days=50):
    path = focus_file(tmp_path / f"{account.name}-{last_day}.csv", last_day - timedelta(days=days), last_day, usages)
    return focus_file_import(account=account, path=str(path))


def test_root_causes_name_service_region_sub_account_tag_and_resource(tmp_path, monitors):
    # given: web and S3 stay steady; one data-team instance in eu-west-1, sub-account 222, jumps by 300
    CostAllocationTag.objects.create(key="team")
    account = CloudAccountFactory(name="acme")
    usages = [
        Usage("i-web", tags={"team": "web"}, cost=steady(100, seed=1)),
        Usage(
            "i-etl",
            region="eu-west-1",
            sub_account="222",
            tags={"team": "data"},
            cost=with_extra(steady(20, seed=2), {LAST_DAY: 300}),
        ),
        Usage("i-etl-small", region="eu-west-1", sub_account="222", tags={"team": "data"}, cost=steady(5, seed=4)),
        Usage("bucket", service="Amazon S3", cost=steady(50, seed=3)),
    ]
    import_usages(tmp_path, account, usages)
    # when
    anomalies_detect(now=NOW)
    # then
    causes = Anomaly.objects.get(monitor=monitors["account"]).root_causes
    named = [(c["dimension"], c.get("key"), c["value"]) for c in causes]
    assert named[0] == ("service", None, "Amazon Elastic Compute Cloud")
    assert set(named) == {
        ("service", None, "Amazon Elastic Compute Cloud"),
        ("region", None, "eu-west-1"),
        ("sub_account", None, "222"),
        ("tag", "team", "data"),
        ("resource", None, "i-etl"),
    }
    resource = next(c for c in causes if c["dimension"] == "resource")
    assert Decimal("295") < Decimal(resource["impact"]) < Decimal("305")
    assert Decimal("19") < Decimal(resource["expected"]) < Decimal("21")
    assert 0.95 < resource["share"] < 1.05
    assert Anomaly.objects.get(monitor=monitors["service"]).dimension_value == "Amazon Elastic Compute Cloud"
    assert not Anomaly.objects.filter(dimension_value="Amazon S3").exists()


def test_tag_monitor_activates_its_key_backfills_and_finds_the_tag_value(tmp_path, monitors):
    # given: data already imported while "team" was not an allocation tag
    account = CloudAccountFactory(name="acme")
    usages = [
        Usage("i-web", tags={"team": "web"}, cost=steady(100, seed=1)),
        Usage("i-etl", region="eu-west-1", tags={"team": "data"}, cost=with_extra(steady(20, seed=2), {LAST_DAY: 80})),
        Usage("i-untagged", cost=steady(30, seed=5)),
    ]
    import_usages(tmp_path, account, usages)
    assert not CostTagRollup.objects.exists()
    # when: a tag monitor is saved through the service (the admin and the API use it)
    teams = anomaly_monitor_save(monitor=AnomalyMonitor(name="Teams", dimension=AnomalyDimension.TAG, tag_key="team"))
    result = anomalies_detect(now=NOW)
    # then: the key is active, its rollups back-filled, and the data team's series is the anomaly
    assert CostAllocationTag.objects.get(key="team").is_active
    assert set(CostTagRollup.objects.filter(tag_key="team").values_list("tag_value", flat=True)) == {"web", "data", ""}
    assert result.series == 1 + 1 + 3  # the account, its one service, the three values of "team" (one is "")
    anomaly = Anomaly.objects.get(monitor=teams)
    assert (anomaly.dimension_value, anomaly.series_label) == ("data", "team=data")
    assert Decimal("75") < anomaly.impact < Decimal("85")
    # Everything of that team is one instance: each sub-dimension carries the whole increase.
    assert {(c["dimension"], c["value"]) for c in anomaly.root_causes} == {
        ("service", "Amazon Elastic Compute Cloud"),
        ("region", "eu-west-1"),
        ("sub_account", "111111111111"),
        ("resource", "i-etl"),
    }
    assert all(0.95 < c["share"] < 1.05 for c in anomaly.root_causes)
    # +80 on ~150 is +53 % for the account: over the floors too; the web team's series is quiet
    assert not Anomaly.objects.filter(monitor=teams, dimension_value="web").exists()


def test_monitor_save_refuses_inconsistent_dimensions(monitors):
    with pytest.raises(AnomalyMonitorError, match="needs the tag key"):
        anomaly_monitor_save(monitor=AnomalyMonitor(name="x", dimension=AnomalyDimension.TAG))
    with pytest.raises(AnomalyMonitorError, match="only goes with the tag dimension"):
        anomaly_monitor_save(monitor=AnomalyMonitor(name="y", dimension=AnomalyDimension.SERVICE, tag_key="team"))
    assert not AnomalyMonitor.objects.filter(name__in=["x", "y"]).exists()


@override_settings(ANOMALY_MIN_IMPACT=25.0, ANOMALY_MIN_IMPACT_PERCENT=35.0)
def test_new_monitors_take_their_floors_from_the_settings(monitors):
    monitor = anomaly_monitor_save(monitor=AnomalyMonitor(name="defaults"))
    monitor.refresh_from_db()
    assert (monitor.min_impact, monitor.min_impact_percent) == (Decimal("25.00"), Decimal("35.00"))


# --- notifications ---


def test_new_anomalies_are_sent_once_and_failed_channels_retried(webhook_sink, monitors):  # noqa: F811
    # given: the account monitor tells a working webhook and a failing one
    good = NotificationChannelFactory(name="good", kind="webhook", target=webhook_sink.url("/good"))
    bad = NotificationChannelFactory(name="bad", kind="webhook", target=webhook_sink.url("/bad"))
    webhook_sink.fail_paths["/bad"] = 500
    monitors["account"].channels.set([good, bad])
    account = CloudAccountFactory(name="shop")
    series(account, [*noisy(100, 40, seed=18), 400.0])
    # when
    first = anomalies_detect(now=NOW)
    # then: delivered to the good one, the failure recorded
    anomaly = Anomaly.objects.get(monitor=monitors["account"])
    assert (first.notified, first.notification_failures) == (0, 1)
    assert [r.path for r in webhook_sink.received] == ["/good", "/bad"]
    body = webhook_sink.received[0].json
    assert body["event"] == "cost_anomaly" and body["anomaly_id"] == anomaly.pk
    assert body["account"] == "shop" and body["start_day"] == "2024-09-14"
    assert Decimal(body["impact"]) == anomaly.impact
    assert webhook_sink.received[0].headers["X-FinOps-Signature"].startswith("sha256=")
    assert anomaly.notified_at is None and anomaly.notified_channels == [good.pk]
    assert "HTTP 500" in anomaly.notification_errors[0]["error"]
    # when: the receiver is fixed and the task runs again
    del webhook_sink.fail_paths["/bad"]
    second = anomalies_detect(now=NOW)
    # then: only the failed channel is sent it again; nothing is sent a third time
    anomaly.refresh_from_db()
    assert second.notified == 1 and anomaly.notified_at is not None
    assert [r.path for r in webhook_sink.received] == ["/good", "/bad", "/bad"]
    anomalies_detect(now=NOW)
    assert len(webhook_sink.received) == 3


def test_detector_expects_a_charge_that_recurs_on_the_1st_of_the_month():
    # given: 100 a day ± 3 % from 1 July to 1 October 2024, with a 250 charge on every 1st; in the second row the
    # charge on 1 October is 250 more than usual
    days = [date(2024, 7, 1) + timedelta(days=i) for i in range(93)]
    rng = np.random.default_rng(4)
    base = np.array([100 * (1 + rng.uniform(-0.03, 0.03)) + (250 if d.day == 1 else 0) for d in days])
    grown = base.copy()
    grown[-1] += 250
    month_starts = np.array([d.day == 1 for d in days])
    first = detector.history_days(28)
    # when
    result = detector.series_evaluate(
        np.vstack([base, grown])[:, -(first + 1) :],
        first_column=first,
        baseline_days=28,
        score_threshold=6.5,
        min_impact=10.0,
        min_impact_percent=20.0,
        month_starts=month_starts[-(first + 1) :],
    )
    # then: the usual charge is expected (about 350), twice the charge is still an anomaly
    assert 320 < result.expected[0, -1] < 380
    assert list(result.flags[:, -1]) == [False, True]


def test_detector_waits_for_a_new_series_to_have_a_baseline():
    # given: a series that starts on day 40 of 56 and jumps on its 10th day, next to an old one with the same jump
    old = 100 * (1 + np.random.default_rng(6).uniform(-0.03, 0.03, 56))
    new = old.copy()
    new[:40] = 0.0
    old[-7] = new[-7] = 400.0
    # when
    result = detector.series_evaluate(
        np.vstack([old, new]),
        first_column=28,
        baseline_days=28,
        score_threshold=6.5,
        min_impact=10.0,
        min_impact_percent=20.0,
    )
    # then: the new series is not judged against a baseline of zeros (its account's series sees its spend)
    assert result.flags[0, -7]
    assert not result.flags[1].any()


def test_detector_judges_a_1st_of_a_series_that_was_live_at_the_previous_1st():
    # given: a series that started 41 days before 1 December (so on 22 October: live on 1 November, not long
    # before it) and jumps to 5x on 1 December; and one that started on 5 November, after the previous 1st
    days = [date(2024, 8, 25) + timedelta(days=i) for i in range(99)]  # 25 August .. 1 December
    rng = np.random.default_rng(9)
    since_october = np.array([100 * (1 + rng.uniform(-0.03, 0.03)) if d >= date(2024, 10, 22) else 0 for d in days])
    since_november = np.where(np.array(days) >= date(2024, 11, 5), since_october, 0.0)
    since_october[-1] = since_november[-1] = 500.0
    first = detector.history_days(28)
    # when
    result = detector.series_evaluate(
        np.vstack([since_october, since_november])[:, -(first + 1) :],
        first_column=first,
        baseline_days=28,
        score_threshold=6.5,
        min_impact=10.0,
        min_impact_percent=20.0,
        month_starts=np.array([d.day == 1 for d in days])[-(first + 1) :],
    )
    # then: the first is judged (no charge was seen on 1 November), the second's first 1st is not
    assert list(result.flags[:, -1]) == [True, False]
