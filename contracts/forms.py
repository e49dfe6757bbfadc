"""Buyer forms for contracts: they parse and type the input; the services hold the rules."""

from __future__ import annotations

from django import forms

from contracts.models import InferenceProduct


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
