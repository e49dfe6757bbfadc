"""Input and output serializers of the buyers' API: they parse and render, nothing more."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from capacity.models import Currency
from contracts import usage
from contracts.models import ContractState, LineKind


@extend_schema_field(
    {"type": "string", "enum": LineKind.values, "description": "What a contract line buys."},
    component_name="ContractLineKind",
)
class LineKindField(serializers.ChoiceField):
    """Its own schema component: ``kind`` is also the name of capacity's window kinds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=LineKind.choices, **kwargs)


class ContractSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.CharField()
    state = serializers.ChoiceField(choices=ContractState.choices)
    currency = serializers.ChoiceField(choices=Currency.choices)
    starts_at = serializers.DateTimeField()
    term_months = serializers.IntegerField()
    term_ends_at = serializers.DateTimeField()
    auto_renew = serializers.BooleanField()
    cancel_at_term_end = serializers.BooleanField()
    monthly_commitment_minor = serializers.IntegerField()
    early_termination_fee_percent = serializers.DecimalField(max_digits=5, decimal_places=2)
    early_termination_fee_minor = serializers.IntegerField()
    sla_target_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        source="sla_policy.target_percent",
        allow_null=True,
        default=None,
    )
    created_at = serializers.DateTimeField()


class LineSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = LineKindField()
    offer = serializers.IntegerField(source="offer_id", allow_null=True)
    inference_product = serializers.CharField(
        source="inference_product.slug", allow_null=True, default=None
    )
    gpu_count = serializers.IntegerField()
    term_months = serializers.IntegerField(allow_null=True)
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4, allow_null=True)
    input_price_per_million_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True
    )
    output_price_per_million_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True
    )
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class AllocationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    line = serializers.IntegerField(source="line_id")
    gpu_uuid = serializers.CharField(source="gpu_device.uuid")
    node = serializers.CharField(source="gpu_device.node.name")
    site = serializers.CharField(source="gpu_device.node.site.name")
    starts_at = serializers.DateTimeField(source="period.lower")
    ends_at = serializers.DateTimeField(source="period.upper")


class UsageBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    busy_ms = serializers.IntegerField()
    energy_mj = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    requests = serializers.IntegerField()
    cost = serializers.DecimalField(
        max_digits=20,
        decimal_places=2,
        help_text="What the bucket's billable usage costs (reserved GPUs while held, "
        "on-demand use), in currency; SLA credits are the month's and not included.",
    )
    currency = serializers.CharField()


# The CSV's column headers, with units (the JSON keeps its names: units are in them).
USAGE_CSV_HEADERS = {
    "start": "start (UTC)",
    "busy_ms": "busy GPU time (ms)",
    "energy_mj": "energy (mJ)",
    "input_tokens": "input tokens (tokens)",
    "output_tokens": "output tokens (tokens)",
    "requests": "requests (count)",
    "cost": "cost ({currency})",
    "currency": "currency (ISO 4217)",
}


class UsageInputSerializer(serializers.Serializer):
    bucket = serializers.ChoiceField(choices=usage.BUCKETS, default="day")
    since = serializers.DateTimeField(
        required=False, help_text="Default: 30 days (day) or 48 hours (hour) ago."
    )
    until = serializers.DateTimeField(required=False, help_text="Default: now.")


class InferenceKeySerializer(serializers.Serializer):
    id = serializers.IntegerField(source="key_id")
    name = serializers.CharField(source="key_name")
    prefix = serializers.CharField(source="key_prefix")


class ExactDecimalField(serializers.Field):
    """A Decimal as its exact plain string ("0.0000123"), never rounded or in E-notation."""

    def to_representation(self, value: Any) -> str:
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text


@extend_schema_field({"type": "string", "example": "0.0000123"})
class CostField(ExactDecimalField):
    pass


class InferenceRequestSerializer(serializers.Serializer):
    """One inference request: both witnesses' tokens and what it cost (``cost`` exact, in
    ``currency``; invoices round the month's sum per line once)."""

    request_id = serializers.SerializerMethodField()
    key = InferenceKeySerializer(source="*")
    product = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["metered", "awaiting_node"],
        help_text="metered: the node's record is in, billed tokens are final; awaiting_node:"
        " only the gateway's log so far, nothing billed yet.",
    )
    gateway_status = serializers.IntegerField(allow_null=True)
    gateway_input_tokens = serializers.IntegerField(allow_null=True)
    gateway_output_tokens = serializers.IntegerField(allow_null=True)
    billed_input_tokens = serializers.IntegerField()
    billed_output_tokens = serializers.IntegerField()
    cost = CostField()
    currency = serializers.ChoiceField(choices=Currency.choices)
    issued_at = serializers.DateTimeField()
    served_at = serializers.DateTimeField(allow_null=True)
    time_to_first_token_ms = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)

    def get_request_id(self, row: Any) -> str:
        """32 hex digits, as the receipt's ``rid`` and the gateway's ``X-Request-Id``."""
        return str(row.request_id.hex)


class InferenceExportInputSerializer(serializers.Serializer):
    month = serializers.RegexField(
        r"^2\d{3}-(0[1-9]|1[0-2])$", help_text="A UTC calendar month, YYYY-MM (2000-2999)."
    )

    def validate_month(self, value: str) -> datetime:
        """The month's first instant (UTC)."""
        return datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
