"""Buyer pages for contracts: list, detail, cancel, on-demand lines, their API keys, usage.

Thin: parse the form, call one service or selector, render. Every contract comes from
``get_for_org_or_404``, so another tenant's contract answers 404. Reading needs a buyer
organization; on-demand lines need an operator; cancelling and keys need a manager.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.models import MANAGER_ROLES, OPERATOR_ROLES
from accounts.pages import render_confirm
from accounts.requests import request_actor, request_organization
from accounts.tenancy import (
    current_membership,
    get_for_org_or_404,
    org_required,
)
from capacity.forms import add_service_errors
from capacity.models import Offer
from contracts import (
    dashboard,
    inference_budget,
    lifecycle,
    on_demand,
    selectors,
    usage,
    window_notices,
    workload_selectors,
)
from contracts.forms import (
    InferenceCapForm,
    LineApiKeyForm,
    LineApiKeyLimitsForm,
    OnDemandForm,
    cap_to_minor,
)
from contracts.inference_snippets import snippets
from contracts.models import Contract, ContractLine, InferenceProduct, LineApiKey, LineKind
from contracts.money import minor_to_major
from contracts.sla import LineSla, line_slas
from contracts.terms import add_months, month_start

buyer_member = org_required(buyer=True)
buyer_operator = org_required(OPERATOR_ROLES, buyer=True)
buyer_manager = org_required(MANAGER_ROLES, buyer=True)


def _contract(request: HttpRequest, pk: int) -> Contract:
    return get_for_org_or_404(
        Contract.objects.select_related("sla_policy", "buyer"), request, pk=pk
    )


@buyer_member
@require_http_methods(["GET"])
def contract_list(request: HttpRequest) -> HttpResponse:
    contracts = selectors.contract_list(organization=request_organization(request))
    return render(
        request,
        "contracts/list.html",
        {"page_obj": Paginator(contracts, 25).get_page(request.GET.get("page"))},
    )


def _line_slas(lines: list[ContractLine]) -> dict[int, LineSla]:
    """SLA of each current reserved line this month."""
    now = timezone.now()
    reserved = [line for line in lines if line.kind == LineKind.RESERVED and line.ended_at is None]
    return line_slas(lines=reserved, since=month_start(now), until=now)


@buyer_member
@require_http_methods(["GET"])
def contract_detail(request: HttpRequest, pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    lines = list(selectors.contract_lines(contract=contract))
    membership = current_membership(request)
    slas = _line_slas(lines)
    for line in lines:
        line.sla = slas.get(line.pk)  # type: ignore[attr-defined]
    # The reservations' GPUs (instances hold theirs through allocations too: listed with
    # the workloads below).
    allocations = Paginator(
        selectors.contract_allocations(contract=contract).filter(workload__isnull=True), 50
    ).get_page(request.GET.get("page"))
    contract_workloads = Paginator(
        workload_selectors.contract_workloads(contract=contract), 25
    ).get_page(request.GET.get("workloads_page"))
    windows = window_notices.contract_windows(contract=contract, now=timezone.now())
    inference_lines = [
        line for line in lines if line.kind == LineKind.INFERENCE and line.ended_at is None
    ]
    spend = inference_budget.inference_spend(contract=contract, now=timezone.now())
    for line in lines:
        for link in line.api_keys.all():
            link.spend = spend.key(link)  # type: ignore[attr-defined]
    return render(
        request,
        "contracts/detail.html",
        {
            "contract": contract,
            "lines": lines,
            "allocations": allocations,
            "workloads": contract_workloads,
            "has_gpu_lines": any(
                line.kind in (LineKind.RESERVED, LineKind.ON_DEMAND_GPU) for line in lines
            ),
            "windows": windows,
            "maintenance_allowance_hours": settings.SLA_MAINTENANCE_ALLOWANCE_HOURS,
            "commitment": minor_to_major(contract.monthly_commitment_minor),
            "fee": minor_to_major(contract.early_termination_fee_minor),
            "can_manage": membership is not None and membership.can_manage,
            "can_operate": membership is not None and membership.can_operate,
            "inference_lines": inference_lines,
            "spend": spend.contract,
            "snippets": snippets(model=inference_lines[0].inference_product.slug)  # type: ignore[union-attr]
            if inference_lines
            else None,
        },
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def inference_cap_update(request: HttpRequest, pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    cap = contract.inference_monthly_cap_minor
    form = InferenceCapForm(
        request.POST or None,
        initial={"inference_monthly_cap_minor": None if cap is None else minor_to_major(cap)},
    )
    if request.method == "POST" and form.is_valid():
        try:
            inference_budget.contract_inference_cap_set(
                contract=contract,
                cap_minor=cap_to_minor(form.cleaned_data["inference_monthly_cap_minor"]),
                actor=request_actor(request),
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            cap = contract.inference_monthly_cap_minor
            messages.success(
                request,
                "No monthly inference cap."
                if cap is None
                else f"Monthly inference cap set to {minor_to_major(cap)} {contract.currency}.",
            )
            return redirect("contracts:detail", pk=contract.pk)
    return render(
        request,
        "contracts/inference_cap_form.html",
        {
            "contract": contract,
            "form": form,
            "spend": inference_budget.inference_spend(
                contract=contract, now=timezone.now()
            ).contract,
        },
    )


@buyer_member
@require_http_methods(["GET", "POST"])
def line_api_key_detail(request: HttpRequest, pk: int, key_pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    link = get_for_org_or_404(
        LineApiKey.objects.select_related(
            "api_key", "line__inference_product", "line__offer__site"
        ),
        request,
        pk=key_pk,
        line__contract=contract,
    )
    link.line.contract = contract
    membership = current_membership(request)
    can_operate = membership is not None and membership.can_operate
    form = LineApiKeyLimitsForm(
        request.POST or None,
        initial={
            "monthly_cap_minor": None
            if link.monthly_cap_minor is None
            else minor_to_major(link.monthly_cap_minor),
            "requests_per_minute": link.requests_per_minute,
            "tokens_per_minute": link.tokens_per_minute,
        },
    )
    if request.method == "POST":
        if not can_operate:
            raise PermissionDenied("Your role does not allow this action.")
        if form.is_valid():
            try:
                inference_budget.line_api_key_limits_set(
                    link=link,
                    monthly_cap_minor=cap_to_minor(form.cleaned_data["monthly_cap_minor"]),
                    requests_per_minute=form.cleaned_data["requests_per_minute"],
                    tokens_per_minute=form.cleaned_data["tokens_per_minute"],
                    actor=request_actor(request),
                )
            except ValidationError as error:
                add_service_errors(form, error)
            else:
                messages.success(request, f"Limits of key “{link.api_key.name}” saved.")
                return redirect("contracts:line_api_key_detail", pk=contract.pk, key_pk=link.pk)
    spend = inference_budget.inference_spend(contract=contract, now=timezone.now())
    product = link.line.inference_product
    return render(
        request,
        "contracts/line_api_key_detail.html",
        {
            "contract": contract,
            "link": link,
            "line": link.line,
            "form": form,
            "can_operate": can_operate,
            "spend": spend.key(link),
            "contract_spend": spend.contract,
            "snippets": snippets(model=product.slug) if product else None,
        },
    )


@buyer_manager
@require_http_methods(["GET", "POST"])
def contract_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    at_term_end = request.GET.get("when", "term_end") != "now"
    if request.method == "POST":
        try:
            lifecycle.contract_cancel(
                contract=contract,
                actor=request_actor(request),
                at_term_end=at_term_end,
            )
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(
                request,
                f"Contract {contract.reference} will end on {contract.term_ends_at:%d %b %Y}."
                if at_term_end
                else f"Contract {contract.reference} is cancelled.",
            )
        return redirect("contracts:detail", pk=contract.pk)
    if at_term_end:
        message = (
            f"It stays active until {contract.term_ends_at:%d %b %Y %H:%M} UTC and is not renewed."
        )
    else:
        fee_minor, _remaining = lifecycle.early_termination_fee(
            contract=contract, at=timezone.now()
        )
        message = (
            "Reservations end now and their GPUs are released. Early-termination fee: "
            f"{minor_to_major(fee_minor)} {contract.currency} "
            f"({contract.early_termination_fee_percent} % of the reserved charge left)."
        )
    return render_confirm(
        request,
        title=f"Cancel contract {contract.reference}{' at term end' if at_term_end else ' now'}?",
        message=message,
        action_label="Cancel contract",
        cancel_url=reverse("contracts:detail", args=[contract.pk]),
        danger=not at_term_end,
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def on_demand_enable(request: HttpRequest, pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    offers = list(
        Offer.objects.active()
        .filter(contract_lines__contract=contract)
        .select_related("site", "gpu_model")
        .distinct()
    )
    form = OnDemandForm(request.POST or None, offers=offers)
    if request.method == "POST" and form.is_valid():
        kind, _, ident = form.cleaned_data["choice"].partition(":")
        try:
            line = on_demand.on_demand_enable(
                buyer=contract.buyer,
                actor=request_actor(request),
                offer=next((o for o in offers if str(o.pk) == ident), None)
                if kind == "offer"
                else None,
                inference_product=InferenceProduct.objects.filter(pk=ident, is_active=True).first()
                if kind == "product"
                else None,
            )
        except ValidationError as error:
            form.add_error(None, error.messages)
        else:
            messages.success(
                request, f"{line.get_kind_display()} enabled. Create an API key to use it."
            )
            return redirect("contracts:detail", pk=line.contract_id)
    return render(request, "contracts/on_demand_form.html", {"contract": contract, "form": form})


@buyer_manager
@require_http_methods(["GET", "POST"])
def line_api_key_create(request: HttpRequest, pk: int, line_pk: int) -> HttpResponse:
    contract = _contract(request, pk)
    line = get_for_org_or_404(
        ContractLine.objects.select_related("contract__buyer", "inference_product", "offer__site"),
        request,
        pk=line_pk,
        contract=contract,
    )
    form = LineApiKeyForm(request.POST or None)
    secret = created = None
    if request.method == "POST" and form.is_valid():
        try:
            created, secret = on_demand.line_api_key_create(
                line=line,
                name=form.cleaned_data["name"],
                actor=request_actor(request),
            )
        except ValidationError as error:
            form.add_error(None, error.messages)
    product = line.inference_product
    return render(
        request,
        "contracts/line_api_key.html",
        {
            "contract": contract,
            "line": line,
            "form": form,
            "secret": secret,
            "created": created,
            "snippets": snippets(model=product.slug, api_key=secret)
            if product and secret
            else None,
        },
    )


@buyer_member
@require_http_methods(["GET"])
def usage_overview(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    now = timezone.now()
    contracts = list(selectors.contract_list(organization=organization))
    chosen = next((c for c in contracts if str(c.pk) == request.GET.get("contract")), None)
    chosen = chosen or (contracts[0] if contracts else None)
    requested_bucket = request.GET.get("bucket")
    bucket = (
        requested_bucket
        if requested_bucket is not None and requested_bucket in usage.BUCKETS
        else "day"
    )
    since = month_start(now) if bucket == "day" else now - timedelta(hours=48)
    rows = (
        usage.usage_buckets(contract=chosen, bucket=bucket, since=since, until=now)
        if chosen
        else []
    )
    instances = Paginator(
        workload_selectors.instances_in(organization=organization, since=month_start(now), now=now),
        25,
    ).get_page(request.GET.get("instances_page"))
    held = workload_selectors.instances_held(
        workloads=list(instances), now=now, since=month_start(now)
    )
    return render(
        request,
        "contracts/usage.html",
        {
            "instances": instances,
            "instances_held": [(workload, held[workload.pk]) for workload in instances],
            "summary": dashboard.buyer_dashboard(organization=organization, now=now),
            "contracts": contracts,
            "chosen": chosen,
            "bucket": bucket,
            "rows": rows,
            "usage_chart": usage.usage_chart(rows=rows, bucket=bucket),
            # The per-request export of inference: this month and the one before.
            "request_months": [f"{now:%Y-%m}", f"{add_months(month_start(now), -1):%Y-%m}"],
        },
    )
