"""Admin for the money: budgets and their alerts, channels (write-only targets), anomalies, recommendations, costs."""

import math
from datetime import UTC, date, datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from finops.admin_mixins import ReadOnlyAdminMixin, TeamScopedAdminMixin
from finops.admin_paging import EstimatedCountPaginator
from finops.money import format_money, money_column
from providers_app import focus_schema as focus
from providers_app.admin import TRIGGER_PERMISSION, WriteOnlyField
from providers_app.models import Role
from providers_app.selectors import accounts_for, is_platform_admin

from .models import (
    AlertDelivery,
    Anomaly,
    AnomalyDimension,
    AnomalyMonitor,
    AnomalyStatus,
    Budget,
    BudgetAlert,
    ChannelKind,
    CostAllocationTag,
    CostDailyRollup,
    CostLineItem,
    DeliveryStatus,
    NotificationChannel,
    Recommendation,
)
from .selectors import billing_periods_for, budget_scope, budgets_for, channel_scope, month_rollups_for
from .services.anomalies import anomalies_status_set, anomaly_monitor_save
from .services.notifications import channel_target_validate

RELATED_ONLY = admin.RelatedOnlyFieldListFilter  # a filter listing only the rows the (scoped) changelist refers to


class OperatorActionsMixin:
    """Trigger-like actions act only on the selected rows whose team the user operates; the others are named."""

    def operable(self, request, queryset):
        allowed = self.scope_queryset(queryset, request.user, role=Role.OPERATOR)
        refused = queryset.exclude(pk__in=allowed.values("pk")).count()
        if refused:
            self.message_user(request, f"{refused} left alone: you are not an operator of their team", messages.WARNING)
        return allowed


class OrgWideNeedsPlatformAdmin:
    """A form field left empty makes the object organisation-wide: only platform admins may leave it empty."""

    org_wide_field = ""

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if not is_platform_admin(request.user) and self.org_wide_field in form.base_fields:
            form.base_fields[self.org_wide_field].required = True
        return form


def fixed_values_filter(title: str, field: str, values) -> type[admin.SimpleListFilter]:
    """A filter over a column's FOCUS allowed values, so the page never runs SELECT DISTINCT over cost lines."""

    class FixedValuesFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request, model_admin):
            return [(v, v) for v in sorted(values)]

        def queryset(self, request, queryset):
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    FixedValuesFilter.title = title
    return FixedValuesFilter


# --- Notification channels ---


class NotificationChannelForm(forms.ModelForm):
    target = WriteOnlyField(
        label="Target",
        help_text="Email addresses (comma-separated) or the webhook URL. Stored encrypted, never shown again; "
        "leave empty to keep the current target.",
    )

    signing_secret = WriteOnlyField(
        label="Signing secret",
        help_text="Generic webhooks: the HMAC-SHA256 key the receiver checks X-FinOps-Signature with (at least 16 "
        "characters). Stored encrypted, never shown again; leave empty to keep the current key (by default one "
        "derived from SECRET_KEY and the channel name).",
    )
    clear_signing_secret = forms.BooleanField(
        required=False, label="Use the derived key", help_text="Forget the stored signing secret."
    )

    class Meta:
        model = NotificationChannel
        fields = ("name", "team", "kind", "target", "is_active", "notify_task_failures")

    def clean_signing_secret(self):
        secret = self.cleaned_data.get("signing_secret") or ""
        if secret and len(secret) < 16:
            raise forms.ValidationError("at least 16 characters")
        return secret

    def clean(self):
        cleaned = super().clean()
        target = cleaned.get("target") or ""
        kind = cleaned.get("kind")
        if not target:
            if not self.instance.target_ciphertext:
                self.add_error("target", "a new channel needs a target")
            elif kind and kind != self.instance.kind and self.instance.pk:
                self.add_error("target", "changing the kind needs a new target")
            return cleaned
        if kind:
            try:
                # E-mail addresses, or an https URL the egress policy allows; the message never echoes the secret.
                channel_target_validate(kind=kind, target=target)
            except ValidationError as exc:
                for field, messages in exc.message_dict.items():
                    for message in messages:
                        self.add_error(field if field in self.fields else None, message)
        return cleaned

    def save(self, commit=True):
        channel = super().save(commit=False)
        target = self.cleaned_data.get("target")
        if target:
            channel.set_target(target)
        if self.cleaned_data.get("signing_secret"):
            channel.set_signing_secret(self.cleaned_data["signing_secret"])
        elif self.cleaned_data.get("clear_signing_secret"):
            channel.set_signing_secret("")
        if commit:
            channel.save()
            self.save_m2m()
        return channel


