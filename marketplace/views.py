"""Pages of the front door that belong to no organization page: landing, dashboard, health.

The dashboard reads every layer below (the organization's summary, its buying, its
fleet); it writes nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts import selectors as account_selectors
from accounts.tenancy import current_membership
from capacity import selectors as capacity_selectors
from capacity.models import NodeStatus
from contracts.dashboard import buyer_dashboard
from contracts.inference_snippets import inference_base_url, snippets
from contracts.reference_data import PRODUCTS
from marketplace import health

# Nodes listed on a partner's dashboard; the nodes page lists them all.
DASHBOARD_NODE_ROWS = 10


# -- landing, dashboard, health ----------------------------------------------------------


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "marketplace/landing.html")


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The organization's home: its buying and, for partners, its fleet at a glance."""
    membership = current_membership(request)
    if membership is None:
        return redirect("organization_create")
    organization = membership.organization
    context: dict[str, Any] = {
        "membership": membership,
        "summary": account_selectors.organization_summary(organization=organization),
    }
    if organization.is_buyer:
        context["buyer_dashboard"] = buyer_dashboard(organization=organization, now=timezone.now())
    if organization.is_partner:
        context["partner_overview"] = capacity_selectors.partner_overview(organization)
        # One query whatever the fleet size; the full list is on the nodes page.
        context["partner_nodes"] = list(
            capacity_selectors.node_list(organization=organization).exclude(
                status=NodeStatus.RETIRED
            )[:DASHBOARD_NODE_ROWS]
        )
    return render(request, "marketplace/dashboard.html", context)


@require_GET
def inference_api_docs(request: HttpRequest) -> HttpResponse:
    """How to call the gateway: base URL, endpoints, errors, an example (public)."""
    example_model = PRODUCTS[0][0]
    return render(
        request,
        "marketplace/inference_api.html",
        {"base_url": inference_base_url(), "snippets": snippets(model=example_model)},
    )


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = health.database_ok()
    broker = health.broker_ok()
    status = 200 if database and broker else 503
    return JsonResponse(
        {
            "status": "ok" if status == 200 else "unavailable",
            "database": "ok" if database else "down",
            "broker": "ok" if broker else "down",
        },
        status=status,
    )
