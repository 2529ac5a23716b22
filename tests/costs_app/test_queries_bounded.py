"""Every reader of the cost lines bounds the partition key (billing_period_start), so on the partitioned store it
reads the periods it needs, not years of them; budgets read only the rollups. Each scenario is an existing
behaviour test of its module, re-run here with its SQL captured (so the scenario really reaches the query). The
cost line list's bounds are asserted in test_cost_line_admin.py."""

import re

from django.db import connection
from django.test.utils import CaptureQueriesContext

from costs_app.models import AnomalyMonitor, CostLineItem
from tests.costs_app import test_anomalies as anomalies_tests
from tests.costs_app import test_budgets as budgets_tests
from tests.costs_app import test_export as export_tests
from tests.costs_app import test_optimization as optimization_tests
from tests.costs_app import test_recommendations as recommendations_tests
from tests.factories import CloudAccountFactory

LINES = CostLineItem._meta.db_table
READS_LINES = re.compile(rf'\b(FROM|JOIN)\s+"?{LINES}"?\b', re.IGNORECASE)
PERIOD_BOUND = re.compile(r'billing_period_start"?\s*(>=|<|=)')


def line_reads(queries: CaptureQueriesContext) -> list[str]:
    """The reads of cost lines (not the scenario's own inserts and COPY loads; an export's COPY (SELECT ...) is one)."""
    sqls = [
        q["sql"] if isinstance(q["sql"], str) else q["sql"].as_string(connection.connection)
        for q in queries.captured_queries
    ]
    writes = re.compile(r"^\s*(INSERT|DELETE|UPDATE|COPY\s+\w)", re.IGNORECASE)
    return [sql for sql in sqls if READS_LINES.search(sql) and not writes.match(sql)]


def assert_bounded(queries: CaptureQueriesContext) -> None:
    reads = line_reads(queries)
    assert reads, "the scenario read no cost lines: it no longer tests the bound"
    unbounded = [sql for sql in reads if not PERIOD_BOUND.search(sql)]
    assert not unbounded, unbounded


def test_optimisation_rules_read_cost_lines_from_a_billing_period_on(db, settings, tmp_path):
    scenarios = {  # untagged spend first: it judges every account there is
        "untagged": lambda path: optimization_tests.test_untagged_spend_above_the_share_per_account(settings, path),
        "stopped": lambda path: optimization_tests.test_stopped_instances_with_storage_still_billed(
            CloudAccountFactory(provider="aws"), path
        ),
        "volumes": lambda path: optimization_tests.test_unattached_volumes(
            CloudAccountFactory(provider="aws"), settings, path
        ),
    }
    for name, scenario in scenarios.items():
        (tmp_path / name).mkdir()
        with CaptureQueriesContext(connection) as queries:
            scenario(tmp_path / name)
        assert_bounded(queries)


def test_realised_savings_read_cost_lines_from_a_billing_period_on(db, settings, tmp_path):
    with CaptureQueriesContext(connection) as queries:
        recommendations_tests.test_realised_savings_compare_the_cost_before_and_after_done(
            CloudAccountFactory(provider="aws"), settings, tmp_path
        )
    assert_bounded(queries)


def test_anomaly_root_causes_read_cost_lines_from_a_billing_period_on(db, tmp_path):
    monitors = {
        "account": AnomalyMonitor.objects.get_or_create(name="Accounts", defaults={"dimension": "account"})[0],
        "service": AnomalyMonitor.objects.get_or_create(name="Services per account", defaults={"dimension": "service"})[
            0
        ],
    }
    with CaptureQueriesContext(connection) as queries:
        anomalies_tests.test_root_causes_name_service_region_sub_account_tag_and_resource(tmp_path, monitors)
    assert_bounded(queries)


def test_an_export_of_periods_reads_only_those_periods(db, tmp_path):
    with CaptureQueriesContext(connection) as queries:
        export_tests.test_the_period_range_is_inclusive(tmp_path)
    assert_bounded(queries)


def test_budgets_read_no_cost_lines(db):
    with CaptureQueriesContext(connection) as queries:
        budgets_tests.test_thresholds_alert_once_each_as_spend_grows()
    assert not line_reads(queries)
    assert any("costs_app_costdailyrollup" in q["sql"] for q in queries.captured_queries)
