"""The cost dashboards' JSON (/api/v1/dashboards/...): what the admin's charts draw, for any other client too.

Reads only (costs_app.dashboard_selectors, scoped to the user's teams); each endpoint needs the view permission of
the model it reads. Every input is bounded: periods of at most DASHBOARD_MAX_DAYS days within 2000..2100, top-N and
list limits, filter strings of a few hundred characters.
"""

import re
from datetime import date, timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from finops.api_permissions import HasModelPermission

from . import dashboard_selectors as dashboards

DASHBOARD_MAX_DAYS = 400
DASHBOARD_DEFAULT_DAYS = 30
DATE_MIN, DATE_MAX = date(2000, 1, 1), date(2100, 12, 31)
TOP_MAX = 20
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
NOT_FOUND = OpenApiResponse(description="No such id among your teams' rows.")
BAD_INPUT = OpenApiResponse(description="A filter is malformed or out of range (the field is named).")
FORBIDDEN = OpenApiResponse(description="Not signed in, or lacks the view permission of the data.")


def _money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=30, decimal_places=2, **kwargs)


# --- inputs ---------------------------------------------------------------------------------------------------


class SpendQuery(serializers.Serializer):
    date_from = serializers.DateField(
        required=False, help_text=f"First day (default: {DASHBOARD_DEFAULT_DAYS} days before date_to)."
    )
    date_to = serializers.DateField(required=False, help_text="Last day, included (default: today, UTC).")
    account = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    sub_account = serializers.CharField(required=False, max_length=256)
    service = serializers.CharField(required=False, max_length=256)
    region = serializers.CharField(required=False, max_length=128)
    tag = serializers.CharField(required=False, max_length=512, help_text="key=value: spend carrying this tag value.")
    currency = serializers.CharField(required=False, max_length=3, help_text="Default: the one with the most spend.")
    group_by = serializers.ChoiceField(choices=["service", "account"], required=False, default="service")
    top = serializers.IntegerField(required=False, min_value=1, max_value=TOP_MAX, default=8)

    def validate_tag(self, value: str) -> str:
        if "=" not in value or not value.split("=", 1)[0].strip():
            raise serializers.ValidationError("key=value, e.g. team=web")
        return value

    def validate_currency(self, value: str) -> str:
        if not CURRENCY_RE.match(value):
            raise serializers.ValidationError("a three-letter ISO 4217 code such as USD")
        return value

    def validate(self, attrs):
        date_to = attrs.get("date_to") or timezone.now().date()
        date_from = attrs.get("date_from") or date_to - timedelta(days=DASHBOARD_DEFAULT_DAYS - 1)
        for name, value in (("date_from", date_from), ("date_to", date_to)):
            if not DATE_MIN <= value <= DATE_MAX:
                raise serializers.ValidationError({name: f"between {DATE_MIN} and {DATE_MAX}"})
        if date_from > date_to:
            raise serializers.ValidationError({"date_from": "after date_to"})
        if (date_to - date_from).days + 1 > DASHBOARD_MAX_DAYS:
            raise serializers.ValidationError({"date_from": f"a period covers at most {DASHBOARD_MAX_DAYS} days"})
        attrs["date_from"], attrs["date_to"] = date_from, date_to
        return attrs

    def spend_filter(self) -> dashboards.SpendFilter:
        data = self.validated_data
        key, _, value = data.get("tag", "").partition("=")
        return dashboards.SpendFilter(
            date_from=data["date_from"],
            date_to=data["date_to"],
            account=data.get("account"),
            sub_account=data.get("sub_account", ""),
            service=data.get("service", ""),
            region=data.get("region", ""),
            tag_key=key.strip(),
            tag_value=value.strip(),
            currency=data.get("currency", ""),
        )


class LimitQuery(serializers.Serializer):
    account = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=50)


# --- outputs --------------------------------------------------------------------------------------------------


