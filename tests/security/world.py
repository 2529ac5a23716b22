"""Two teams, A and B, each with an account and every kind of row derived from it, organisation-wide rows beside
them, and users of every role in team A: the ground the tenancy tests stand on."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from django.contrib.auth.models import Group, Permission

from costs_app.models import (
    AlertDelivery,
    Anomaly,
    AnomalyMonitor,
    BudgetAlert,
    CostDailyRollup,
    CostTagRollup,
    Recommendation,
)
from providers_app.models import Credential, Role
from providers_app.roles import PLATFORM_ADMINS_GROUP
from providers_app.services.teams import team_member_set
from tasks_app import ledger
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tests.factories import (
    BudgetFactory,
    CloudAccountFactory,
    CostLineItemFactory,
    NotificationChannelFactory,
    ResourceFactory,
    TeamFactory,
    UserFactory,
)

TRACEBACK = 'Traceback (most recent call last):\n  File "/opt/finops/.venv/lib/python3.11/site-packages/x.py"'


@dataclass
class Side:
    """One team's account and the rows derived from it."""

    name: str
    team: object = None
    account: object = None
    rows: dict = field(default_factory=dict)  # model label -> instance


def _run(account, *, state: str, task_name: str = "sync_provider_cost_data") -> TaskRun:
    run = ledger.record_enqueue(
        task_name=task_name,
        celery_task_id=f"cel-{task_name}-{account.name if account else 'org'}-{state}-{TaskRun.objects.count()}",
        queue="cost_sync",
        args=[],
        kwargs={"account_id": account.id} if account else {},
        triggered_by=TriggerKind.SCHEDULE,
    )
    if state != RunState.QUEUED:
        TaskRun.objects.filter(id=run.id).update(
            state=state,
            worker="worker-host-7/4242",
            error="PermanentError: bucket not found" if state == RunState.FAILURE else "",
            error_type="PermanentError" if state == RunState.FAILURE else "",
            error_traceback=TRACEBACK if state == RunState.FAILURE else "",
        )
        run.refresh_from_db()
    return run


def build_side(name: str) -> Side:
    side = Side(name=name, team=TeamFactory(name=f"team-{name}"))
    account = CloudAccountFactory(name=f"acct-{name}", team=side.team)
    side.account = account
    credential = Credential(account=account, kind="access_key")
    credential.set_secret({"key": f"secret-{name}"})
    credential.save()
    resource = ResourceFactory(account=account, resource_id=f"i-{name}", name=f"vm-{name}")
    line = CostLineItemFactory(account=account, resource_id=f"i-{name}")
    day = date(2024, 9, 15)
    period = datetime(2024, 9, 1, tzinfo=UTC)
    rollup = CostDailyRollup.objects.create(
        account=account, day=day, billing_period_start=period, billing_currency="USD"
    )
    tag_rollup = CostTagRollup.objects.create(
        account=account, day=day, tag_key="team", tag_value=name, billing_currency="USD"
    )
    channel = NotificationChannelFactory(name=f"channel-{name}", team=side.team)
    budget = BudgetFactory(name=f"budget-{name}", account=account)
    budget.channels.set([channel])
    alert = BudgetAlert.objects.create(
        budget=budget, period_start=date(2024, 9, 1), threshold=Decimal(50), spend=Decimal(600), percentage=60
    )
    delivery = AlertDelivery.objects.create(alert=alert, channel=channel)
    monitor = AnomalyMonitor.objects.create(name=f"monitor-{name}", account=account)
    anomaly = Anomaly.objects.create(
        monitor=monitor,
        account=account,
        currency="USD",
        start_day=day,
        end_day=day,
        expected=Decimal(10),
        actual=Decimal(100),
        impact=Decimal(90),
        score=5.0,
    )
    recommendation = Recommendation.objects.create(
        account=account,
        rule="idle_vm",
        provider_resource_id=f"i-{name}",
        resource=resource,
        title=f"stop vm-{name}",
        estimated_monthly_saving=Decimal(10),
        currency="USD",
    )
    failed = _run(account, state=RunState.FAILURE)
    letter = DeadLetter.objects.create(
        run=failed, task_name=failed.task_name, kwargs=failed.kwargs, queue=failed.queue, error=failed.error
    )
    queued = _run(account, state=RunState.QUEUED, task_name="discover_provider_resources")
    side.rows = {
        "providers_app.cloudaccount": account,
        "providers_app.resource": resource,
        "providers_app.team": side.team,
        "costs_app.costlineitem": line,
        "costs_app.costdailyrollup": rollup,
        "costs_app.costtagrollup": tag_rollup,
        "costs_app.notificationchannel": channel,
        "costs_app.budget": budget,
        "costs_app.budgetalert": alert,
        "costs_app.alertdelivery": delivery,
        "costs_app.anomalymonitor": monitor,
        "costs_app.anomaly": anomaly,
        "costs_app.recommendation": recommendation,
        "tasks_app.taskrun": failed,
        "tasks_app.deadletter": letter,
        "queued_run": queued,
    }
    return side


@dataclass
class World:
    a: Side
    b: Side
    org: dict  # organisation-wide rows: no account / no team
    users: dict  # role name -> user


def build_world() -> World:
    a, b = build_side("A"), build_side("B")
    org_run = _run(None, state=RunState.FAILURE)
    org = {
        "tasks_app.taskrun": org_run,
        "tasks_app.deadletter": DeadLetter.objects.create(
            run=org_run, task_name=org_run.task_name, queue=org_run.queue, error=org_run.error
        ),
        "costs_app.budget": BudgetFactory(name="budget-org"),
        "costs_app.notificationchannel": NotificationChannelFactory(name="channel-org", team=None),
        "costs_app.anomalymonitor": AnomalyMonitor.objects.create(name="monitor-org"),
    }
    users = {}
    for role in (Role.VIEWER, Role.OPERATOR, Role.ACCOUNT_ADMIN):
        user = UserFactory(username=f"a-{role.value}", is_staff=True)
        team_member_set(team=a.team, user=user, role=role)
        users[role.value] = user
    platform = UserFactory(username="platform", is_staff=True)
    platform.groups.add(Group.objects.get(name=PLATFORM_ADMINS_GROUP))
    users["platform_admin"] = platform
    users["nobody"] = UserFactory(username="nobody", is_staff=True)  # signed in, no permission, no team
    # Model permissions without a team: everything a viewer could read, but no membership at all.
    unscoped = UserFactory(username="perms-no-team", is_staff=True)
    unscoped.user_permissions.add(*Group.objects.get(name="Account admins").permissions.all())
    unscoped.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
    users["perms_no_team"] = unscoped
    return World(a=a, b=b, org=org, users=users)
