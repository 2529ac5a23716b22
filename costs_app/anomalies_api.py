"""Anomalies and anomaly monitors over the REST API: read when signed in; writes need the model permissions."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from finops.api_permissions import ModelPermissions
from providers_app.models import Role
from providers_app.selectors import accounts_for, is_platform_admin

from .models import Anomaly, AnomalyDimension, AnomalyMonitor, AnomalyStatus
from .selectors import anomalies_for, anomaly_monitors_for, channels_for
from .services.anomalies import AnomalyMonitorError, AnomalyStatusError, anomaly_monitor_save, anomaly_status_set

CHANGE_ANOMALY = "costs_app.change_anomaly"


class CanChangeAnomalies(BasePermission):
    message = "You need the 'Can change anomaly' permission (costs_app.change_anomaly)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(CHANGE_ANOMALY))


# --- monitors ----------------------------------------------------------------------------------------------


def _user(serializer):
    return getattr(serializer.context.get("request"), "user", None)


class _ScopedAccountField(serializers.PrimaryKeyRelatedField):
    """Accounts where the user is an account admin: another team's id is "does not exist"."""

    def get_queryset(self):
        return accounts_for(_user(self), role=Role.ACCOUNT_ADMIN)


class _ScopedChannelField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self):
        return channels_for(_user(self), role=Role.ACCOUNT_ADMIN, permission=None)