@admin.register(NotificationChannel)
class NotificationChannelAdmin(OrgWideNeedsPlatformAdmin, TeamScopedAdminMixin, admin.ModelAdmin):
    form = NotificationChannelForm
    org_wide_field = "team"
    list_display = ("name", "team", "kind", "target_hint", "is_active", "notify_task_failures", "created_at")
    list_filter = ("kind", "is_active", "notify_task_failures", ("team", RELATED_ONLY))
    search_fields = ("name",)
    fields = (
        "name",
        "team",
        "kind",
        "target",
        "target_hint",
        "signing_secret",
        "clear_signing_secret",
        "signing",
        "is_active",
        "notify_task_failures",
        "created_at",
    )
    readonly_fields = ("target_hint", "signing", "created_at")

    def scope_queryset(self, queryset, user, *, role):
        return channel_scope(queryset, user, role=role)

    @admin.display(description="webhook signed with")
    def signing(self, obj):
        if obj.kind != ChannelKind.WEBHOOK:
            return "-"
        return "its own secret (encrypted)" if obj.signing_secret_ciphertext else "the key derived from SECRET_KEY"


# --- Budgets and alerts ---


class LinesField(forms.CharField):
    """A list of strings edited as one value per line (names may contain commas, e.g. AWS service names)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3, "cols": 60}))
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value):
        if isinstance(value, (list, tuple)):
            return [str(v).strip() for v in value if str(v).strip()]
        return [line.strip() for line in (value or "").splitlines() if line.strip()]

    def has_changed(self, initial, data):
        return self.to_python(initial) != self.to_python(data)


MAX_SCOPE_COMBINATIONS = 10_000


class BudgetForm(forms.ModelForm):
    sub_account_ids = LinesField(label="Sub-accounts", help_text="FOCUS SubAccountId values, one per line; empty: all.")
    service_names = LinesField(label="Services", help_text="FOCUS ServiceName values, one per line; empty: all.")
    region_ids = LinesField(label="Regions", help_text="FOCUS RegionId values (e.g. us-east-1), one per line.")
    tag_values = LinesField(label="Tag values", help_text="Values of the tag key that count, one per line.")

    class Meta:
        model = Budget
        fields = (
            "name",
            "amount",
            "currency",
            "period",
            "start_date",
            "end_date",
            "is_active",
            "accounts",
            "sub_account_ids",
            "service_names",
            "region_ids",
            "tag_key",
            "tag_values",
            "thresholds",
            "channels",
        )
        widgets = {"thresholds": forms.Textarea(attrs={"rows": 6, "cols": 80})}
        error_messages = {
            "thresholds": {"required": 'a non-empty list, e.g. [50, 80, 100, {"value": 100, "basis": "forecasted"}]'}
        }

    def clean(self):
        cleaned = super().clean()
        # The check expands a scope into every combination of its filter values; keep that a sane number.
        sizes = [
            len(cleaned.get("accounts") or []),
            len(cleaned.get("sub_account_ids") or []),
            len(cleaned.get("service_names") or []),
            len(cleaned.get("region_ids") or []),
            len(cleaned.get("tag_values") or []),
        ]
        combinations = math.prod(size or 1 for size in sizes)
        if combinations > MAX_SCOPE_COMBINATIONS:
            raise forms.ValidationError(
                f"this scope has {combinations:,} combinations of accounts × sub-accounts × services × regions × "
                f"tag values; at most {MAX_SCOPE_COMBINATIONS:,}: split the budget, or leave a filter empty"
            )
        return cleaned


class BudgetAlertInline(admin.TabularInline):
    """The budget's alerts: money with its currency and two decimals (finops/money.py), percentages rounded, as in
    the alert list."""

    model = BudgetAlert
    fields = (
        "period_start",
        "threshold_label",
        "spend_money",
        "forecast_money",
        "forecast_range",
        "percent_used",
        "created_at",
        "delivery_status",
        "resolved_at",
    )
    readonly_fields = fields
    spend_money = money_column("spend", description="spend")
    forecast_money = money_column("forecast", description="forecast")
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-period_start", "basis", "threshold")
    show_change_link = True

    def get_queryset(self, request):
        return _with_delivery_counts(super().get_queryset(request))

    @admin.display(description="threshold")
    def threshold_label(self, obj):
        return obj.threshold_spec.label(obj.currency)

    @admin.display(description="forecast interval (80 %)")
    def forecast_range(self, obj):
        if obj.forecast_low is None or obj.forecast_high is None:
            return "—"
        return format_html(
            '<span class="finops-money">{} – {}</span>',
            format_money(obj.forecast_low, obj.currency),
            format_money(obj.forecast_high, obj.currency),
        )

    @admin.display(description="% used (fcst)")
    def percent_used(self, obj):
        return _percent_label(obj)

    @admin.display(description="deliveries")
    def delivery_status(self, obj):
        return _delivery_summary(obj)


def _percent_label(alert) -> str:
    actual = f"{alert.percentage:.0f} %" if alert.percentage is not None else "—"
    forecast = f" ({alert.forecast_percentage:.0f} %)" if alert.forecast_percentage is not None else ""
    return actual + forecast


def _with_delivery_counts(queryset):
    return queryset.annotate(
        sent_count=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.SENT)),
        pending_count=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.PENDING)),
        failed_count=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.FAILED)),
    )


def _delivery_summary(alert) -> str:
    parts = [
        f"{count} {label}"
        for label, count in (
            ("sent", getattr(alert, "sent_count", 0)),
            ("pending", getattr(alert, "pending_count", 0)),
            ("failed", getattr(alert, "failed_count", 0)),
        )
        if count
    ]
    return ", ".join(parts) or "no channel"


@admin.register(Budget)
class BudgetAdmin(OrgWideNeedsPlatformAdmin, OperatorActionsMixin, TeamScopedAdminMixin, admin.ModelAdmin):
    form = BudgetForm
    org_wide_field = "accounts"
    list_display = (
        "name",
        "scope",
        "amount_column",
        "spend_column",
        "forecast_column",
        "used_column",
        "threshold_labels",
        "is_active",
    )
    list_filter = ("period", "is_active", "currency", ("accounts", RELATED_ONLY))
    search_fields = ("name", "tag_key")
    filter_horizontal = ("accounts", "channels")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "amount", "currency", "period", "start_date", "end_date", "is_active")}),
        (
            "Scope (empty filters match everything; filters combine with AND, values of one filter with OR)",
            {"fields": ("accounts", "sub_account_ids", "service_names", "region_ids", "tag_key", "tag_values")},
        ),
        ("Alerts", {"fields": ("thresholds", "channels")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )
    inlines = (BudgetAlertInline,)
    actions = ("check_now",)

    def scope_queryset(self, queryset, user, *, role):
        return budget_scope(queryset, user, role=role)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("accounts")

    @admin.display(description="amount", ordering="amount")
    def amount_column(self, obj):
        return format_html(
            '<span class="finops-money">{}</span> {}', format_money(obj.amount, obj.currency), obj.get_period_display()
        )

    def changelist_view(self, request, extra_context=None):
        """Spend, forecast and % used of the page's budgets, computed together (budgets_spend: two queries for
        the page, not one per budget) and attached to the rows before the list renders."""
        from .services.budgets import budgets_spend

        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            budgets = list(changelist.result_list)
            latest: dict[int, object] = {}
            for spend in budgets_spend(budgets, today=timezone.now().date()):
                current = latest.get(spend.budget.id)
                if current is None or spend.period_start > current.period_start:
                    latest[spend.budget.id] = spend
            for budget in budgets:
                budget.current_spend = latest.get(budget.id)
        return response

    @admin.display(description="spend (this period)")
    def spend_column(self, obj):
        spend = getattr(obj, "current_spend", None)
        if spend is None:
            return "—"
        return format_html('<span class="finops-money">{}</span>', format_money(spend.actual, obj.currency))

    @admin.display(description="forecast")
    def forecast_column(self, obj):
        spend = getattr(obj, "current_spend", None)
        if spend is None or spend.forecast is None:
            return "—"
        return format_html('<span class="finops-money">{}</span>', format_money(spend.forecast, obj.currency))

    @admin.display(description="% used")
    def used_column(self, obj):
        spend = getattr(obj, "current_spend", None)
        if spend is None:
            return "—"
        percent = spend.percentage
        css = "finops-alert" if percent >= 100 else ""
        return format_html('<span class="{}">{} %</span>', css, f"{percent:.0f}")

    @admin.display(description="scope")
    def scope(self, obj):
        return obj.scope_label([a.name for a in obj.accounts.all()])

    @admin.display(description="thresholds")
    def threshold_labels(self, obj):
        try:
            return ", ".join(t.label(obj.currency) for t in obj.threshold_list())
        except ValidationError:
            return "invalid (edit the budget)"

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        budget = form.instance
        if budget.tag_key and not CostAllocationTag.objects.filter(key=budget.tag_key, is_active=True).exists():
            # The check activates the tag key and backfills its rollups, in a worker rather than this request.
            self._enqueue_check(request, [budget.id])
            self.message_user(
                request,
                f"Tag {budget.tag_key!r} becomes a cost allocation tag: its spend is rolled up from the stored "
                "cost lines by the budget check just queued.",
            )

    def has_trigger_permission(self, request) -> bool:
        return request.user.has_perm(TRIGGER_PERMISSION)

    @admin.action(description="Check selected budgets now", permissions=["trigger"])
    def check_now(self, request, queryset):
        ids = self._enqueue_check(request, list(self.operable(request, queryset).values_list("id", flat=True)))
        self.message_user(request, f"Enqueued monitor_budget for {len(ids)} budget(s)")

    def _enqueue_check(self, request, budget_ids: list[int]) -> list[str]:
        from tasks_app.models import TriggerKind
        from tasks_app.services.runs import task_enqueue

        with transaction.atomic():
            return [
                task_enqueue(
                    task_name="monitor_budget",
                    kwargs={"budget_id": budget_id},
                    triggered_by=TriggerKind.ADMIN,
                    user=request.user,
                ).celery_task_id
                for budget_id in budget_ids
            ]


class NotifiedFilter(admin.SimpleListFilter):
    title = "notified"
    parameter_name = "notified"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(notified_at__isnull=self.value() == "no")
        return queryset


class DeliveryProblemFilter(admin.SimpleListFilter):
    title = "delivery"
    parameter_name = "delivery"

    def lookups(self, request, model_admin):
        return (("failed", "Some channel gave up"), ("pending", "Some channel pending or retrying"))

    def queryset(self, request, queryset):
        if self.value() in (DeliveryStatus.FAILED, DeliveryStatus.PENDING):
            return queryset.filter(deliveries__status=self.value()).distinct()
        return queryset


class AlertBudgetFilter(admin.SimpleListFilter):
    """The user's budgets (a small table), not RelatedOnlyFieldListFilter's DISTINCT over every alert."""

    title = "budget"
    parameter_name = "budget__id__exact"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in budgets_for(request.user).order_by("name").values_list("pk", "name")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        if not self.value().isdigit():
            return queryset.none()
        return queryset.filter(budget_id=int(self.value()))


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    fields = ("channel", "status", "attempts", "last_error", "next_attempt_at", "last_attempt_at", "sent_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(TeamScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "budget_name",
        "threshold_label",
        "spend_money",
        "forecast_column",
        "percent_column",
        "delivery_status",
        "created_at",
    )
    list_filter = (
        NotifiedFilter,
        DeliveryProblemFilter,
        "basis",
        "threshold_type",
        AlertBudgetFilter,
    )
    list_select_related = ("budget",)
    date_hierarchy = "period_start"  # the period's filter too (no DISTINCT list of every period_start)
    inlines = (AlertDeliveryInline,)
    show_full_result_count = False

    def scope_queryset(self, queryset, user, *, role):
        return budget_scope(queryset, user, role=role, path="budget_id")

    def changelist_view(self, request, extra_context=None):
        """The deliveries of the page's alerts counted in one query for those alerts, attached to the rows; not an
        annotation of the list's queryset, which made its COUNT group every alert of every budget with its
        deliveries."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            alerts = list(changelist.result_list)
            counts: dict[tuple[int, str], int] = {
                (alert_id, status): n
                for alert_id, status, n in AlertDelivery.objects.filter(alert_id__in=[a.id for a in alerts])
                .values_list("alert_id", "status")
                .annotate(n=Count("id"))
                .order_by()
            }
            for alert in alerts:
                alert.sent_count = counts.get((alert.id, DeliveryStatus.SENT), 0)
                alert.pending_count = counts.get((alert.id, DeliveryStatus.PENDING), 0)
                alert.failed_count = counts.get((alert.id, DeliveryStatus.FAILED), 0)
        return response

    spend_money = money_column("spend", description="spend")

    @admin.display(description="budget · period", ordering="budget__name")
    def budget_name(self, obj):
        return f"{obj.budget.name} · {obj.period_start:%Y-%m-%d}"

    @admin.display(description="forecast", ordering="forecast")
    def forecast_column(self, obj):
        if obj.forecast is None:
            return "—"
        spread = (
            f"{format_money(obj.forecast_low)} – {format_money(obj.forecast_high)}"
            if obj.forecast_low is not None and obj.forecast_high is not None
            else ""
        )
        return format_html(
            '<span class="finops-money">{}</span><br><span class="quiet">{}</span>',
            format_money(obj.forecast, obj.currency),
            spread,
        )

    @admin.display(description="% used (fcst)", ordering="percentage")
    def percent_column(self, obj):
        return _percent_label(obj)

    @admin.display(description="threshold", ordering="threshold")
    def threshold_label(self, obj):
        return obj.threshold_spec.label(obj.currency)

    @admin.display(description="deliveries")
    def delivery_status(self, obj):
        return _delivery_summary(obj)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(OperatorActionsMixin, TeamScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "alert",
        "channel",
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "last_attempt_at",
        "sent_at",
    )
    list_filter = ("status", ("channel", RELATED_ONLY))
    list_select_related = ("alert__budget", "channel")
    actions = ("retry_now",)

    def scope_queryset(self, queryset, user, *, role):
        return budget_scope(queryset, user, role=role, path="alert__budget_id")

    def has_trigger_permission(self, request) -> bool:
        return request.user.has_perm(TRIGGER_PERMISSION)

    @admin.action(description="Retry selected deliveries now (next budget check)", permissions=["trigger"])
    def retry_now(self, request, queryset):
        count = (
            self.operable(request, queryset)
            .exclude(status=DeliveryStatus.SENT)
            .update(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now())
        )
        self.message_user(request, f"{count} delivery(ies) will be retried by the next budget check")


