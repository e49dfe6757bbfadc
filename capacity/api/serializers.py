"""Input and output serializers of the capacity API: they parse and render, nothing more."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Organization
from capacity.models import (
    MAX_PRICE_PER_GPU_HOUR,
    PRICE_BOUND_MESSAGE,
    PRICE_DECIMALS_MESSAGE,
    WINDOW_MAX_LEAD,
    WINDOW_MAX_LENGTH,
    Currency,
    EnergySource,
    GpuModel,
    NodeStatus,
    Region,
    Site,
    WindowKind,
    site_figure_errors,
)


@extend_schema_field(
    {"type": "string", "enum": Currency.values, "description": "ISO 4217 currency code."},
    component_name="Currency",
)
class CurrencyField(serializers.ChoiceField):
    """One ``Currency`` component in the schema for every currency field (sites, offers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Currency.choices, **kwargs)


class SiteOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    country = serializers.CharField(help_text="ISO 3166 alpha-2.")
    region = serializers.ChoiceField(choices=Region.choices)
    latitude = serializers.DecimalField(max_digits=8, decimal_places=6)
    longitude = serializers.DecimalField(max_digits=9, decimal_places=6)
    power_capacity_kw = serializers.IntegerField()
    energy_source = serializers.ChoiceField(choices=EnergySource.choices)
    energy_price_per_kwh = serializers.DecimalField(max_digits=10, decimal_places=6)
    energy_currency = CurrencyField()
    created_at = serializers.DateTimeField()


def _site_figure(name: str) -> serializers.DecimalField:
    """A site's decimal figure (6 decimals, as stored), with plain messages."""
    messages: dict[str, Any] = site_figure_errors(name)  # DRF's stubs want lazy strings too
    return serializers.DecimalField(max_digits=20, decimal_places=6, error_messages=messages)


class SiteInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    country = serializers.CharField(max_length=2, min_length=2, help_text="ISO 3166 alpha-2.")
    region = serializers.ChoiceField(choices=Region.choices)
    # Digits well beyond the columns': out of range gets the service's range message, not a
    # count of digits (a bound there is still needed: DRF cannot round 1e400 without one).
    latitude = _site_figure("latitude")
    longitude = _site_figure("longitude")
    power_capacity_kw = serializers.IntegerField(min_value=1)
    energy_source = serializers.ChoiceField(choices=EnergySource.choices)
    energy_price_per_kwh = _site_figure("energy_price_per_kwh")
    energy_currency = CurrencyField(default=Currency.USD)


class GpuDeviceOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    uuid = serializers.CharField()
    model = serializers.CharField(help_text="As the agent reported it.")
    memory_mib = serializers.IntegerField()


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.IntegerField(source="site_id")
    name = serializers.CharField()
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField()
    cpu_cores = serializers.IntegerField()
    ram_gib = serializers.IntegerField()
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    agent_url = serializers.CharField()
    agent_version = serializers.CharField()
    enrolled_at = serializers.DateTimeField(allow_null=True)
    last_poll_at = serializers.DateTimeField(allow_null=True)
    last_successful_poll_at = serializers.DateTimeField(allow_null=True)
    gpu_utilization_pct = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class NodeDetailOutputSerializer(NodeOutputSerializer):
    gpus = GpuDeviceOutputSerializer(many=True, source="gpus.all")


class NodeInputSerializer(serializers.Serializer):
    site = serializers.PrimaryKeyRelatedField(queryset=Site.objects.none())
    name = serializers.CharField(max_length=120)
    gpu_model = serializers.SlugRelatedField(
        slug_field="name",
        queryset=GpuModel.objects.all(),
        help_text='Catalog name, e.g. "H100 SXM 80GB".',
    )
    gpu_count = serializers.IntegerField(min_value=1, max_value=64)
    cpu_cores = serializers.IntegerField(min_value=1)
    ram_gib = serializers.IntegerField(min_value=1)

    def __init__(self, *args: Any, organization: Organization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class EnrollmentCodeOutputSerializer(serializers.Serializer):
    enrollment_code = serializers.CharField(help_text="One-time code. Returned once, never again.")
    expires_at = serializers.DateTimeField()


class NodeCreatedOutputSerializer(NodeOutputSerializer):
    enrollment_code = serializers.CharField(help_text="One-time code. Returned once, never again.")
    enrollment_code_expires_at = serializers.DateTimeField()


class WindowOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    node = serializers.IntegerField(source="node_id")
    kind = serializers.ChoiceField(choices=WindowKind.choices)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    reason = serializers.CharField()
    announced_at = serializers.DateTimeField()
    cancelled_at = serializers.DateTimeField(allow_null=True)


class WindowInputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=WindowKind.choices)
    start = serializers.DateTimeField(
        help_text=f"Within {WINDOW_MAX_LEAD.days} days from now, not in the past."
    )
    end = serializers.DateTimeField(
        help_text=f"After the start, at most {WINDOW_MAX_LENGTH.days} days after it."
    )
    reason = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


