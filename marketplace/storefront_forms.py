"""Buyer storefront forms: search filters and the reservation request. They parse and type
the input; ``marketplace.search`` and ``contracts.checkout`` hold the rules."""

from __future__ import annotations

import secrets
from datetime import UTC
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import timezone

from capacity.forms import DateTimeLocalInput
from capacity.models import Currency, EnergySource, GpuModel, Region
from contracts.checkout import Quote, QuotedPrice, start_problem
from marketplace.search import SORTS, SearchFilters, listed_gpu_models, listed_regions

TERM_CHOICES = [(1, "1 month"), (3, "3 months"), (6, "6 months"), (12, "12 months")]
SORT_CHOICES = [
    ("price", "Lowest price"),
    ("availability", "Highest availability"),
    ("free", "Most GPUs free"),
]
assert {value for value, _ in SORT_CHOICES} <= set(SORTS)


def _utc(value):  # type: ignore[no-untyped-def]
    """A ``datetime-local`` value is entered in UTC (the page says so)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _offer_only_listed(form: forms.Form) -> None:
    """Offer only the GPU models and regions some active offer lists."""
    form.fields["gpu_model"].queryset = listed_gpu_models()  # type: ignore[attr-defined]
    form.fields["region"].choices = [("", "Any region"), *listed_regions()]  # type: ignore[attr-defined]


class SearchForm(forms.Form):
    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.all(), required=False, empty_label="Any model", label="GPU model"
    )
    region = forms.ChoiceField(choices=[("", "Any region"), *Region.choices], required=False)
    country = forms.CharField(max_length=2, min_length=2, required=False, help_text="e.g. US")
    gpu_count = forms.IntegerField(min_value=1, max_value=512, required=False, label="GPUs")
    starts_at = forms.DateTimeField(
        required=False, widget=DateTimeLocalInput(), label="Start (UTC)", help_text="Empty: now"
    )
    term_months = forms.TypedChoiceField(
        choices=TERM_CHOICES, coerce=int, initial=1, required=False, label="Term"
    )
    max_price = forms.DecimalField(
        max_digits=10,
        decimal_places=4,
        min_value=Decimal("0"),
        required=False,
        label="Max price / GPU-h",
    )
    energy_source = forms.ChoiceField(
        choices=[("", "Any energy"), *EnergySource.choices], required=False, label="Energy"
    )
    min_availability = forms.DecimalField(
        max_digits=5,
        decimal_places=2,
        min_value=Decimal("0"),
        max_value=Decimal("100"),
        required=False,
        label="Min 30-day availability %",
    )
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False, initial="price")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _offer_only_listed(self)

    def clean_starts_at(self):  # type: ignore[no-untyped-def]
        """A start checkout would refuse is refused here with checkout's reason, rather
        than searched and answered with an empty list."""
        starts_at = _utc(self.cleaned_data.get("starts_at"))
        if starts_at is not None:
            problem = start_problem(starts_at=starts_at, now=timezone.now())
            if problem is not None:
                raise forms.ValidationError(problem, code="start")
        return starts_at

    def filters(self) -> SearchFilters:
        data = self.cleaned_data if self.is_valid() else {}
        model = data.get("gpu_model")
        return SearchFilters(
            gpu_model_id=model.pk if model else None,
            region=data.get("region") or None,
            country=(data.get("country") or "").upper() or None,
            gpu_count=data.get("gpu_count"),
            starts_at=_utc(data.get("starts_at")),
            term_months=data.get("term_months") or 1,
            max_price=data.get("max_price"),
            energy_source=data.get("energy_source") or None,
            min_availability=data.get("min_availability"),
            sort=data.get("sort") or "price",
        )


class ReservationForm(forms.Form):
    """What to reserve: an offer (or the best one for a model and region), how many, when."""

    offer = forms.IntegerField(required=False, widget=forms.HiddenInput)
    gpu_model = forms.ModelChoiceField(
        queryset=GpuModel.objects.all(), required=False, label="GPU model"
    )
    region = forms.ChoiceField(choices=[("", "Any region"), *Region.choices], required=False)
    gpu_count = forms.IntegerField(min_value=1, max_value=512, initial=1, label="GPUs")
    starts_at = forms.DateTimeField(widget=DateTimeLocalInput(), label="Start (UTC)")
    term_months = forms.TypedChoiceField(choices=TERM_CHOICES, coerce=int, initial=1, label="Term")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _offer_only_listed(self)

    def clean_starts_at(self):  # type: ignore[no-untyped-def]
        return _utc(self.cleaned_data["starts_at"])

    def clean(self):  # type: ignore[no-untyped-def]
        cleaned = super().clean()
        assert cleaned is not None  # Form.clean returns cleaned_data
        if not cleaned.get("offer") and not cleaned.get("gpu_model"):
            raise forms.ValidationError("Pick an offer, or a GPU model to find the best offer.")
        return cleaned


_NOT_FROM_A_QUOTE = "This confirmation does not carry its quote; get a quote and confirm it."


class CheckoutForm(ReservationForm):
    """The confirmation of a quote: the reservation, the price the buyer was shown for it
    (checkout refuses when the offer prices it differently now), and a key minted when the
    quote page rendered this form, so a second submission of it creates nothing."""

    quoted_price_per_gpu_hour = forms.DecimalField(
        max_digits=10,
        decimal_places=4,
        widget=forms.HiddenInput,
        error_messages={"required": _NOT_FROM_A_QUOTE},
    )
    quoted_currency = forms.ChoiceField(
        choices=Currency.choices,
        widget=forms.HiddenInput,
        error_messages={"required": _NOT_FROM_A_QUOTE},
    )
    quoted_total_minor = forms.IntegerField(
        min_value=0, widget=forms.HiddenInput, error_messages={"required": _NOT_FROM_A_QUOTE}
    )
    submission_key = forms.CharField(
        min_length=16,
        max_length=64,
        widget=forms.HiddenInput,
        error_messages={"required": _NOT_FROM_A_QUOTE},
    )

    @classmethod
    def for_quote(cls, quote: Quote) -> CheckoutForm:
        """A fresh confirmation of ``quote``, with a new submission key."""
        return cls(
            initial={
                "quoted_price_per_gpu_hour": quote.price_per_gpu_hour,
                "quoted_currency": quote.currency,
                "quoted_total_minor": quote.total_minor,
                "submission_key": secrets.token_urlsafe(24),
            }
        )

    def quoted(self) -> QuotedPrice:
        data = self.cleaned_data
        return QuotedPrice(
            price_per_gpu_hour=data["quoted_price_per_gpu_hour"],
            currency=data["quoted_currency"],
            total_minor=data["quoted_total_minor"],
        )