# --- Anomalies and recommendations ---


class AnomalyMonitorForm(forms.ModelForm):
    class Meta:
        model = AnomalyMonitor
        fields = (
            "name",
            "dimension",
            "tag_key",
            "account",
            "min_impact",
            "min_impact_percent",
            "channels",
            "is_active",
        )
        help_texts = {
            "tag_key": "For the tag dimension: the key whose values are the series (e.g. team). Saving activates "
            "it as a cost allocation tag and backfills its rollups from the stored cost lines.",
        }

    def clean(self):
        cleaned = super().clean()
        dimension, tag_key = cleaned.get("dimension"), (cleaned.get("tag_key") or "").strip()
        if dimension == AnomalyDimension.TAG and not tag_key:
            self.add_error("tag_key", "a tag monitor needs the tag key whose values are its series")
        elif dimension and dimension != AnomalyDimension.TAG and tag_key:
            self.add_error("tag_key", "only tag monitors have a tag key; clear it or choose the tag dimension")
        cleaned["tag_key"] = tag_key
        return cleaned


@admin.register(AnomalyMonitor)
class AnomalyMonitorAdmin(OrgWideNeedsPlatformAdmin, TeamScopedAdminMixin, admin.ModelAdmin):
    form = AnomalyMonitorForm
    org_wide_field = "account"
    list_display = (
        "name",
        "dimension_label",
        "account",
        "min_impact",
        "min_impact_percent",
        "is_active",
        "open_anomalies",
        "updated_at",
    )
    list_filter = ("dimension", "is_active", ("account", RELATED_ONLY))
    search_fields = ("name", "tag_key")
    list_select_related = ("account",)
    filter_horizontal = ("channels",)
    readonly_fields = ("created_at", "updated_at")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(open_count=Count("anomalies", filter=Q(anomalies__status=AnomalyStatus.OPEN)))
        )

    @admin.display(description="series")
    def dimension_label(self, obj):
        return obj.dimension_label

    @admin.display(description="open anomalies", ordering="open_count")
    def open_anomalies(self, obj):
        return obj.open_count

    def save_model(self, request, obj, form, change):
        # The service activates a tag monitor's key and backfills its rollups; channels follow in save_related.
        anomaly_monitor_save(monitor=obj)


