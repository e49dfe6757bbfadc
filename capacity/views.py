"""Partner pages: sites, nodes (enrollment, windows, retirement) and offers.

Thin: parse the form, call one service or selector, render. Every object comes from
``get_for_org_or_404``, so another tenant's object answers 404. Reading needs a partner
organization; changing needs an operator role (owner, admin, member).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.models import OPERATOR_ROLES
from accounts.pages import render_confirm
from accounts.requests import request_actor, request_organization
from accounts.tenancy import (
    current_membership,
    get_for_org_or_404,
    org_required,
)
from capacity import agent_setup, selectors, services
from capacity.forms import (
    NodeFilterForm,
    NodeForm,
    OfferForm,
    SiteForm,
    WindowForm,
    add_service_errors,
)
from capacity.metering import selectors as metering_selectors
from capacity.models import Node, NodeWindow, Offer, Site

PAGE_SIZE = 25

partner_member = org_required(partner=True)
partner_operator = org_required(OPERATOR_ROLES, partner=True)


def _page(request: HttpRequest, queryset: Any) -> Any:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def _can_operate(request: HttpRequest) -> bool:
    membership = current_membership(request)
    return membership is not None and membership.can_operate


# ----------------------------------------------------------------------------- sites


@partner_member
@require_http_methods(["GET"])
def site_list(request: HttpRequest) -> HttpResponse:
    sites = selectors.site_list(organization=request_organization(request))
    return render(
        request,
        "capacity/site_list.html",
        {"page_obj": _page(request, sites), "can_operate": _can_operate(request)},
    )


@partner_operator
@require_http_methods(["GET", "POST"])
def site_create(request: HttpRequest) -> HttpResponse:
    form = SiteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            site = services.site_create(
                organization=request_organization(request),
                actor=request_actor(request),
                **form.cleaned_data,
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Site {site.name} created.")
            return redirect("capacity:site_detail", pk=site.pk)
    return render(request, "capacity/site_form.html", {"form": form, "site": None})


@partner_member
@require_http_methods(["GET"])
def site_detail(request: HttpRequest, pk: int) -> HttpResponse:
    site = get_for_org_or_404(Site.objects.all(), request, pk=pk)
    organization = request_organization(request)
    return render(
        request,
        "capacity/site_detail.html",
        {
            "site": site,
            "nodes": selectors.node_list(organization=organization, site=site),
            "offers": selectors.offer_list(organization=organization).filter(site=site),
            "can_operate": _can_operate(request),
        },
    )


@partner_operator
@require_http_methods(["GET", "POST"])
def site_update(request: HttpRequest, pk: int) -> HttpResponse:
    site = get_for_org_or_404(Site.objects.all(), request, pk=pk)
    form = SiteForm(request.POST or None, initial=SiteForm.initial_for(site))
    if request.method == "POST" and form.is_valid():
        try:
            services.site_update(site=site, actor=request_actor(request), data=form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Site updated.")
            return redirect("capacity:site_detail", pk=site.pk)
    return render(request, "capacity/site_form.html", {"form": form, "site": site})


# ----------------------------------------------------------------------------- nodes


@partner_member
@require_http_methods(["GET"])
def node_list(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    filters = NodeFilterForm(request.GET or None, organization=organization)
    site = status = None
    if filters.is_valid():
        site = filters.cleaned_data["site"]
        status = filters.cleaned_data["status"]
    nodes = selectors.node_list(organization=organization, site=site, status=status)
    return render(
        request,
        "capacity/node_list.html",
        {
            "page_obj": _page(request, nodes),
            "filters": filters,
            "can_operate": _can_operate(request),
        },
    )


def _enroll_command(code: str) -> str:
    return agent_setup.enroll_command(platform_url=settings.SITE_URL, code=code)


def _render_node(
    request: HttpRequest, node: Node, *, enrollment_code: str | None = None, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "capacity/node_detail.html",
        {
            "node": node,
            "gpus": selectors.node_gpus(node=node),
            "windows": selectors.node_windows(node=node),
            "served_products": selectors.node_served_products(node=node),
            "workloads": selectors.node_workloads(node=node, now=timezone.now()),
            "enrollment_code": enrollment_code,
            "enroll_command": _enroll_command(enrollment_code) if enrollment_code else None,
            "setup_steps": agent_setup.enrollment_steps(
                platform_url=settings.SITE_URL, code=enrollment_code or "<enrollment-code>"
            ),
            "systemd_unit": agent_setup.systemd_unit(),
            "can_operate": _can_operate(request),
            "availability": metering_selectors.node_availability(node=node),
            "health_history": metering_selectors.node_health_history(node=node),
            "quarantined": metering_selectors.quarantined_records_for_node(node=node),
            "quarantine_counts": metering_selectors.quarantine_counts_for_node(node=node),
            "poll_state": metering_selectors.node_poll_state(node=node),
        },
        status=status,
    )


@partner_operator
@require_http_methods(["GET", "POST"])
def node_create(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    form = NodeForm(
        request.POST or None, organization=organization, initial={"site": request.GET.get("site")}
    )
    if request.method == "POST" and form.is_valid():
        try:
            created = services.node_create(actor=request_actor(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            # Rendered, not redirected: the code is shown in this response only.
            messages.success(
                request, f"Node {created.node.name} created. Enroll its agent with the code below."
            )
            return _render_node(
                request, created.node, enrollment_code=created.enrollment_code, status=201
            )
    return render(request, "capacity/node_form.html", {"form": form})


@partner_member
@require_http_methods(["GET"])
def node_detail(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_for_org_or_404(Node.objects.select_related("site", "gpu_model"), request, pk=pk)
    return _render_node(request, node)


@partner_operator
@require_http_methods(["GET", "POST"])
def enrollment_code_regenerate(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_for_org_or_404(Node.objects.select_related("site", "gpu_model"), request, pk=pk)
    if request.method == "GET":
        return render_confirm(
            request,
            title=f"New enrollment code for {node.name}?",
            message="The current code stops working. The new one is valid for 24 hours.",
            action_label="Generate code",
            cancel_url=reverse("capacity:node_detail", args=[node.pk]),
            danger=False,
        )
    try:
        issued = services.enrollment_code_regenerate(node=node, actor=request_actor(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("capacity:node_detail", pk=node.pk)
    return _render_node(request, node, enrollment_code=issued.code)


@partner_operator
@require_http_methods(["GET", "POST"])
def window_create(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_for_org_or_404(Node.objects.select_related("site"), request, pk=pk)
    form = WindowForm(
        request.POST or None, initial={"kind": request.GET.get("kind", "maintenance")}
    )
    if request.method == "POST" and form.is_valid():
        try:
            window = services.window_schedule(
                node=node, actor=request_actor(request), **form.cleaned_data
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"{window.get_kind_display()} window scheduled.")
            return redirect("capacity:node_detail", pk=node.pk)
    return render(
        request,
        "capacity/window_form.html",
        {
            "form": form,
            "node": node,
            "maintenance_allowance_hours": settings.SLA_MAINTENANCE_ALLOWANCE_HOURS,
        },
    )


@partner_operator
@require_http_methods(["GET", "POST"])
def window_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    window = get_for_org_or_404(NodeWindow.objects.select_related("node"), request, pk=pk)
    node_url = reverse("capacity:node_detail", args=[window.node_id])
    if request.method == "GET":
        return render_confirm(
            request,
            title=f"Cancel this {window.get_kind_display().lower()} window?",
            message=f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC on {window.node.name}.",
            action_label="Cancel window",
            cancel_url=node_url,
            danger=True,
        )
    try:
        services.window_cancel(window=window, actor=request_actor(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Window cancelled.")
    return redirect(node_url)


@partner_operator
@require_http_methods(["GET", "POST"])
def node_retire(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_for_org_or_404(Node.objects.select_related("site"), request, pk=pk)
    node_url = reverse("capacity:node_detail", args=[node.pk])
    if request.method == "GET":
        return render_confirm(
            request,
            title=f"Retire {node.name}?",
            message="The node stops being polled and can no longer be enrolled or reserved. This cannot be undone.",
            action_label="Retire node",
            cancel_url=node_url,
            danger=True,
        )
    try:
        services.node_retire(node=node, actor=request_actor(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Node {node.name} retired.")
    return redirect(node_url)


# ---------------------------------------------------------------------------- offers


@partner_member
@require_http_methods(["GET"])
def offer_list(request: HttpRequest) -> HttpResponse:
    offers = selectors.offer_list(organization=request_organization(request))
    return render(
        request,
        "capacity/offer_list.html",
        {"page_obj": _page(request, offers), "can_operate": _can_operate(request)},
    )


@partner_operator
@require_http_methods(["GET", "POST"])
def offer_create(request: HttpRequest) -> HttpResponse:
    form = OfferForm(request.POST or None, organization=request_organization(request))
    if request.method == "POST" and form.is_valid():
        try:
            services.offer_create(actor=request_actor(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Offer listed.")
            return redirect("capacity:offers")
    return render(request, "capacity/offer_form.html", {"form": form, "offer": None})


@partner_operator
@require_http_methods(["GET", "POST"])
def offer_update(request: HttpRequest, pk: int) -> HttpResponse:
    offer = get_for_org_or_404(Offer.objects.select_related("site", "gpu_model"), request, pk=pk)
    form = OfferForm(
        request.POST or None,
        organization=request_organization(request),
        editing=True,
        initial=OfferForm.initial_for(offer),
    )
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        if data.get("available_from") is None:
            data["available_from"] = offer.available_from
        try:
            services.offer_update(offer=offer, actor=request_actor(request), data=data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Offer updated.")
            return redirect("capacity:offers")
    return render(request, "capacity/offer_form.html", {"form": form, "offer": offer})


@partner_operator
@require_http_methods(["GET", "POST"])
def offer_deactivate(request: HttpRequest, pk: int) -> HttpResponse:
    offer = get_for_org_or_404(Offer.objects.select_related("site", "gpu_model"), request, pk=pk)
    if request.method == "GET":
        return render_confirm(
            request,
            title="Deactivate this offer?",
            message=f"{offer} disappears from the marketplace. Existing contracts are not affected.",
            action_label="Deactivate",
            cancel_url=reverse("capacity:offers"),
            danger=True,
        )
    try:
        services.offer_deactivate(offer=offer, actor=request_actor(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Offer deactivated.")
    return redirect("capacity:offers")
