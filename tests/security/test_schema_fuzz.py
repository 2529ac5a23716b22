"""The OpenAPI schema fuzzed with schemathesis against a real running server, signed in as each role.

Every operation of /api/schema/ gets requests that follow the schema and as many that break it (hypothesis deadline
off, derandomized so a failure reproduces); each answer must not be a 5xx, must be a status code the schema
documents, and must match the schema's body and content type for it. How many: FUZZ_MAX_EXAMPLES (default 25) each
as the widest role (superuser: every operation reaches its handler) and the narrowest (no_team: every refusal
path); FUZZ_ROLE_EXAMPLES (default 10) each as the roles between, whose answers differ from those two by scope
and permission rather than by input (the CI time budget: 6 roles x 25 took ~300 s of a ~30 min run). Set both
to 25 or more for a deeper run.
A failing example is printed as a curl command. To add a role (e.g. from the tenancy work), add it to ROLES.
"""

import os
import time
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import requests
import schemathesis
from django.contrib.auth.models import Permission
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from providers_app.models import Role as TeamRole
from providers_app.roles import PLATFORM_ADMINS_GROUP
from providers_app.services.teams import team_default, team_member_set
from tasks_app.models import DeadLetter, RunState, TaskRun, TriggerKind
from tests.celery_procs import flush_broker
from tests.factories import BudgetFactory, CloudAccountFactory, UserFactory
from tests.security.live import LiveServer

PASSWORD = "pass-word-123"  # UserFactory's
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
ROLE_EXAMPLES = int(os.environ.get("FUZZ_ROLE_EXAMPLES", "10"))
FULL_ROLES = ("superuser", "no_team")  # fuzzed with MAX_EXAMPLES; the others with ROLE_EXAMPLES
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Role:
    """A kind of signed-in user: Django flags, permissions (app_label.codename), groups, and a role in the team
    "Default" (where the seeded rows' account is)."""

    is_superuser: bool = False
    is_staff: bool = False
    permissions: tuple[str, ...] = ()
    groups: tuple[str, ...] = field(default=())
    team_role: str | None = None


ROLES = {
    "superuser": Role(is_superuser=True, is_staff=True),
    "platform_admin": Role(groups=(PLATFORM_ADMINS_GROUP,)),
    "account_admin": Role(team_role=TeamRole.ACCOUNT_ADMIN),
    "operator": Role(team_role=TeamRole.OPERATOR),
    "viewer": Role(team_role=TeamRole.VIEWER),
    "no_team": Role(),  # signed in, no permission and no team: every list empty, every id 404
}


def checks_for(operation) -> list:
    """Every check; a documented 503 (health: no worker or beat in this test) is an answer, not a server error."""
    if "503" in operation.definition.raw.get("responses", {}):
        return [check for check in CHECKS if check is not not_a_server_error]
    return CHECKS


def make_user(name: str, role: Role):
    from django.contrib.auth.models import Group

    user = UserFactory(username=f"fuzz-{name}", is_superuser=role.is_superuser, is_staff=role.is_staff)
    for label in role.permissions:
        app_label, codename = label.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    for group in role.groups:
        user.groups.add(Group.objects.get(name=group))
    if role.team_role:
        team_member_set(team=team_default(), user=user, role=role.team_role)
    return user


def seed() -> None:
    """A few rows of each kind, so list and detail operations have something to return."""
    account = CloudAccountFactory(name="fuzz-acme", settings={"path": "/tmp"})
    BudgetFactory(account=account, amount=Decimal("100"))
    run = TaskRun.objects.create(
        task_name="sync_provider_cost_data",
        celery_task_id="fuzz-run-1",
        queue="cost_sync",
        kwargs={"account_id": account.id},
        state=RunState.FAILURE,
        triggered_by=TriggerKind.API,
        error="boom",
    )
    DeadLetter.objects.create(run=run, task_name=run.task_name, kwargs=run.kwargs, queue=run.queue, error="boom")


def has_inputs(operation) -> bool:
    """Parameters (the security schemes' Authorization header and session cookie aside) or a body."""
    parameters = [p for p in operation.iter_parameters() if p.name not in ("Authorization", "sessionid")]
    return bool(parameters) or bool(operation.body)


def fuzz(operation, call, mode: GenerationMode | None, examples: int) -> None:
    """`examples` generated requests to `operation`, each answer validated; raises on the first failure.

    POSITIVE requests follow the schema; NEGATIVE ones break it (wrong types, out-of-range numbers, missing
    fields): those must be refused with a documented 4xx, never a 5xx. None: an operation without inputs (health,
    active tasks, worker stats: ~1 s of broker inspection each) has one possible request, sent once."""
    checks = checks_for(operation)

    @given(case=operation.as_strategy(generation_mode=mode or GenerationMode.POSITIVE))
    @hypothesis_settings(
        max_examples=examples if mode else 1,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.validate_response(call(case), checks=checks)

    run()


@pytest.mark.parametrize("role_name", sorted(ROLES))
def test_every_operation_answers_within_its_schema(role_name, tmp_path):
    # given: a real server with the rates opened up (the fuzzer is one user sending hundreds of requests)
    flush_broker()
    seed()
    make_user(role_name, ROLES[role_name])
    examples = MAX_EXAMPLES if role_name in FULL_ROLES else ROLE_EXAMPLES
    server = LiveServer(
        tmp_path,
        THROTTLE_LOGIN_USER_RATE="",
        THROTTLE_LOGIN_IP_RATE="",
        THROTTLE_REFRESH_IP_RATE="",
        THROTTLE_TRIGGER_RATE="",
    )
    failures: list[str] = []
    durations: dict[str, float] = {}
    try:
        headers = {"Authorization": f"Bearer {server.token(f'fuzz-{role_name}', PASSWORD)}"}
        raw = requests.get(f"{server.url}/api/schema/", params={"format": "json"}, headers=headers, timeout=30)
        assert raw.status_code == 200, raw.text[:500]
        schema = schemathesis.openapi.from_dict(raw.json())
        session = requests.Session()
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 20
        # when
        for operation in operations:
            started = time.monotonic()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs(operation) else [None]:
                try:
                    fuzz(
                        operation,
                        lambda case: case.call(base_url=server.url, session=session, headers=headers, timeout=60),
                        mode,
                        examples,
                    )
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # every operation is tried; the failures are reported together
                    failures.append(f"--- {operation.label} ({mode and mode.value})\n{str(exc)[:3000]}")
            durations[operation.label] = time.monotonic() - started
    finally:
        server.stop()
        flush_broker()
    # then
    slowest = sorted(durations.items(), key=lambda item: -item[1])[:5]
    print(
        f"{role_name}: {len(durations)} operations x {examples} examples per mode; slowest "
        + ", ".join(f"{k} {v:.1f}s" for k, v in slowest)
    )
    assert not failures, f"{len(failures)} operation(s) failed for {role_name}:\n" + "\n".join(failures)
