"""Input and output serializers of the front door's API: they parse and render, nothing more."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from capacity.api.serializers import CurrencyField
from capacity.models import Currency, EnergySource, GpuModel, Region
from contracts import checkout
from contracts.api.serializers import ContractSerializer, LineSerializer
from contracts.models import TERM_MONTHS
from contracts.money import minor_to_major


class OfferSearchInputSerializer(serializers.Serializer):
    gpu_model = serializers.PrimaryKeyRelatedField(queryset=GpuModel.objects.all(), required=False)
    region = serializers.ChoiceField(choices=Region.choices, required=False)
    country = serializers.CharField(min_length=2, max_length=2, required=False)
    energy_source = serializers.ChoiceField(choices=EnergySource.choices, required=False)
    gpu_count = serializers.IntegerField(
        min_value=1, required=False, help_text="GPUs free over the window, at least."
    )
    starts_at = serializers.DateTimeField(required=False, help_text="Window start; default now.")
    term_months = serializers.ChoiceField(choices=TERM_MONTHS, default=1)
    max_price = serializers.DecimalField(
        max_digits=10, decimal_places=4, required=False, help_text="Per GPU-hour for the term."
    )
    min_availability = serializers.DecimalField(
        max_digits=5, decimal_places=2, required=False, help_text="Percent, 30 days."
    )
    sort = serializers.ChoiceField(
        choices=["price", "-price", "availability", "free"], default="price"
    )


class OfferResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.CharField(source="site.name")
    region = serializers.ChoiceField(choices=Region.choices, source="site.region")
    country = serializers.CharField(source="site.country")
    energy_source = serializers.ChoiceField(
        choices=EnergySource.choices, source="site.energy_source"
    )
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField(help_text="GPUs the offer lists.")
    free_gpus = serializers.IntegerField(help_text="GPUs free over the requested window.")
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=10, decimal_places=4, help_text="Reserved, for the requested term."
    )
    on_demand_price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    availability_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        allow_null=True,
        help_text="Measured over 30 days; null until measured.",
    )
    currency = serializers.ChoiceField(choices=Currency.choices)


class ReservationInputSerializer(serializers.Serializer):
    offer = serializers.IntegerField(
        required=False, help_text="An offer id; or give gpu_model (and region) for the best offer."
    )
    gpu_model = serializers.PrimaryKeyRelatedField(queryset=GpuModel.objects.all(), required=False)
    region = serializers.ChoiceField(choices=Region.choices, required=False)
    gpu_count = serializers.IntegerField(min_value=1)
    starts_at = serializers.DateTimeField()
    term_months = serializers.ChoiceField(choices=TERM_MONTHS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("offer") and not attrs.get("gpu_model"):
            raise serializers.ValidationError("Give an offer, or a gpu_model for the best offer.")
        return attrs


class ReservationCreateInputSerializer(ReservationInputSerializer):
    """A reservation, with what the client was quoted: send back the quote's
    ``price_per_gpu_hour``, ``currency`` and ``total_minor``, and the reservation is refused
    (409) instead of created when the offer prices it differently now."""

    expected_price_per_gpu_hour = serializers.DecimalField(
        max_digits=10,
        decimal_places=4,
        required=False,
        help_text="The quote's price_per_gpu_hour; refused (409) if the price is different now.",
    )
    expected_currency = CurrencyField(
        required=False,
        help_text="The quote's currency; refused (409) if the offer's currency is different.",
    )
    expected_total_minor = serializers.IntegerField(
        min_value=0,
        required=False,
        help_text="The quote's total_minor; refused (409) if the total is different now.",
    )

    def quoted(self) -> checkout.QuotedPrice | None:
        data = self.validated_data
        quoted = checkout.QuotedPrice(
            price_per_gpu_hour=data.get("expected_price_per_gpu_hour"),
            currency=data.get("expected_currency"),
            total_minor=data.get("expected_total_minor"),
        )
        return None if quoted == checkout.QuotedPrice() else quoted


class QuoteSerializer(serializers.Serializer):
    offer = serializers.IntegerField(source="offer.pk")
    gpu_count = serializers.IntegerField()
    term_months = serializers.IntegerField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4)
    hours_per_gpu = serializers.DecimalField(max_digits=14, decimal_places=6)
    total_minor = serializers.IntegerField(help_text="Whole term, minor units (cents).")
    total = serializers.SerializerMethodField()
    monthly_average_minor = serializers.IntegerField()
    currency = serializers.ChoiceField(choices=Currency.choices)
    free_gpus = serializers.IntegerField()

    def get_total(self, quote: checkout.Quote) -> str:
        return str(minor_to_major(quote.total_minor))


class ReservationSerializer(serializers.Serializer):
    contract = ContractSerializer()
    line = LineSerializer()
    quote = QuoteSerializer()
    allocated_gpus = serializers.IntegerField()
