"""Finance and operators read metering here; nothing is edited by hand (usage is evidence)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from capacity.metering.models import (
    HourlyUsage,
    InferenceDisagreementHour,
    InferenceRequest,
    InferenceUsageHour,
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.metering.selectors import inference_disagreements


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(QuarantinedRecord)
class QuarantinedRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "received_at",
        "node",
        "partner",
        "seq",
        "reason",
        "detail",
        "gpu_uuid",
        "window_start",
    )
    list_filter = ("reason", "node__site__organization", ("received_at", admin.DateFieldListFilter))
    search_fields = ("node__name", "gpu_uuid", "journal_epoch", "detail")
    list_select_related = ("node__site__organization",)
    date_hierarchy = "received_at"

    @admin.display(description="partner", ordering="node__site__organization__name")
    def partner(self, record: QuarantinedRecord) -> str:
        return record.node.site.organization.name


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "window_start",
        "node",
        "gpu",
        "workload_kind",
        "workload_ref",
        "busy_ms",
        "energy_mj",
        "input_tokens",
        "output_tokens",
    )
    list_filter = ("workload_kind", "node__site__organization")
    search_fields = ("node__name", "gpu__uuid", "workload_ref")
    list_select_related = ("node", "gpu")
    show_full_result_count = False


@admin.register(HourlyUsage)
class HourlyUsageAdmin(ReadOnlyAdmin):
    list_display = (
        "hour",
        "node",
        "gpu",
        "workload_kind",
        "workload_ref",
        "busy_ms",
        "energy_mj",
        "record_count",
    )
    list_filter = ("workload_kind",)
    list_select_related = ("node", "gpu")
    date_hierarchy = "hour"


@admin.register(NodePollState)
class NodePollStateAdmin(ReadOnlyAdmin):
    list_display = (
        "node",
        "last_seq",
        "last_success_at",
        "next_poll_at",
        "consecutive_failures",
        "last_error",
        "degraded_reason",
    )
    list_filter = ("consecutive_failures",)
    search_fields = ("node__name",)
    list_select_related = ("node",)


@admin.register(InferenceDisagreementHour)
class InferenceDisagreementHourAdmin(ReadOnlyAdmin):
    """Finance's list of node-hours whose witnesses disagree (docs/gateway.md point 9):
    the gateway's and the agent's token counts side by side, and what was billed."""

    list_display = (
        "hour",
        "node",
        "partner",
        "requests",
        "gateway_input_tokens",
        "agent_input_tokens",
        "gateway_output_tokens",
        "agent_output_tokens",
        "billed_input_tokens",
        "billed_output_tokens",
        "gateway_only_requests",
        "agent_only_requests",
    )
    list_filter = ("node__site__organization",)
    search_fields = ("node__name",)
    list_select_related = ("node__site__organization",)
    date_hierarchy = "hour"
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceDisagreementHour]:
        return inference_disagreements()

    @admin.display(description="partner", ordering="node__site__organization__name")
    def partner(self, row: InferenceDisagreementHour) -> str:
        return row.node.site.organization.name


@admin.register(InferenceRequest)
class InferenceRequestAdmin(ReadOnlyAdmin):
    list_display = (
        "issued_at",
        "request_id",
        "node",
        "line_id",
        "product_slug",
        "gateway_status",
        "gateway_input_tokens",
        "gateway_output_tokens",
        "agent_input_tokens",
        "agent_output_tokens",
        "billed_input_tokens",
        "billed_output_tokens",
    )
    list_filter = ("gateway_status",)
    list_select_related = ("node",)
    date_hierarchy = "issued_at"
    show_full_result_count = False


@admin.register(InferenceUsageHour)
class InferenceUsageHourAdmin(ReadOnlyAdmin):
    list_display = ("hour", "line_id", "node", "input_tokens", "output_tokens", "requests")
    list_select_related = ("node",)
    date_hierarchy = "hour"
