"""Buyer forms for contracts: they parse and type the input; the services hold the rules."""

from __future__ import annotations

from decimal import Decimal

from django import forms

from contracts.models import InferenceProduct
from contracts.money import MINOR_UNITS_PER_MAJOR


class OnDemandForm(forms.Form):
    """Enable an inference product, or on-demand GPU time on an offer the contract uses."""

    choice = forms.ChoiceField(label="What to enable")

    def __init__(self, *args: object, offers: list, **kwargs: object) -> None:  # type: ignore[type-arg]
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        products = InferenceProduct.objects.filter(is_active=True).order_by("name")
        choices = [
            (
                f"product:{product.pk}",
                f"Inference: {product.name} ({product.input_price_per_million_tokens} in / "
                f"{product.output_price_per_million_tokens} out {product.currency} per M tokens)",
            )
            for product in products
        ]
        choices += [
            (
                f"offer:{offer.pk}",
                f"On-demand GPU: {offer.gpu_model.name} at {offer.site.name} "
                f"({offer.on_demand_price_per_gpu_hour} {offer.currency} per busy GPU-hour)",
            )
            for offer in offers
        ]
        self.fields["choice"].choices = choices  # type: ignore[attr-defined]


class LineApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=80, help_text="A name to tell keys apart, e.g. “chatbot prod”."
    )


def _cap_field(label: str) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=False,
        max_digits=14,
        decimal_places=2,
        help_text="In the contract's currency, e.g. 250.00. Leave empty for no cap.",
    )


def cap_to_minor(cap: Decimal | None) -> int | None:
    """A cap typed in major units (two places at most) → integer minor units."""
    return None if cap is None else int(cap * MINOR_UNITS_PER_MAJOR)


class InferenceCapForm(forms.Form):
    """The contract's monthly inference cap; the service checks its bounds."""

    # Named after the model field, so a service's error lands on it.
    inference_monthly_cap_minor = _cap_field("Monthly inference cap")


class LineApiKeyLimitsForm(forms.Form):
    """A key's monthly cap and rate limits; the service checks their bounds."""

    monthly_cap_minor = _cap_field("Monthly spend cap of this key")
    requests_per_minute = forms.IntegerField(
        required=False, help_text="Leave empty for the platform's default."
    )
    tokens_per_minute = forms.IntegerField(
        required=False, help_text="Input + output tokens. Leave empty for the platform's default."
    )