class AnomalyMonitorSerializer(serializers.ModelSerializer):
    channels = serializers.ManyRelatedField(
        child_relation=_ScopedChannelField(), required=False, help_text="Channel ids (your teams' channels)."
    )
    account = _ScopedAccountField(
        required=False,
        allow_null=True,
        help_text="Watch this account only (one where you are an account admin); empty watches every account, "
        "which only platform admins may set up.",
    )

    class Meta:
        model = AnomalyMonitor
        fields = [
            "id",
            "name",
            "dimension",
            "tag_key",
            "account",
            "min_impact",
            "min_impact_percent",
            "channels",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs = {"tag_key": {"required": False}}

    def validate(self, attrs):
        dimension = attrs.get("dimension", getattr(self.instance, "dimension", AnomalyDimension.ACCOUNT))
        tag_key = (attrs.get("tag_key", getattr(self.instance, "tag_key", "")) or "").strip()
        if dimension == AnomalyDimension.TAG and not tag_key:
            raise serializers.ValidationError({"tag_key": "A tag monitor needs the key whose values are its series."})
        if dimension != AnomalyDimension.TAG and tag_key:
            raise serializers.ValidationError({"tag_key": "Only tag monitors have a tag key."})
        attrs["tag_key"] = tag_key
        account = attrs["account"] if "account" in attrs else getattr(self.instance, "account", None)
        if account is None and not is_platform_admin(_user(self)):
            raise serializers.ValidationError(
                {"account": "A monitor of every account is organisation-wide: only platform admins may set one up."}
            )
        return attrs

    def _save(self, monitor: AnomalyMonitor, validated_data: dict) -> AnomalyMonitor:
        channels = validated_data.pop("channels", None)
        for name, value in validated_data.items():
            setattr(monitor, name, value)
        try:
            return anomaly_monitor_save(monitor=monitor, channels=channels)
        except AnomalyMonitorError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def create(self, validated_data):
        return self._save(AnomalyMonitor(), validated_data)

    def update(self, instance, validated_data):
        return self._save(instance, validated_data)


@extend_schema_view(
    list=extend_schema(summary="List anomaly monitors"),
    retrieve=extend_schema(summary="One anomaly monitor"),
    create=extend_schema(
        summary="Add an anomaly monitor",
        description="A tag monitor (dimension `tag`) activates its key as a cost allocation tag and backfills that "
        "key's rollups from the stored cost lines before answering.",
    ),
    partial_update=extend_schema(summary="Change an anomaly monitor (floors, channels, scope, active)"),
    destroy=extend_schema(summary="Delete an anomaly monitor and its anomalies (deactivate it to keep them)"),
)
@extend_schema(tags=["anomalies"])
class AnomalyMonitorViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Reading needs costs_app.view_anomalymonitor (your teams' accounts' monitors); adding, changing and deleting
    need costs_app.add/change/delete_anomalymonitor and the account admin role."""

    serializer_class = AnomalyMonitorSerializer
    queryset = AnomalyMonitor.objects.none()  # for the schema and the permission class; get_queryset() is the real one
    permission_classes = [IsAuthenticated, ModelPermissions]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        user = self.request.user
        if self.action == "partial_update":
            monitors = anomaly_monitors_for(user, role=Role.ACCOUNT_ADMIN, permission="change")
        elif self.action == "destroy":
            monitors = anomaly_monitors_for(user, role=Role.ACCOUNT_ADMIN, permission="delete")
        else:
            monitors = anomaly_monitors_for(user)
        return monitors.prefetch_related("channels").order_by("name")


# --- anomalies ---------------------------------------------------------------------------------------------


class AnomalySerializer(serializers.ModelSerializer):
    monitor_name = serializers.CharField(source="monitor.name", read_only=True)
    dimension = serializers.CharField(source="monitor.dimension", read_only=True)
    tag_key = serializers.CharField(source="monitor.tag_key", read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    series = serializers.CharField(source="series_label", read_only=True)
    status_changed_by = serializers.SerializerMethodField()

    class Meta:
        model = Anomaly
        fields = [
            "id",
            "monitor",
            "monitor_name",
            "dimension",
            "tag_key",
            "account",
            "account_name",
            "dimension_value",
            "series",
            "currency",
            "start_day",
            "end_day",
            "day_count",
            "expected",
            "actual",
            "impact",
            "impact_percent",
            "score",
            "days",
            "root_causes",
            "status",
            "status_note",
            "status_changed_at",
            "status_changed_by",
            "status_history",
            "detected_at",
            "updated_at",
            "notified_at",
        ]
        read_only_fields = fields

    def get_status_changed_by(self, anomaly: Anomaly) -> str | None:
        user = anomaly.status_changed_by
        return user.get_username() if user is not None else None


# The statuses a user may set (named in SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]).
ANOMALY_STATUS_CHANGES = [
    (AnomalyStatus.ACKNOWLEDGED.value, AnomalyStatus.ACKNOWLEDGED.label),
    (AnomalyStatus.RESOLVED.value, AnomalyStatus.RESOLVED.label),
    (AnomalyStatus.FALSE_POSITIVE.value, AnomalyStatus.FALSE_POSITIVE.label),
]


class AnomalyStatusRequest(serializers.Serializer):
    status = serializers.ChoiceField(choices=ANOMALY_STATUS_CHANGES)
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


FILTERS = [
    OpenApiParameter("status", OpenApiTypes.STR, description="open, acknowledged, resolved or false_positive"),
    OpenApiParameter("monitor", OpenApiTypes.INT, description="A monitor id."),
    OpenApiParameter("account", OpenApiTypes.INT, description="A cloud account id."),
    OpenApiParameter("since", OpenApiTypes.DATE, description="Only anomalies whose latest day is on or after."),
]


@extend_schema_view(
    list=extend_schema(summary="List anomalies (newest first)", parameters=FILTERS),
    retrieve=extend_schema(summary="One anomaly: its days (expected, band, actual), root causes, status history"),
)
@extend_schema(tags=["anomalies"])
class AnomalyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = AnomalySerializer
    permission_classes = [IsAuthenticated, ModelPermissions]
    queryset = Anomaly.objects.none()  # for the schema and the permission class; get_queryset() is the real one

    def get_queryset(self):
        if self.action == "status":
            queryset = anomalies_for(self.request.user, role=Role.OPERATOR, permission="change")
        else:
            queryset = anomalies_for(self.request.user)
        queryset = queryset.select_related("monitor", "account", "status_changed_by")
        params = self.request.query_params
        if self.action == "list":
            if params.get("status"):
                if params["status"] not in AnomalyStatus.values:
                    raise serializers.ValidationError({"status": f"One of {', '.join(AnomalyStatus.values)}."})
                queryset = queryset.filter(status=params["status"])
            for name in ("monitor", "account"):
                if params.get(name):
                    if not params[name].isdigit() or int(params[name]) >= 2**63:  # past bigint: a DataError
                        raise serializers.ValidationError({name: "An id (a whole number)."})
                    queryset = queryset.filter(**{f"{name}_id": int(params[name])})
            if params.get("since"):
                try:
                    since = serializers.DateField().to_internal_value(params["since"])
                except serializers.ValidationError as exc:  # name the parameter, as for the others
                    raise serializers.ValidationError({"since": exc.detail}) from None
                queryset = queryset.filter(end_day__gte=since)
        return queryset.order_by("-end_day", "-impact", "-id")

    @extend_schema(
        summary="Acknowledge, resolve or mark an anomaly a false positive",
        description="open → acknowledged → resolved / false_positive; the user, time and note are recorded. "
        "A closed anomaly (resolved, false positive) does not change again (409); if the spend comes back, a new "
        "anomaly is recorded. A false positive changes no baseline.",
        request=AnomalyStatusRequest,
        responses={
            200: AnomalySerializer,
            400: OpenApiResponse(description="Unknown status or bad note."),
            403: OpenApiResponse(description="Lacks costs_app.change_anomaly."),
            409: OpenApiResponse(description="The lifecycle does not allow this change."),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanChangeAnomalies])
    def status(self, request, pk=None):
        anomaly = self.get_object()
        params = AnomalyStatusRequest(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            anomaly = anomaly_status_set(
                anomaly_id=anomaly.pk,
                status=params.validated_data["status"],
                user=request.user,
                note=params.validated_data["note"],
            )
        except AnomalyStatusError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        anomaly = self.get_queryset().get(pk=anomaly.pk)
        return Response(AnomalySerializer(anomaly).data)
