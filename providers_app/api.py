"""Cloud accounts over the REST API: list, read, create, update; credentials go in, never come out."""

import json

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated

from finops.api_permissions import ModelPermissions

from .models import CloudAccount, Credential, Provider, Role, Team
from .selectors import is_platform_admin, teams_for, visible_to
from .services.accounts import account_create, account_egress_validate, account_update


class TeamField(serializers.PrimaryKeyRelatedField):
    """A team where the requesting user is an account admin (any team for a platform admin)."""

    def get_queryset(self):
        request = self.context.get("request")
        return teams_for(getattr(request, "user", None), role=Role.ACCOUNT_ADMIN)


class CloudAccountSerializer(serializers.ModelSerializer):
    credentials = serializers.JSONField(
        write_only=True,
        required=False,
        help_text="The secret, a JSON object or a string. Stored encrypted; never returned (see credential_hint).",
    )
    credential_kind = serializers.CharField(
        write_only=True, required=False, max_length=50, help_text="e.g. access_key, assume_role, service_principal"
    )
    has_credentials = serializers.SerializerMethodField()
    credential_hint = serializers.SerializerMethodField()
    team = TeamField(
        required=False,
        help_text="The owning team, one where you are an account admin. May be omitted on creation when you are "
        'the account admin of a single team (platform admins: the team "Default").',
    )

    class Meta:
        model = CloudAccount
        fields = [
            "id",
            "team",
            "provider",
            "name",
            "external_id",
            "is_active",
            "settings",
            "credentials",
            "credential_kind",
            "has_credentials",
            "credential_hint",
            "created_at",
            "updated_at",
            "last_synced_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at", "last_synced_at"]

    def _credential(self, account: CloudAccount) -> Credential | None:
        return getattr(account, "credential", None) if account.pk else None

    def get_has_credentials(self, account: CloudAccount) -> bool:
        return self._credential(account) is not None

    def get_credential_hint(self, account: CloudAccount) -> str:
        credential = self._credential(account)
        return credential.hint if credential is not None else ""

    def validate_credentials(self, value):
        if isinstance(value, str):
            if not value.strip():
                raise serializers.ValidationError("An empty secret is not a credential.")
            return value
        if isinstance(value, dict) and value:
            json.dumps(value)  # already JSON by construction; kept to fail loudly on odd types
            return value
        raise serializers.ValidationError("Give a non-empty JSON object or string.")

    def validate_settings(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Connector settings are a JSON object.")
        return value

    def validate_provider(self, value):
        if self.instance is not None and value != self.instance.provider:
            raise serializers.ValidationError("The provider of an existing account cannot change.")
        return value

    def validate(self, attrs):
        # The egress policy and the "credential again" rule, before anything is written (a 400 naming the
        # setting); the services check the same again for callers that are not this serializer.
        provider = self.instance.provider if self.instance is not None else attrs.get("provider", "")
        if provider == Provider.FOCUS and "settings" in attrs:
            # The files must lie under FOCUS_IMPORT_ROOT (no `..`, no symlink out of it).
            from .connectors.focus import focus_settings_problem

            problem = focus_settings_problem(attrs["settings"])
            if problem:
                raise serializers.ValidationError({"settings": [problem]})
        account_egress_validate(
            provider=provider,
            settings=attrs.get("settings"),
            credentials=attrs.get("credentials"),
            account=self.instance,
        )
        if self.instance is None and attrs.get("team") is None:
            attrs["team"] = self._only_team()
        return attrs

    def _only_team(self) -> Team:
        user = getattr(self.context.get("request"), "user", None)
        if is_platform_admin(user):
            from .services.teams import team_default

            return team_default()
        teams = list(teams_for(user, role=Role.ACCOUNT_ADMIN)[:2])
        if len(teams) != 1:
            raise serializers.ValidationError(
                {
                    "team": "Name the owning team: one where you are an account admin."
                    if teams
                    else "You are the account admin of no team: an account must belong to one."
                }
            )
        return teams[0]

    def create(self, validated_data):
        return account_create(**validated_data)

    def update(self, instance, validated_data):
        return account_update(account=instance, **validated_data)


@extend_schema_view(
    list=extend_schema(summary="List cloud accounts"),
    retrieve=extend_schema(summary="One cloud account"),
    create=extend_schema(
        summary="Add a cloud account",
        responses={201: CloudAccountSerializer, 400: OpenApiResponse(description="Invalid input.")},
    ),
    partial_update=extend_schema(
        summary="Change a cloud account (and/or replace its credential)",
        responses={200: CloudAccountSerializer, 400: OpenApiResponse(description="Invalid input.")},
    ),
)
@extend_schema(tags=["accounts"])
class CloudAccountViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Reading needs providers_app.view_cloudaccount and shows your teams' accounts; adding or changing needs
    providers_app.add/change_cloudaccount and the account admin role in the account's team. Another team's
    account is not found (404)."""

    serializer_class = CloudAccountSerializer
    queryset = CloudAccount.objects.none()  # for the schema and the permission class; get_queryset() is the real one
    permission_classes = [IsAuthenticated, ModelPermissions]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        accounts = CloudAccount.objects.select_related("credential").order_by("name")
        if self.action == "partial_update":
            return visible_to(
                accounts, self.request.user, account_path="", role=Role.ACCOUNT_ADMIN, permission="change"
            )
        if self.action == "test_connection":
            return visible_to(accounts, self.request.user, account_path="", role=Role.OPERATOR, permission="view")
        return visible_to(accounts, self.request.user, account_path="")

    @extend_schema(
        summary="Test the account's connection (credentials, export location, inventory access)",
        request=None,
        responses={
            202: OpenApiResponse(
                description="Enqueued check_provider_connection; its result (GET status_url) has ok, summary and "
                "each check, naming the bad key, missing permission, bucket or export."
            ),
            403: OpenApiResponse(description="Lacks the tasks_app.trigger_tasks permission."),
            404: OpenApiResponse(description="No such account among those you operate (view and operator role)."),
        },
    )
    @action(detail=True, methods=["post"], url_path="test-connection")
    def test_connection(self, request, pk=None):
        from tasks_app.api.views import accepted_response
        from tasks_app.models import TriggerKind
        from tasks_app.services.runs import task_enqueue

        account = self.get_object()
        run = task_enqueue(
            task_name="check_provider_connection",
            kwargs={"account_id": account.pk},
            triggered_by=TriggerKind.API,
            user=request.user,
            correlation_id=getattr(request, "correlation_id", None),
        )
        return accepted_response(request, run)

    def get_permissions(self):
        if self.action == "test_connection":
            from tasks_app.api.permissions import CanTriggerTasks

            return [IsAuthenticated(), CanTriggerTasks()]
        return super().get_permissions()

    def get_throttles(self):
        if self.action == "test_connection":
            from finops.limits import TriggerUserThrottle

            return [TriggerUserThrottle()]
        return super().get_throttles()
