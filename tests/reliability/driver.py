"""The drills' hands inside Django: a long-lived process reading JSON-line commands on stdin.

One process for a whole drill, like a web server: its database connections come from the pool and must
survive PostgreSQL restarts (the `http` command goes through the real URL conf and middleware; Django's test
client keeps the connection across requests, so every command hands it back to the pool afterwards).
"""

import json
import sys
import traceback


def main() -> None:
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.models import Count, Sum
    from django.test import Client
    from django.utils import timezone

    from costs_app.models import CostLineItem
    from providers_app.models import CloudAccount
    from tasks_app.models import DeadLetter, TaskRun, TriggerKind
    from tasks_app.services.health import system_health
    from tasks_app.services.runs import runs_reconcile, task_enqueue

    client: Client | None = None

    def http(path: str) -> int:
        nonlocal client
        if client is None:
            user, _ = get_user_model().objects.get_or_create(username="drill", defaults={"is_superuser": True})
            client = Client()
            client.force_login(user)
        return client.get(path).status_code

    def enqueue(task: str, kwargs: dict | None = None, count: int = 1) -> list[str]:
        return [
            task_enqueue(task_name=task, kwargs=kwargs or {}, triggered_by=TriggerKind.COMMAND).celery_task_id
            for _ in range(count)
        ]

    def runs(task: str | None = None) -> list[dict]:
        rows = TaskRun.objects.all()
        if task:
            rows = rows.filter(task_name=task)
        fields = (
            "celery_task_id",
            "task_name",
            "state",
            "kwargs",
            "error",
            "error_type",
            "retries",
            "redeliveries",
            "worker",
            "triggered_by",
            "trigger_detail",
            "enqueued_at",
            "started_at",
            "finished_at",
        )
        return [
            {k: (v.timestamp() if hasattr(v, "timestamp") else v) for k, v in row.items()}
            for row in rows.values(*fields)
        ]

    def account(path: str, name: str) -> int:
        return CloudAccount.objects.create(
            provider="focus", name=name, external_id=name, settings={"path": path}, is_active=True
        ).id

    def cost(account_id: int) -> dict:
        lines = CostLineItem.objects.filter(account_id=account_id)
        totals = lines.aggregate(rows=Count("id"), billed=Sum("billed_cost"))
        return {"rows": totals["rows"], "billed": str(totals["billed"])}

    def by_period(account_id: int) -> dict:
        rows = (
            CostLineItem.objects.filter(account_id=account_id)
            .values("billing_period_start")
            .annotate(rows=Count("id"), billed=Sum("billed_cost"))
        )
        return {str(r["billing_period_start"]): [r["rows"], str(r["billed"])] for r in rows}

    def operator(username: str, password: str, account_id: int) -> int:
        """A user who may trigger tasks for the account (an operator of its team, the default team if it had none)."""
        from django.contrib.auth.models import Permission

        from providers_app.models import Role
        from providers_app.services.teams import team_default, team_member_set

        CloudAccount.objects.filter(id=account_id, team=None).update(team=team_default())
        user = get_user_model().objects.create_user(username=username, password=password)
        team_member_set(team=CloudAccount.objects.get(id=account_id).team, user=user, role=Role.OPERATOR)
        user.user_permissions.add(Permission.objects.get(codename="trigger_tasks"))
        return user.id

    def schedule(name: str, task: str, every: int) -> int:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
        return PeriodicTask.objects.create(name=name, task=task, interval=interval, enabled=True).id

    commands = {
        "schedule": schedule,
        "operator": operator,
        "http": http,
        "enqueue": enqueue,
        "runs": runs,
        "account": account,
        "cost": cost,
        "by_period": by_period,
        "health": lambda: system_health(worker_timeout=1.0),
        "reconcile": lambda: runs_reconcile(now=timezone.now()).as_dict(),
        "dead_letters": lambda: list(DeadLetter.objects.values("task_name", "error", "run__celery_task_id")),
    }
    # Each command is one "request": its connection goes back to the pool, as a web request's does, and the next
    # one takes a connection from the pool (checked there: CONN_HEALTH_CHECKS).
    serve(commands, after=connection.close)


def serve(commands: dict, *, after) -> None:
    """Answer JSON lines `{"command": name, **kwargs}` on stdin with `{"value": ...}` or `{"error": ...}`;
    `after` runs once each command is done (its connections go back to their pools)."""
    for line in sys.stdin:
        request = json.loads(line)
        name = request.pop("command")
        try:
            reply = {"value": commands[name](**request)}
        except Exception as exc:
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            after()
        sys.stdout.write(json.dumps(reply, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
