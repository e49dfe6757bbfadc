"""Staff views of the capacity domain: the GPU catalog is edited here; the rest is read.

Partners change their sites, nodes and offers through the services (partner pages and
API); the admin never bypasses them, so those models are read-only here.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from capacity.models import EnrollmentCode, GpuDevice, GpuModel, Node, NodeWindow, Offer, Site


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    list_display = ["name", "vendor", "family", "memory_mib", "max_power_w"]
    search_fields = ["name", "family"]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Site)
class SiteAdmin(ReadOnlyAdmin):
    list_display = [
        "name",
        "organization",
        "country",
        "region",
        "energy_source",
        "power_capacity_kw",
    ]
    list_filter = ["region", "energy_source"]
    list_select_related = ["organization"]
    search_fields = ["name", "organization__name"]


class GpuDeviceInline(admin.TabularInline):
    model = GpuDevice
    fields = ("index", "uuid", "model", "memory_mib")
    readonly_fields = ("index", "uuid", "model", "memory_mib")
    extra = 0
    can_delete = False


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = ["name", "site", "gpu_model", "gpu_count", "status", "last_successful_poll_at"]
    list_filter = ["status", "gpu_model"]
    list_select_related = ["site", "gpu_model"]
    search_fields = ["name", "site__name", "agent_url"]
    # The poll token's ciphertext is never shown, not even to staff.
    exclude = ["poll_token_ciphertext"]
    inlines = [GpuDeviceInline]


@admin.register(EnrollmentCode)
class EnrollmentCodeAdmin(ReadOnlyAdmin):
    list_display = ["node", "created_at", "expires_at", "used_at", "revoked_at"]
    list_select_related = ["node"]
    exclude = ["code_hash"]


@admin.register(NodeWindow)
class NodeWindowAdmin(ReadOnlyAdmin):
    list_display = ["node", "kind", "period", "announced_at", "cancelled_at"]
    list_filter = ["kind"]
    list_select_related = ["node"]


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdmin):
    list_display = [
        "site",
        "gpu_model",
        "gpu_count",
        "on_demand_price_per_gpu_hour",
        "currency",
        "is_active",
    ]
    list_filter = ["is_active", "gpu_model", "currency"]
    list_select_related = ["site", "gpu_model"]