class AnomalyStatusNoteForm(forms.Form):
    note = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="Why (kept with the anomaly, with your name and the time).",
    )


def _status_action(modeladmin, request, queryset, *, action: str, status: str, label: str):
    """First a page asking for a note, then the change through the lifecycle service."""
    queryset = modeladmin.operable(request, queryset)
    if "apply" in request.POST:
        form = AnomalyStatusNoteForm(request.POST)
        if form.is_valid():
            changed, refused = anomalies_status_set(
                anomaly_ids=list(queryset.values_list("pk", flat=True)),
                status=status,
                user=request.user,
                note=form.cleaned_data["note"],
            )
            modeladmin.message_user(request, f"{changed} anomal{'y' if changed == 1 else 'ies'} marked {label}")
            for reason in refused:
                modeladmin.message_user(request, reason, level=messages.WARNING)
            return None
    else:
        form = AnomalyStatusNoteForm()
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Mark as {label}",
        "anomalies": queryset.select_related("monitor", "account"),
        "form": form,
        "action": action,
        "label": label,
        "opts": modeladmin.model._meta,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/costs_app/anomaly/status_note.html", context)


@admin.register(Anomaly)
class AnomalyAdmin(OperatorActionsMixin, TeamScopedAdminMixin, admin.ModelAdmin):
    change_role = Role.OPERATOR  # triage (acknowledge, resolve) is an operator's job
    list_display = (
        "end_day",
        "start_day",
        "account",
        "monitor",
        "series",
        "day_count",
        "expected_money",
        "actual_money",
        "impact_money",
        "impact_percent",
        "score",
        "status",
    )
    list_filter = ("status", ("monitor", RELATED_ONLY), ("account", RELATED_ONLY), "currency")
    search_fields = ("dimension_value",)
    list_select_related = ("account", "monitor")
    date_hierarchy = "end_day"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "monitor",
                    "account",
                    "series",
                    "currency",
                    ("start_day", "end_day", "day_count"),
                    ("expected", "actual", "impact", "impact_percent", "score"),
                    "days_table",
                    "root_causes_table",
                )
            },
        ),
        (
            "Status",
            {"fields": ("status", "status_note", "status_changed_by", "status_changed_at", "history_table")},
        ),
        (
            "Detection and delivery",
            {"fields": ("detected_at", "updated_at", "notified_at", "notification_attempts", "notification_errors")},
        ),
    )
    readonly_fields = (
        "monitor",
        "account",
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
        "days_table",
        "root_causes_table",
        "status",
        "status_note",
        "status_changed_by",
        "status_changed_at",
        "history_table",
        "detected_at",
        "updated_at",
        "notified_at",
        "notification_attempts",
        "notification_errors",
    )
    actions = ("acknowledge", "resolve", "false_positive")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # The record of what was found and what people said about it (deleting its monitor removes it).
        return False

    expected_money = money_column("expected", description="expected")
    actual_money = money_column("actual", description="actual")
    impact_money = money_column("impact", description="impact")

    @admin.display(description="series", ordering="dimension_value")
    def series(self, obj):
        return obj.series_label

    @admin.display(description="days (expected, band, actual)")
    def days_table(self, obj):
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{} – {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    d["day"],
                    d["expected"],
                    d.get("lower", ""),
                    d.get("upper", ""),
                    d["actual"],
                    d["impact"],
                    "" if d.get("impact_percent") is None else f"{d['impact_percent']}%",
                    d["score"],
                )
                for d in obj.days
            ),
        )
        return format_html(
            "<table><tr><th>day</th><th>expected</th><th>band</th><th>actual</th><th>impact</th><th>%</th>"
            "<th>score</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="root causes")
    def root_causes_table(self, obj):
        if not obj.root_causes:
            return "—"
        return format_html(
            "<table><tr><th>dimension</th><th>value</th><th>expected</th><th>actual</th><th>impact</th>"
            "<th>share</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        f"tag {c['key']}" if c.get("key") else c["dimension"],
                        c["value"] or "(none)",
                        c["expected"],
                        c["actual"],
                        c["impact"],
                        f"{c['share']:.0%}",
                    )
                    for c in obj.root_causes
                ),
            ),
        )

    @admin.display(description="history")
    def history_table(self, obj):
        if not obj.status_history:
            return "—"
        return format_html_join(
            mark_safe("<br>"),  # constant markup
            "{}: {} → {} by {} {}",
            (
                (h["at"], h["from"], h["to"], h["by"] or "the detector", f"— {h['note']}" if h["note"] else "")
                for h in obj.status_history
            ),
        )

    @admin.action(description="Acknowledge…", permissions=["change"])
    def acknowledge(self, request, queryset):
        return _status_action(
            self, request, queryset, action="acknowledge", status=AnomalyStatus.ACKNOWLEDGED, label="acknowledged"
        )

    @admin.action(description="Resolve…", permissions=["change"])
    def resolve(self, request, queryset):
        return _status_action(
            self, request, queryset, action="resolve", status=AnomalyStatus.RESOLVED, label="resolved"
        )

    @admin.action(description="Mark as false positive…", permissions=["change"])
    def false_positive(self, request, queryset):
        status, label = AnomalyStatus.FALSE_POSITIVE, "false positive"
        return _status_action(self, request, queryset, action="false_positive", status=status, label=label)


class DismissForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=2000,
        help_text="Why these recommendations do not apply. Later runs keep them dismissed.",
    )


def _transition_report(modeladmin, request, result, verb: str) -> None:
    if result.changed:
        modeladmin.message_user(request, f"{len(result.changed)} {verb}", messages.SUCCESS)
    if result.refused:
        statuses = ", ".join(sorted({str(s) for s in result.refused.values()}))
        modeladmin.message_user(
            request, f"{len(result.refused)} left as they were (they are {statuses})", messages.WARNING
        )


def rule_title(name: str) -> str:
    """The rule's human title ("Spend without an owner tag"), not its code name (untagged_spend)."""
    from .services.optimization.catalogue import RULES_BY_NAME

    rule = RULES_BY_NAME.get(name)
    return rule.title if rule is not None else name.replace("_", " ").capitalize()


MONEY_KEYS = ("cost", "saving", "price", "spend", "amount")


def _detail_value(key: str, value, currency: str):
    if isinstance(value, dict):
        return details_table(value, currency)
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return format_html_join(mark_safe(""), "{}", ((details_table(item, currency),) for item in value[:20]))
        return ", ".join(str(item) for item in value)
    if any(word in key for word in MONEY_KEYS) and isinstance(value, (int, float, str)):
        try:
            return format_money(value, currency)
        except Exception:
            return str(value)
    return "—" if value in (None, "") else str(value)


