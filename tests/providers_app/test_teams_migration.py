"""Migrations: existing accounts go to the team "Default"; old runs' tracebacks move out of the message."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("providers_app", "0003_teams_and_memberships"), ("tasks_app", "0005_optim_retention_policy_defaults")]
AFTER = [("providers_app", "0004_default_team_and_role_groups"), ("tasks_app", "0007_split_error_tracebacks")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_existing_accounts_join_the_default_team_and_tracebacks_leave_the_message():
    try:
        # given: an account from before teams, and a run that failed with the traceback inside `error`
        old = migrate(BEFORE)
        old.get_model("providers_app", "CloudAccount").objects.create(provider="focus", name="prod", settings={})
        old.get_model("tasks_app", "TaskRun").objects.create(
            task_name="sync_provider_cost_data",
            celery_task_id="old-1",
            state="FAILURE",
            error="KeyError: 'x'\nTraceback (most recent call last):\n  File \"/opt/app/x.py\", line 1",
        )
        # when
        new = migrate(AFTER)
        # then
        account = new.get_model("providers_app", "CloudAccount").objects.get(name="prod")
        assert account.team.name == "Default"
        run = new.get_model("tasks_app", "TaskRun").objects.get(celery_task_id="old-1")
        assert run.error == "KeyError: 'x'"
        assert run.error_traceback == 'Traceback (most recent call last):\n  File "/opt/app/x.py", line 1'
        groups = new.get_model("auth", "Group").objects
        viewers = set(groups.get(name="Viewers").permissions.values_list("codename", flat=True))
        assert {"view_cloudaccount", "view_taskrun", "view_budget"} <= viewers and "trigger_tasks" not in viewers
        assert "trigger_tasks" in set(groups.get(name="Operators").permissions.values_list("codename", flat=True))
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
