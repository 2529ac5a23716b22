"""Admin for cost allocation tags: which tag keys are rolled up per value (for tag budgets and anomaly dimensions)."""

from django.contrib import admin, messages
from django.db import transaction

from finops.admin_mixins import PlatformAdminOnlyMixin, TeamScopedAdminMixin
from finops.money import money_column

from .admin import (
    CostLineAccountFilter,
    FirstChoiceFilter,
    LargeRollupListMixin,
    RollupMonthFilter,
    RollupServiceFilter,
)
from .models import CostAllocationTag, CostTagRollup
from .services.ingest import tag_rollups_rebuild


@admin.register(CostAllocationTag)
class CostAllocationTagAdmin(PlatformAdminOnlyMixin, admin.ModelAdmin):
    list_display = ("key", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("key",)
    actions = ("rebuild_rollups",)

    def save_model(self, request, obj, form, change):
        was_active = change and CostAllocationTag.objects.filter(pk=obj.pk, is_active=True).exists()
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if obj.is_active and not was_active:
                rows = tag_rollups_rebuild(keys=[obj.key])
                self.message_user(request, f"{obj.key}: rolled up the stored cost lines ({rows} rollup rows)")
            elif not obj.is_active and was_active:
                deleted, _ = CostTagRollup.objects.filter(tag_key=obj.key).delete()
                self.message_user(request, f"{obj.key}: no longer rolled up ({deleted} rollup rows removed)")

    def delete_model(self, request, obj):
        with transaction.atomic():
            CostTagRollup.objects.filter(tag_key=obj.key).delete()
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            CostTagRollup.objects.filter(tag_key__in=list(queryset.values_list("key", flat=True))).delete()
            super().delete_queryset(request, queryset)

    @admin.action(description="Rebuild the rollups of the selected keys from the stored cost lines")
    def rebuild_rollups(self, request, queryset):
        keys = list(queryset.filter(is_active=True).values_list("key", flat=True))
        if not keys:
            self.message_user(request, "none of the selected keys is active", messages.WARNING)
            return
        rows = tag_rollups_rebuild(keys=keys)
        self.message_user(request, f"rebuilt {', '.join(keys)}: {rows} rollup rows")


class TagKeyFilter(FirstChoiceFilter):
    """One tag key at a time, the first cost allocation tag by default (a small table, not a DISTINCT over the
    rollups): with the month, the list reads one range of the (tag_key, day) index."""

    title = "tag key"
    parameter_name = "tag_key"

    def lookups(self, request, model_admin):
        keys = CostAllocationTag.objects.order_by("-is_active", "key").values_list("key", flat=True)
        return [(key, key) for key in keys]

    def queryset(self, request, queryset):
        return queryset.filter(tag_key=self.value()) if self.value() else queryset


@admin.register(CostTagRollup)
class CostTagRollupAdmin(LargeRollupListMixin, TeamScopedAdminMixin, admin.ModelAdmin):
    list_display = ("day", "account", "tag_key", "tag_value", "service_name", "region_id", "billed_money")
    list_filter = (RollupMonthFilter, TagKeyFilter, CostLineAccountFilter, RollupServiceFilter)
    billed_money = money_column("billed_cost", currency="billing_currency", description="billed cost")
    search_fields = ("tag_value",)
    search_help_text = "Exact tag value (within the month and tag key)"

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(tag_value=term) if term else queryset), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
