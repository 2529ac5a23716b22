"""Template tags for the admin index: the "Task system" box (active runs, recent failures, dead letters)."""

from datetime import timedelta
from urllib.parse import urlencode

from django import template
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import ACTIVE_STATES, RunState

register = template.Library()


@register.simple_tag
def task_system_summary(user) -> dict:
    """Three small indexed queries; the admin index must stay fast however large the ledger grows.

    Counted over the runs and dead letters the signed-in user may see (tasks_app.selectors: their teams' accounts;
    organisation-wide runs for platform admins only), the same rows the links lead to."""
    from tasks_app.selectors import dead_letters_for, runs_for

    runs = runs_for(user, permission=None)
    by_state = dict(runs.filter(state__in=ACTIVE_STATES).values_list("state").annotate(n=Count("id")).order_by())
    since = timezone.now() - timedelta(hours=24)
    return {
        "queued": by_state.get(RunState.QUEUED, 0),
        "started": by_state.get(RunState.STARTED, 0),
        "retrying": by_state.get(RunState.RETRY, 0),
        # A failure whose dead letter was replayed successfully is dealt with: it no longer counts (nor is red).
        "failed_24h": runs.filter(state=RunState.FAILURE, enqueued_at__gte=since)
        .exclude(dead_letter__replay_run__state=RunState.SUCCESS)
        .count(),
        "failed_24h_query": urlencode({"state__exact": RunState.FAILURE, "enqueued_at__gte": since.isoformat()}),
        "dead_letters": dead_letters_for(user, permission=None).filter(replayed_at__isnull=True).count(),
        "since": since,
    }