def details_table(details, currency: str = "") -> str:
    """A recommendation's details as a table of labelled values (nested ones as nested tables), not raw JSON."""
    if not isinstance(details, dict) or not details:
        return "—"
    rows = format_html_join(
        mark_safe(""),
        "<tr><th>{}</th><td>{}</td></tr>",
        ((key.replace("_", " ").capitalize(), _detail_value(key, value, currency)) for key, value in details.items()),
    )
    return format_html('<table class="finops-details">{}</table>', rows)


class RuleFilter(admin.SimpleListFilter):
    """The rules by their titles; every rule of the catalogue (no DISTINCT over the recommendations)."""

    title = "rule"
    parameter_name = "rule"

    def lookups(self, request, model_admin):
        from .services.optimization.catalogue import RULES

        return sorted(((rule.name, rule.title) for rule in RULES), key=lambda pair: pair[1])

    def queryset(self, request, queryset):
        return queryset.filter(rule=self.value()) if self.value() else queryset


@admin.register(Recommendation)
class RecommendationAdmin(OperatorActionsMixin, TeamScopedAdminMixin, admin.ModelAdmin):
    change_role = Role.OPERATOR  # dismissing and marking done is an operator's job
    list_display = (
        "title",
        "account",
        "rule_title",
        "saving_money",
        "saving_basis",
        "status",
        "realised_money",
        "last_found_at",
    )
    list_filter = ("status", RuleFilter, "saving_basis", ("account", RELATED_ONLY), "currency")
    search_fields = ("title", "provider_resource_id")
    list_select_related = ("account",)
    fields = (
        "title",
        "account",
        "rule",
        "provider_resource_id",
        "resource",
        "details_table",
        "saving_money",
        "monthly_cost_money",
        "saving_basis",
        "status",
        "status_reason",
        "status_changed_at",
        "status_changed_by",
        "created_at",
        "updated_at",
        "last_found_at",
        "done_at",
        "baseline_money",
        "realised_money",
        "realised_days",
        "realised_measured_at",
        "realised_note",
    )
    # Status changes go through the actions, so the decision, its author and the realised-saving
    # baseline are always recorded together.
    readonly_fields = fields
    actions = ("dismiss", "mark_done", "reopen")
    saving_money = money_column("estimated_monthly_saving", description="saving / month")
    realised_money = money_column("realised_monthly_saving", description="realised / month")
    monthly_cost_money = money_column("monthly_cost", description="monthly cost")
    baseline_money = money_column("baseline_monthly_cost", description="baseline monthly cost")

    def has_add_permission(self, request):
        return False

    @admin.display(description="rule", ordering="rule")
    def rule_title(self, obj):
        return rule_title(obj.rule)

    @admin.display(description="details")
    def details_table(self, obj):
        return details_table(obj.details, obj.currency)

    @admin.action(description="Dismiss (with a reason)…", permissions=["change"])
    def dismiss(self, request, queryset):
        from .services.recommendations import RecommendationStateError, recommendations_dismiss

        queryset = self.operable(request, queryset)
        form = DismissForm(request.POST if "reason" in request.POST else None)
        if form.is_bound and form.is_valid():
            try:
                result = recommendations_dismiss(
                    ids=list(queryset.values_list("id", flat=True)),
                    reason=form.cleaned_data["reason"],
                    user=request.user,
                    now=timezone.now(),
                )
            except RecommendationStateError as exc:
                form.add_error("reason", str(exc))
            else:
                _transition_report(self, request, result, "dismissed")
                return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Dismiss recommendations",
            "opts": self.model._meta,
            "form": form,
            "recommendations": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/costs_app/recommendation/dismiss.html", context)

    @admin.action(description="Mark done", permissions=["change"])
    def mark_done(self, request, queryset):
        from .services.recommendations import recommendations_mark_done

        queryset = self.operable(request, queryset)
        result = recommendations_mark_done(
            ids=list(queryset.values_list("id", flat=True)), user=request.user, now=timezone.now()
        )
        _transition_report(self, request, result, "marked done (their realised saving is measured from now on)")

    @admin.action(description="Reopen", permissions=["change"])
    def reopen(self, request, queryset):
        from .services.recommendations import recommendations_reopen

        queryset = self.operable(request, queryset)
        result = recommendations_reopen(
            ids=list(queryset.values_list("id", flat=True)), user=request.user, now=timezone.now()
        )
        _transition_report(self, request, result, "reopened")


