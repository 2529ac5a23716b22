"""Recommendations over the REST API: list and read them, dismiss (with a reason), mark done, reopen; the rules.

Reading needs costs_app.view_recommendation and shows your teams' accounts' recommendations; changing a
status needs costs_app.change_recommendation and the operator role in the account's team (costs_app.selectors).
"""

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from finops.api_permissions import ModelPermissions
from providers_app.models import Role

from .models import Recommendation, RecommendationStatus
from .selectors import recommendations_for
from .services.optimization import RULES_BY_NAME, rules_catalogue
from .services.recommendations import RecommendationStateError, recommendation_transition_one

CHANGE_PERMISSION = "costs_app.change_recommendation"


class CanChangeRecommendations(BasePermission):
    message = "You need the 'Can change recommendation' permission (costs_app.change_recommendation)."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(CHANGE_PERMISSION))


class RecommendationSerializer(serializers.ModelSerializer):
    account_name = serializers.CharField(source="account.name", read_only=True)
    status_changed_by = serializers.CharField(source="status_changed_by.username", read_only=True, default=None)

    class Meta:
        model = Recommendation
        fields = [
            "id",
            "account",
            "account_name",
            "rule",
            "provider_resource_id",
            "resource",
            "title",
            "details",
            "estimated_monthly_saving",
            "currency",
            "monthly_cost",
            "saving_basis",
            "status",
            "status_reason",
            "status_changed_at",
            "status_changed_by",
            "created_at",
            "updated_at",
            "last_found_at",
            "done_at",
            "baseline_monthly_cost",
            "realised_monthly_saving",
            "realised_days",
            "realised_measured_at",
            "realised_note",
        ]
        read_only_fields = fields


class RecommendationFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=RecommendationStatus.choices, required=False)
    rule = serializers.CharField(required=False)
    account = serializers.IntegerField(required=False, min_value=1)
    min_saving = serializers.DecimalField(required=False, max_digits=20, decimal_places=2)
    limit = serializers.IntegerField(required=False)
    offset = serializers.IntegerField(required=False)

    def validate_rule(self, value: str) -> str:
        if value not in RULES_BY_NAME:
            raise serializers.ValidationError(f"Unknown rule; known: {', '.join(RULES_BY_NAME)}.")
        return value


class DismissRequest(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, help_text="Why this recommendation does not apply (required).")


class DoneRequest(serializers.Serializer):
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class EmptyRequest(serializers.Serializer):
    pass


class RuleSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    saving_estimate = serializers.CharField()
    thresholds = serializers.DictField()
    group = serializers.CharField(allow_null=True)


CONFLICT = OpenApiResponse(description="The recommendation's status does not allow this action (it is named).")
FORBIDDEN = OpenApiResponse(description="Lacks the costs_app.change_recommendation permission.")


@extend_schema_view(
    list=extend_schema(summary="List recommendations", parameters=[RecommendationFilter]),
    retrieve=extend_schema(summary="One recommendation"),
)
@extend_schema(tags=["recommendations"])
class RecommendationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Optimisation recommendations, largest estimated saving first."""

    serializer_class = RecommendationSerializer
    queryset = Recommendation.objects.none()  # for the schema and the permission class; get_queryset() is the real one

    def get_permissions(self):
        if self.action in ("dismiss", "done", "reopen"):
            return [IsAuthenticated(), CanChangeRecommendations()]
        if self.action == "rules":
            return [IsAuthenticated()]
        return [IsAuthenticated(), ModelPermissions()]

    def get_queryset(self):
        if self.action in ("dismiss", "done", "reopen"):
            queryset = recommendations_for(self.request.user, role=Role.OPERATOR, permission="change")
        else:
            queryset = recommendations_for(self.request.user)
        queryset = queryset.select_related("account", "status_changed_by").order_by("-estimated_monthly_saving", "id")
        if self.action != "list":
            return queryset
        params = RecommendationFilter(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        found = params.validated_data
        for name in ("status", "rule"):
            if name in found:
                queryset = queryset.filter(**{name: found[name]})
        if "account" in found:
            queryset = queryset.filter(account_id=found["account"])
        if "min_saving" in found:
            queryset = queryset.filter(estimated_monthly_saving__gte=found["min_saving"])
        return queryset

    def _transition(self, request, action_name: str, text: str = "") -> Response:
        recommendation = self.get_object()  # 404 for an unknown id
        try:
            recommendation_transition_one(
                action=action_name,
                recommendation_id=recommendation.pk,
                user=request.user,
                now=timezone.now(),
                text=text,
            )
        except RecommendationStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(self.get_queryset().get(pk=recommendation.pk)).data)

    @extend_schema(
        summary="Dismiss a recommendation",
        description="Open -> dismissed, with the reason. Later runs keep it dismissed while the rule still finds it.",
        request=DismissRequest,
        responses={200: RecommendationSerializer, 400: None, 403: FORBIDDEN, 404: None, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def dismiss(self, request, pk=None):
        params = DismissRequest(data=request.data)
        params.is_valid(raise_exception=True)
        return self._transition(request, "dismiss", params.validated_data["reason"])

    @extend_schema(
        summary="Mark a recommendation done",
        description="Open (or closed) -> done now. Its baseline cost is measured at once; the realised saving once "
        "OPTIMIZATION_REALISED_MIN_DAYS days of cost data follow.",
        request=DoneRequest,
        responses={200: RecommendationSerializer, 400: None, 403: FORBIDDEN, 404: None, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def done(self, request, pk=None):
        params = DoneRequest(data=request.data)
        params.is_valid(raise_exception=True)
        return self._transition(request, "done", params.validated_data["note"])

    @extend_schema(
        summary="Reopen a dismissed or done recommendation",
        request=EmptyRequest,
        responses={200: RecommendationSerializer, 403: FORBIDDEN, 404: None, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def reopen(self, request, pk=None):
        return self._transition(request, "reopen")

    @extend_schema(summary="The rule catalogue with current thresholds", responses={200: RuleSerializer(many=True)})
    @action(detail=False, methods=["get"], pagination_class=None)
    def rules(self, request):
        return Response(RuleSerializer(rules_catalogue(), many=True).data)
