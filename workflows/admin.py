from __future__ import annotations

from django.contrib import admin

from workflows.models import AllocationRule, ParLevel, ReimbursementRate


@admin.register(AllocationRule)
class AllocationRuleAdmin(admin.ModelAdmin):
    list_display = ("department", "cost_center", "gl_account", "share", "is_active", "approved_by")
    list_filter = ("is_active", "department")


@admin.register(ParLevel)
class ParLevelAdmin(admin.ModelAdmin):
    list_display = ("item_code", "location", "on_hand", "reorder_point", "par", "supplier")
    list_filter = ("location",)
    search_fields = ("item_code", "description")


@admin.register(ReimbursementRate)
class ReimbursementRateAdmin(admin.ModelAdmin):
    list_display = ("payer_id", "payer_name", "percent", "is_active", "approved_by")
    list_filter = ("is_active",)
    search_fields = ("payer_id", "payer_name")