def _price(**kwargs: Any) -> serializers.DecimalField:
    """A price per GPU-hour: Decimal, 4 decimals, as stored, at most ``MAX_PRICE_PER_GPU_HOUR``."""
    return serializers.DecimalField(
        max_digits=10,
        decimal_places=4,
        max_value=MAX_PRICE_PER_GPU_HOUR,
        # The digit counts DRF checks first are the bound, said in words.
        error_messages={
            "max_value": PRICE_BOUND_MESSAGE,
            "max_digits": PRICE_BOUND_MESSAGE,
            "max_whole_digits": PRICE_BOUND_MESSAGE,
            "max_decimal_places": PRICE_DECIMALS_MESSAGE,
        },
        **kwargs,
    )


class OfferOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.IntegerField(source="site_id")
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField()
    on_demand_price_per_gpu_hour = _price()
    reserved_price_1m_per_gpu_hour = _price()
    reserved_price_3m_per_gpu_hour = _price()
    reserved_price_6m_per_gpu_hour = _price()
    reserved_price_12m_per_gpu_hour = _price()
    currency = CurrencyField()
    available_from = serializers.DateTimeField()
    available_until = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class OfferInputSerializer(serializers.Serializer):
    site = serializers.PrimaryKeyRelatedField(queryset=Site.objects.none())
    gpu_model = serializers.SlugRelatedField(slug_field="name", queryset=GpuModel.objects.all())
    gpu_count = serializers.IntegerField()
    on_demand_price_per_gpu_hour = _price()
    reserved_price_1m_per_gpu_hour = _price()
    reserved_price_3m_per_gpu_hour = _price()
    reserved_price_6m_per_gpu_hour = _price()
    reserved_price_12m_per_gpu_hour = _price()
    currency = CurrencyField(default=Currency.USD)
    available_from = serializers.DateTimeField(required=False, help_text="Default: now.")
    available_until = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def __init__(self, *args: Any, organization: Organization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class OfferUpdateInputSerializer(serializers.Serializer):
    gpu_count = serializers.IntegerField(required=False)
    on_demand_price_per_gpu_hour = _price(required=False)
    reserved_price_1m_per_gpu_hour = _price(required=False)
    reserved_price_3m_per_gpu_hour = _price(required=False)
    reserved_price_6m_per_gpu_hour = _price(required=False)
    reserved_price_12m_per_gpu_hour = _price(required=False)
    currency = CurrencyField(required=False)
    available_from = serializers.DateTimeField(required=False)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    is_active = serializers.BooleanField(
        required=False, help_text="false deactivates the offer; an inactive offer stays inactive."
    )


class EnrollGpuInputSerializer(serializers.Serializer):
    uuid = serializers.CharField(max_length=64)
    model = serializers.CharField(max_length=64)
    memory_mib = serializers.IntegerField(min_value=1)


class EnrollInputSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=64, help_text="The node's one-time enrollment code.")
    public_key = serializers.CharField(
        max_length=128, help_text="Base64 of the agent's raw 32-byte Ed25519 public key."
    )
    url = serializers.CharField(max_length=300, help_text="http(s) base URL of the agent.")
    gpus = EnrollGpuInputSerializer(many=True, allow_empty=False)
    agent_version = serializers.CharField(max_length=32)


class EnrollOutputSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    poll_token = serializers.CharField(
        help_text="Bearer token the platform sends on every poll. Returned once, never again."
    )
    poll_interval_seconds = serializers.IntegerField()
    platform_public_key = serializers.CharField(
        help_text="Base64 of the platform's raw 32-byte Ed25519 key that signs gateway "
        "receipts (agent protocol v1.1): the agent serves inference only with a receipt "
        "it verifies."
    )
