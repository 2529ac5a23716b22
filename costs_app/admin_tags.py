"""Admin for cost allocation tags: which tag keys are rolled up per value (for tag budgets and anomaly dimensions)."""

from django.contrib import admin, messages
from django.db import transaction

from finops.admin_mixins import PlatformAdminOnlyMixin, TeamScopedAdminMixin

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


@admin.register(CostTagRollup)
class CostTagRollupAdmin(TeamScopedAdminMixin, admin.ModelAdmin):
    list_display = ("day", "account", "tag_key", "tag_value", "service_name", "region_id", "billed_cost")
    list_filter = ("tag_key", ("account", admin.RelatedOnlyFieldListFilter), "billing_currency")
    search_fields = ("tag_value",)
    date_hierarchy = "day"
    list_select_related = ("account",)
    show_full_result_count = False
    # "Show counts" would count every option of every filter over the whole table (millions of rows): off.
    show_facets = admin.ShowFacets.NEVER

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
