"""Partner forms: they parse and type the input; the services hold the rules.

Plain ``Form``s rather than ``ModelForm``s, so model constraints are not re-checked here
with generic messages: the service reports every rule with its own.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from accounts.models import Organization
from capacity.models import (
    MAX_PRICE_PER_GPU_HOUR,
    PRICE_BOUND_MESSAGE,
    PRICE_DECIMALS_MESSAGE,
    PRICE_POSITIVE_MESSAGE,
    WINDOW_MAX_LEAD,
    WINDOW_MAX_LENGTH,
    Currency,
    EnergySource,
    GpuModel,
    NodeStatus,
    Offer,
    Region,
    Site,
    WindowKind,
    site_figure_errors,
)


def _price(label: str) -> forms.DecimalField:
    """A price per GPU-hour as stored: Decimal, 4 decimals, at most ``MAX_PRICE_PER_GPU_HOUR``
    (the service checks it is > 0). No digit count: the bound says it in words, once."""
    return forms.DecimalField(
        max_digits=None,
        decimal_places=4,
        min_value=Decimal("0"),
        max_value=MAX_PRICE_PER_GPU_HOUR,
        error_messages={
            "max_value": PRICE_BOUND_MESSAGE,
            "min_value": PRICE_POSITIVE_MESSAGE,
            "max_decimal_places": PRICE_DECIMALS_MESSAGE,
        },
        label=label,
    )


def _site_figure(name: str, **kwargs: str) -> forms.DecimalField:
    """A site's decimal figure (6 decimals, as stored), with plain messages."""
    return forms.DecimalField(
        max_digits=20,
        decimal_places=6,
        error_messages=site_figure_errors(name),
        **kwargs,  # type: ignore[arg-type]
    )


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M")


def add_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Attach a service's ValidationError to ``form``: to its fields where they exist."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error.messages)


class SiteForm(forms.Form):
    name = forms.CharField(max_length=120)
    country = forms.CharField(
        max_length=2, min_length=2, help_text="ISO 3166 two-letter code, e.g. US, OM, PY."
    )
    region = forms.ChoiceField(choices=Region.choices)
    # Digits well beyond the columns': a number out of range gets the service's range
    # message; one too long to hold gets the same message, not a count of digits.
    latitude = _site_figure("latitude", help_text="Degrees, -90 to 90.")
    longitude = _site_figure("longitude", help_text="Degrees, -180 to 180.")
    power_capacity_kw = forms.IntegerField(
        min_value=1, label="Power capacity (kW)", help_text="Power available to GPU nodes."
    )
    energy_source = forms.ChoiceField(choices=EnergySource.choices)
    energy_price_per_kwh = _site_figure("energy_price_per_kwh", label="Energy price per kWh")
    energy_currency = forms.ChoiceField(choices=Currency.choices, initial=Currency.USD)

    @classmethod
    def initial_for(cls, site: Site) -> dict[str, object]:
        return {name: getattr(site, name) for name in cls.base_fields}


class NodeForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.none())
    name = forms.CharField(max_length=120)
    gpu_model = forms.ModelChoiceField(queryset=GpuModel.objects.all(), label="GPU model")
    gpu_count = forms.IntegerField(min_value=1, max_value=64, label="GPUs")
    cpu_cores = forms.IntegerField(min_value=1, label="CPU cores")
    ram_gib = forms.IntegerField(min_value=1, label="RAM (GiB)")

    def __init__(self, *args: object, organization: Organization, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class NodeFilterForm(forms.Form):
    site = forms.ModelChoiceField(
        queryset=Site.objects.none(), required=False, empty_label="All sites"
    )
    status = forms.ChoiceField(choices=[("", "All statuses"), *NodeStatus.choices], required=False)

    def __init__(self, *args: object, organization: Organization, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class WindowForm(forms.Form):
    kind = forms.ChoiceField(choices=WindowKind.choices)
    start = forms.DateTimeField(
        widget=DateTimeLocalInput(),
        help_text=f"UTC, within {WINDOW_MAX_LEAD.days} days from now.",
    )
    end = forms.DateTimeField(
        widget=DateTimeLocalInput(),
        help_text=f"UTC, at most {WINDOW_MAX_LENGTH.days} days after the start.",
    )
    reason = forms.CharField(max_length=200, required=False)


class OfferForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.none())
    gpu_model = forms.ModelChoiceField(queryset=GpuModel.objects.all(), label="GPU model")
    gpu_count = forms.IntegerField(min_value=1, label="GPUs listed")
    on_demand_price_per_gpu_hour = _price("On-demand price per GPU-hour")
    reserved_price_1m_per_gpu_hour = _price("Reserved 1 month, per GPU-hour")
    reserved_price_3m_per_gpu_hour = _price("Reserved 3 months, per GPU-hour")
    reserved_price_6m_per_gpu_hour = _price("Reserved 6 months, per GPU-hour")
    reserved_price_12m_per_gpu_hour = _price("Reserved 12 months, per GPU-hour")
    currency = forms.ChoiceField(choices=Currency.choices, initial=Currency.USD)
    available_from = forms.DateTimeField(
        widget=DateTimeLocalInput(), required=False, help_text="UTC; empty = now."
    )
    available_until = forms.DateTimeField(
        widget=DateTimeLocalInput(), required=False, help_text="UTC; empty = open-ended."
    )

    def __init__(
        self, *args: object, organization: Organization, editing: bool = False, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]
        if editing:
            # Site and model define the pool; a different pool is a new offer.
            del self.fields["site"]
            del self.fields["gpu_model"]

    @classmethod
    def initial_for(cls, offer: Offer) -> dict[str, object]:
        return {name: getattr(offer, name) for name in cls.base_fields if hasattr(offer, name)}
