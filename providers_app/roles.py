"""The role groups: which Django model permissions each team role (and the platform admin) holds.

A user's effective right on an object is the model permission (from these groups, kept in line with their
memberships by providers_app.services.teams) AND the team scope with a sufficient role (providers_app.selectors).
The groups are (re)built by a data migration and after every `migrate` (post_migrate), so a new model's
permissions join them without a hand-written migration.
"""

from .models import Role

PLATFORM_ADMIN_PERMISSION = "providers_app.platform_admin"

GROUP_NAMES = {
    Role.VIEWER: "Viewers",
    Role.OPERATOR: "Operators",
    Role.ACCOUNT_ADMIN: "Account admins",
}
PLATFORM_ADMINS_GROUP = "Platform admins"

# Models every team role may read (view_*): the accounts and everything derived from them.
TEAM_MODELS = {
    "providers_app": ("team", "membership", "cloudaccount", "resource", "exportstate"),
    "costs_app": (
        "costlineitem",
        "costdailyrollup",
        "costtagrollup",
        "budget",
        "budgetalert",
        "alertdelivery",
        "notificationchannel",
        "anomalymonitor",
        "anomaly",
        "recommendation",
    ),
    "tasks_app": ("taskrun", "deadletter"),
}
OPERATOR_EXTRA = ("tasks_app.trigger_tasks", "costs_app.change_recommendation", "costs_app.change_anomaly")
ACCOUNT_ADMIN_EXTRA = tuple(
    f"{app}.{action}_{model}"
    for app, model in (
        ("providers_app", "cloudaccount"),
        ("providers_app", "credential"),
        ("costs_app", "budget"),
        ("costs_app", "notificationchannel"),
        ("costs_app", "anomalymonitor"),
    )
    for action in ("add", "change", "delete", "view")
) + ("providers_app.delete_resource",)
# Platform admins: every permission of these apps (and platform_admin itself); user management stays with superusers.
PLATFORM_APPS = ("providers_app", "costs_app", "tasks_app", "django_celery_beat", "django_celery_results")


def role_permissions() -> dict[str, set[str]]:
    """Group name -> "app_label.codename" of every permission it holds (platform admins: see PLATFORM_APPS)."""
    viewer = {f"{app}.view_{model}" for app, models in TEAM_MODELS.items() for model in models}
    operator = viewer | set(OPERATOR_EXTRA)
    account_admin = operator | set(ACCOUNT_ADMIN_EXTRA)
    return {
        GROUP_NAMES[Role.VIEWER]: viewer,
        GROUP_NAMES[Role.OPERATOR]: operator,
        GROUP_NAMES[Role.ACCOUNT_ADMIN]: account_admin,
    }


def role_groups_sync(group_model, permission_model) -> None:
    """Create the role groups and set their permissions (idempotent; models may be historical ones)."""
    for name, wanted in role_permissions().items():
        group, _ = group_model.objects.get_or_create(name=name)
        perms = [
            p
            for p in permission_model.objects.filter(content_type__app_label__in=TEAM_MODELS).select_related(
                "content_type"
            )
            if f"{p.content_type.app_label}.{p.codename}" in wanted
        ]
        group.permissions.set(perms)
    platform, _ = group_model.objects.get_or_create(name=PLATFORM_ADMINS_GROUP)
    platform.permissions.set(permission_model.objects.filter(content_type__app_label__in=PLATFORM_APPS))
