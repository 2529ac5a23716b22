"""A paginator for admin lists over tables too large to COUNT: exact up to a bound, estimated past it.

A changelist counts its filtered rows on every page. On tens of millions of cost lines that COUNT reads the
whole selection (a month of a large account is millions of rows), so past `exact_up_to` rows the count is the
planner's estimate (EXPLAIN of the list's own query, from pg_class/pg_statistic; no rows read) and the page says
"about N". Only the first `browsable` rows can be paged through: deeper pages are an OFFSET over millions of
rows; a filter or a search narrows the list instead.
"""

from __future__ import annotations

import json
import math

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property


def planner_row_estimate(queryset) -> int:
    """The planner's estimate of the rows `queryset` returns (EXPLAIN, nothing executed)."""
    sql, params = queryset.query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    exact_up_to = 10_000
    browsable = 10_000

    @cached_property
    def count(self) -> int:
        # A bounded COUNT: it stops reading after exact_up_to + 1 rows. The list's own order is kept, so those rows
        # are the ones the page reads anyway (an index scan), not the first matches of a sequential scan that may
        # have to pass millions of other rows to find them.
        exact = self.object_list[: self.exact_up_to + 1].count()
        if exact <= self.exact_up_to:
            return exact
        self.estimated = True
        return max(planner_row_estimate(self.object_list.order_by()), exact)

    estimated = False

    @property
    def count_display(self) -> str:
        return f"{self.count:,}"

    @property
    def browsable_display(self) -> str:
        return f"{self.browsable:,}"

    @cached_property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        hits = max(1, min(self.count, self.browsable) - self.orphans)
        return math.ceil(hits / self.per_page)
