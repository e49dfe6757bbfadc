"""Template helpers for contracts: money in minor units, state badges, the dashboard card."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import template
from django.utils import timezone

from accounts.tenancy import current_organization
from contracts.dashboard import ChartBar, buyer_dashboard
from contracts.models import ContractState
from contracts.money import minor_to_major

register = template.Library()

_STATE_BADGES = {
    ContractState.DRAFT: "badge-neutral",
    ContractState.ACTIVE: "badge-success",
    ContractState.SUSPENDED: "badge-danger",
    ContractState.CANCELLED: "badge-neutral",
    ContractState.EXPIRED: "badge-neutral",
}


@register.filter
def money(amount_minor: int | None) -> str:
    """Integer minor units → "1234.50"."""
    return "—" if amount_minor is None else f"{minor_to_major(int(amount_minor)):,}"


@register.filter
def contract_state_badge(state: str) -> str:
    return _STATE_BADGES.get(state, "badge-neutral")  # type: ignore[call-overload]


@register.filter
def chart_has_data(bars: Iterable[ChartBar] | None) -> bool:
    """Whether a cost chart has a bar to draw: an all-zero month shows the empty state."""
    return any(bar.amount_minor > 0 for bar in bars or ())


@register.inclusion_tag("contracts/_buyer_dashboard.html", takes_context=True)
def buyer_dashboard_card(context: dict[str, Any]) -> dict[str, Any]:
    """``{% load contracts_ui %}{% buyer_dashboard_card %}``: the buyer section of the
    dashboard for the request's organization, without the view knowing about contracts."""
    request = context["request"]
    organization = current_organization(request)
    return {
        "request": request,
        "buyer_dashboard": buyer_dashboard(organization=organization, now=timezone.now())
        if organization is not None
        else None,
    }
