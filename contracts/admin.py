"""Contracts in the admin: read-mostly. State changes go through contracts.lifecycle."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.requests import request_actor
from contracts import lifecycle
from contracts.admin_money import MoneyColumnsMixin
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    InferenceProduct,
    SlaCreditTier,
    SlaPolicy,
)


class ContractLineInline(MoneyColumnsMixin, admin.TabularInline):
    model = ContractLine
    extra = 0
    can_delete = False
    fields = (
        "kind",
        "offer",
        "inference_product",
        "gpu_count",
        "price_per_gpu_hour",
        "starts_at",
        "ends_at",
    )
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Contract)
class ContractAdmin(MoneyColumnsMixin, admin.ModelAdmin):
    list_display = (
        "reference",
        "buyer",
        "state",
        "currency",
        "starts_at",
        "term_ends_at",
        "auto_renew",
    )
    list_filter = ("state", "currency", "auto_renew")
    search_fields = ("buyer__name", "id")
    list_select_related = ("buyer",)
    date_hierarchy = "starts_at"
    inlines = [ContractLineInline]
    actions = ["suspend_selected", "resume_selected"]
    readonly_fields = [field.name for field in Contract._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Suspend selected contracts")
    def suspend_selected(self, request: HttpRequest, queryset: QuerySet[Contract]) -> None:
        self._apply(
            request,
            queryset,
            "suspended",
            lambda contract: lifecycle.contract_suspend(
                contract=contract,
                actor=request_actor(request),
                reason="Suspended by finance",
            ),
        )

    @admin.action(description="Resume selected contracts")
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Contract]) -> None:
        self._apply(
            request,
            queryset,
            "resumed",
            lambda contract: lifecycle.contract_resume(
                contract=contract,
                actor=request_actor(request),
            ),
        )

    def _apply(self, request: HttpRequest, queryset: QuerySet[Contract], verb: str, action) -> None:  # type: ignore[no-untyped-def]
        done = 0
        for contract in queryset:
            try:
                action(contract)
            except ValidationError as error:  # IllegalTransition included
                self.message_user(request, f"{contract.reference}: {error}", messages.ERROR)
            else:
                done += 1
        if done:
            self.message_user(request, f"{done} contract(s) {verb}.", messages.SUCCESS)


@admin.register(ContractLine)
class ContractLineAdmin(MoneyColumnsMixin, admin.ModelAdmin):
    list_display = ("id", "contract", "kind", "gpu_count", "starts_at", "ends_at")
    list_filter = ("kind",)
    search_fields = ("contract__buyer__name",)
    list_select_related = ("contract__buyer",)
    readonly_fields = [field.name for field in ContractLine._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = ("id", "line", "gpu_device", "period")
    search_fields = ("gpu_device__uuid",)
    list_select_related = ("line", "gpu_device")
    readonly_fields = [field.name for field in Allocation._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class SlaCreditTierInline(admin.TabularInline):
    model = SlaCreditTier
    extra = 0


@admin.register(SlaPolicy)
class SlaPolicyAdmin(admin.ModelAdmin):
    list_display = ("name", "target_percent", "is_default")
    inlines = [SlaCreditTierInline]


@admin.register(InferenceProduct)
class InferenceProductAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "input_price_per_million_tokens",
        "output_price_per_million_tokens",
        "max_tokens_per_second_per_gpu",
        "is_active",
    )
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