class SeriesOut(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    values = serializers.ListField(child=_money())
    total = _money()


class RankedOut(serializers.Serializer):
    key = serializers.CharField(help_text="The service, account id, region or tag key=value.")
    label = serializers.CharField()
    total = _money()


class TopOut(serializers.Serializer):
    services = RankedOut(many=True)
    accounts = RankedOut(many=True)
    regions = RankedOut(many=True)


class PeriodTotalOut(serializers.Serializer):
    date_from = serializers.DateField()
    date_to = serializers.DateField()
    total = _money()


class MonthToDateOut(serializers.Serializer):
    this_month = PeriodTotalOut()
    last_month = PeriodTotalOut(help_text="The same days of the month before.")
    change_percent = serializers.DecimalField(max_digits=30, decimal_places=1, allow_null=True)


class SpendOut(serializers.Serializer):
    currency = serializers.CharField()
    currencies = serializers.ListField(child=serializers.CharField(), help_text="Currencies with spend, most first.")
    date_from = serializers.DateField()
    date_to = serializers.DateField()
    group_by = serializers.CharField()
    granularity = serializers.ChoiceField(
        choices=["day", "month"],
        help_text="day; month for a period of more than 92 days (days then holds each month's first day).",
    )
    days = serializers.ListField(child=serializers.DateField())
    series = SeriesOut(many=True, help_text="One per top group, then '(other)'; values align with days.")
    total = _money()
    month_to_date = MonthToDateOut()
    top = TopOut()


class TagsOut(serializers.Serializer):
    currency = serializers.CharField()
    tags = RankedOut(many=True, help_text="The largest tag values, key=value.")


class ThresholdOut(serializers.Serializer):
    label = serializers.CharField()
    basis = serializers.CharField()
    amount = _money()


class BudgetOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    currency = serializers.CharField()
    amount = _money()
    period = serializers.CharField()
    thresholds = ThresholdOut(many=True)
    period_start = serializers.DateField(allow_null=True)
    period_end = serializers.DateField(allow_null=True, help_text="Last day, included.")
    actual = _money(allow_null=True)
    forecast = _money(allow_null=True)
    forecast_low = _money(allow_null=True, help_text="80 % prediction interval, low end.")
    forecast_high = _money(allow_null=True)
    percent_used = _money(allow_null=True)
    forecast_percent = _money(allow_null=True)
    as_of = serializers.DateField(allow_null=True, help_text="The latest day with cost data.")


class BudgetsOut(serializers.Serializer):
    today = serializers.DateField()
    budgets = BudgetOut(many=True)


class BurnOut(BudgetOut):
    days = serializers.ListField(child=serializers.DateField())
    cumulative = serializers.ListField(child=_money(allow_null=True), help_text="Spend to each day; null after as_of.")
    forecast_line = serializers.ListField(child=_money(allow_null=True))
    low_line = serializers.ListField(child=_money(allow_null=True))
    high_line = serializers.ListField(child=_money(allow_null=True))


class AnomalySeriesOut(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.IntegerField()
    account_name = serializers.CharField()
    monitor = serializers.CharField()
    series = serializers.CharField()
    currency = serializers.CharField()
    status = serializers.CharField()
    start_day = serializers.DateField()
    end_day = serializers.DateField()
    impact = _money()
    impact_percent = _money(allow_null=True)
    days = serializers.ListField(child=serializers.DateField())
    actual = serializers.ListField(child=_money())
    expected = serializers.ListField(child=_money())
    lower = serializers.ListField(child=_money())
    upper = serializers.ListField(child=_money())
    anomalous = serializers.ListField(child=serializers.BooleanField())
    root_causes = serializers.ListField(child=serializers.DictField())


class SavingOut(serializers.Serializer):
    currency = serializers.CharField()
    total = _money()
    count = serializers.IntegerField()


class SavingByRuleOut(SavingOut):
    rule = serializers.CharField()
    label = serializers.CharField()


class SavingByAccountOut(SavingOut):
    account = serializers.IntegerField()
    label = serializers.CharField()


class SavingsOut(serializers.Serializer):
    totals = SavingOut(many=True, help_text="Open recommendations' estimated monthly saving, per currency.")
    by_rule = SavingByRuleOut(many=True)
    by_account = SavingByAccountOut(many=True)
    done = SavingOut(many=True, help_text="Done recommendations' realised (else estimated) monthly saving.")


# --- views ----------------------------------------------------------------------------------------------------


def _valid(serializer_class, request):
    params = serializer_class(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params


class _Dashboard(APIView):
    permission = ""

    def get_permissions(self):
        return [IsAuthenticated(), HasModelPermission.of(self.permission)()]


@extend_schema(tags=["dashboards"])
class SpendDashboardView(_Dashboard):
    permission = "costs_app.view_costdailyrollup"

    @extend_schema(
        summary="Spend over time, month to date and top spenders",
        description="Daily BilledCost of one currency stacked by the top services or accounts, from the daily "
        "rollups (the tag rollups with `tag`), scoped to your teams' accounts.",
        parameters=[SpendQuery],
        responses={200: SpendOut, 400: BAD_INPUT, 403: FORBIDDEN},
    )
    def get(self, request):
        params = _valid(SpendQuery, request)
        data = dashboards.spend_dashboard(
            request.user,
            params.spend_filter(),
            group_by=params.validated_data["group_by"],
            top=params.validated_data["top"],
        )
        return Response(SpendOut(data).data)


@extend_schema(tags=["dashboards"])
class SpendTagsView(_Dashboard):
    permission = "costs_app.view_costtagrollup"

    @extend_schema(
        summary="The period's largest tag values",
        description="From the tag rollups (the active cost allocation tags, or the key of `tag`), with the spend "
        "filters; `currency` defaults to the one with the most tagged spend. `group_by` is ignored.",
        parameters=[SpendQuery],
        responses={200: TagsOut, 400: BAD_INPUT, 403: FORBIDDEN},
    )
    def get(self, request):
        params = _valid(SpendQuery, request)
        data = dashboards.spend_top_tags(request.user, params.spend_filter(), top=params.validated_data["top"])
        return Response(TagsOut(data).data)


@extend_schema(tags=["dashboards"])
class BudgetsDashboardView(_Dashboard):
    permission = "costs_app.view_budget"

    @extend_schema(
        summary="Budgets: actual, forecast with its 80 % interval, thresholds",
        parameters=[LimitQuery],
        responses={200: BudgetsOut, 400: BAD_INPUT, 403: FORBIDDEN},
    )
    def get(self, request):
        params = _valid(LimitQuery, request)
        data = dashboards.budgets_dashboard(
            request.user, today=timezone.now().date(), limit=params.validated_data["limit"]
        )
        return Response(BudgetsOut(data).data)


@extend_schema(tags=["dashboards"])
class BudgetBurnView(_Dashboard):
    permission = "costs_app.view_budget"

    @extend_schema(
        summary="One budget's burn chart: cumulative spend, forecast, interval and thresholds by day",
        responses={200: BurnOut, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def get(self, request, pk: int):
        data = dashboards.budget_burn(request.user, budget_id=pk, today=timezone.now().date())
        if data is None:
            raise NotFound()
        return Response(BurnOut(data).data)


@extend_schema(tags=["dashboards"])
class AnomalySeriesView(_Dashboard):
    permission = "costs_app.view_anomaly"

    @extend_schema(
        summary="An anomaly's daily series with the expected band, its anomalous days and root causes",
        responses={200: AnomalySeriesOut, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def get(self, request, pk: int):
        data = dashboards.anomaly_series(request.user, anomaly_id=pk, today=timezone.now().date())
        if data is None:
            raise NotFound()
        return Response(AnomalySeriesOut(data).data)


@extend_schema(tags=["dashboards"])
class SavingsDashboardView(_Dashboard):
    permission = "costs_app.view_recommendation"

    @extend_schema(
        summary="Potential savings by rule and by account, with totals",
        parameters=[LimitQuery],
        responses={200: SavingsOut, 400: BAD_INPUT, 403: FORBIDDEN},
    )
    def get(self, request):
        params = _valid(LimitQuery, request)
        data = dashboards.savings_dashboard(
            request.user, account=params.validated_data.get("account"), limit=params.validated_data["limit"]
        )
        return Response(SavingsOut(data).data)