# --- Cost data (read-only) ---


class FirstChoiceFilter(admin.SimpleListFilter):
    """A filter that always applies one of its choices (no "All"): the first one unless another is picked."""

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.default = self.lookup_choices[0][0] if self.lookup_choices else None

    def value(self):
        return super().value() or self.default

    def choices(self, changelist):
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


class CostLinePeriodFilter(FirstChoiceFilter):
    """One billing period at a time, the latest by default (no "All"): every page of the cost line list reads one
    period (one partition), whatever else is chosen. Periods come from a loose index scan of the rollups."""

    title = "billing period"
    parameter_name = "period"

    def lookups(self, request, model_admin):
        return [(s.strftime("%Y-%m"), s.strftime("%Y-%m")) for s in billing_periods_for(request.user)]

    def queryset(self, request, queryset):
        try:
            start = datetime.strptime(self.value() or "", "%Y-%m").replace(tzinfo=UTC)
        except ValueError:  # no cost at all yet, or not a period
            return queryset.none()
        return queryset.filter(billing_period_start=start)


class CostLineAccountFilter(admin.SimpleListFilter):
    """The user's accounts (a small table), not RelatedOnlyFieldListFilter's DISTINCT over every cost line."""

    title = "account"
    parameter_name = "account__id__exact"

    def lookups(self, request, model_admin):
        return [(str(a.pk), str(a)) for a in accounts_for(request.user).order_by("name")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        if not self.value().isdigit():
            return queryset.none()
        return queryset.filter(account_id=int(self.value()))


class BoundedSortChangeList(ChangeList):
    """Sorts only on what get_sortable_by allows: a hand-written ?o= on another column is ignored, not run."""

    def get_ordering_field(self, field_name):
        return super().get_ordering_field(field_name) if field_name in self.sortable_by else None


@admin.register(CostLineItem)
class CostLineItemAdmin(TeamScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Cost lines at tens of millions of rows: every query is bounded to one billing period (CostLinePeriodFilter),
    ordered by the primary key (newest loaded first) or, within one account, by the (account, charge period)
    index; the count is exact up to 10,000 lines and estimated past that ("about N"); no facet counts."""

    list_display = (
        "charge_period_start",
        "account",
        "service_name",
        "resource_id",
        "charge_category",
        "billed_cost",
        "effective_cost",
        "billing_currency",
        "region_id",
    )
    list_filter = (
        CostLinePeriodFilter,
        CostLineAccountFilter,
        fixed_values_filter("charge category", "charge_category", focus.CHARGE_CATEGORIES),
        fixed_values_filter("service category", "service_category", focus.SERVICE_CATEGORIES),
        fixed_values_filter("charge frequency", "charge_frequency", focus.CHARGE_FREQUENCIES),
    )
    search_fields = ("resource_id", "sku_id", "invoice_id")
    search_help_text = "Exact resource id, SKU id or invoice id (within the chosen billing period)"
    list_select_related = ("account",)
    show_full_result_count = False
    # Per-option counts would each read the whole period: off ("show counts" is not offered).
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    ordering = ("-id",)
    list_per_page = 100

    def get_changelist(self, request, **kwargs):
        return BoundedSortChangeList

    def get_sortable_by(self, request):
        # Sorting by charge time is an index range scan only within one account: (account, charge_period_start).
        return ("charge_period_start",) if request.GET.get(CostLineAccountFilter.parameter_name) else ()

    def get_search_results(self, request, queryset, search_term):
        # Exact, case-sensitive matches; narrow by account and billing period first on a large table.
        term = search_term.strip()
        if not term:
            return queryset, False
        matches = queryset.filter(resource_id=term) | queryset.filter(sku_id=term) | queryset.filter(invoice_id=term)
        return matches, False


class RollupMonthFilter(CostLinePeriodFilter):
    """A rollup list shows one month of days at a time, the latest month with cost by default (no "All"): its
    queries read that month's range of the (day) / (account, day) / (tag_key, day) indexes, never the whole table.
    The months are the billing periods of the user's accounts (a loose index scan, selectors.billing_periods_for).
    """

    title = "month (latest by default)"

    def queryset(self, request, queryset):
        try:
            start = datetime.strptime(self.value() or "", "%Y-%m").date()
        except ValueError:  # no cost at all yet, or not a month
            return queryset.none()
        following = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
        return queryset.filter(day__gte=start, day__lt=following)


class RollupServiceFilter(admin.SimpleListFilter):
    """The services of the user's accounts, from the monthly rollups (a few thousand rows; no DISTINCT over the
    daily or tag rollups)."""

    title = "service"
    parameter_name = "service"

    def lookups(self, request, model_admin):
        names = month_rollups_for(request.user).order_by("service_name").values_list("service_name", flat=True)
        return [(name, name or "(no service)") for name in names.distinct()[:200]]

    def queryset(self, request, queryset):
        return queryset.filter(service_name=self.value()) if self.value() is not None else queryset


LARGE_LIST_NOTE = (
    "One month at a time (the latest by default, pick another on the right); the count is exact up to 10,000 rows "
    'and estimated past that; sorted by day only; no per-option counts ("show counts" is off on this table).'
)


class LargeRollupListMixin:
    """What the rollup lists share at millions of rows: a month filter always applied, the user's accounts as the
    account filter (a small table), an estimated count, sorting on the day only (the indexed column), no facets,
    no date hierarchy (its DISTINCT over dates)."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    ordering = ("-day",)
    list_per_page = 100
    list_select_related = ("account",)

    def get_changelist(self, request, **kwargs):
        return BoundedSortChangeList

    def get_sortable_by(self, request):
        return ("day",)

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"subtitle": LARGE_LIST_NOTE, **(extra_context or {})})


@admin.register(CostDailyRollup)
class CostDailyRollupAdmin(LargeRollupListMixin, TeamScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "day",
        "account",
        "service_name",
        "sub_account_id",
        "region_id",
        "billed_money",
        "effective_money",
        "line_count",
    )
    list_filter = (
        RollupMonthFilter,
        CostLineAccountFilter,
        RollupServiceFilter,
        fixed_values_filter("service category", "service_category", focus.SERVICE_CATEGORIES),
    )
    billed_money = money_column("billed_cost", currency="billing_currency", description="billed cost")
    effective_money = money_column("effective_cost", currency="billing_currency", description="effective cost")
    search_fields = ("service_name",)
    search_help_text = "Exact service name (within the month)"

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(service_name=term) if term else queryset), False


from . import admin_tags  # noqa: E402,F401  (cost allocation tags and their rollups)
