"""Buyer pages for workloads: instances on on-demand GPU lines, containers and model
deployments on reserved GPUs (``contracts.workloads``; docs/workloads.md).

Thin: parse the form, call one service or selector, render. Every workload and line
comes through ``get_for_org_or_404``: another tenant's answers 404. Seeing needs a buyer
organization; starting, deploying, redeploying and stopping need an operator role (owner,
admin, member), so viewers and finance only look.
"""

from __future__ import annotations

from collections.abc import Callable

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
from accounts.tenancy import current_membership, get_for_org_or_404, org_required
from capacity.forms import add_service_errors
from contracts import workload_selectors, workloads
from contracts.inference_snippets import snippets
from contracts.models import ContractLine, LineKind, Workload, WorkloadKind
from contracts.workload_forms import ContainerForm, DeploymentForm, InstanceForm, RedeployForm

buyer_member = org_required(buyer=True)
buyer_operator = org_required(OPERATOR_ROLES, buyer=True)

INSTANCES_PER_PAGE = 25


def _can_operate(request: HttpRequest) -> bool:
    membership = current_membership(request)
    return membership is not None and membership.can_operate


def _line(request: HttpRequest, pk: int, line_pk: int, kind: str) -> ContractLine:
    return get_for_org_or_404(
        ContractLine.objects.select_related("contract", "offer__site", "offer__gpu_model"),
        request,
        pk=line_pk,
        contract_id=pk,
        kind=kind,
    )


def _workload(request: HttpRequest, pk: int) -> Workload:
    organization = request_organization(request)
    return get_for_org_or_404(
        workload_selectors.workload_detail(organization=organization), request, pk=pk
    )


@buyer_member
@require_http_methods(["GET"])
def instance_list(request: HttpRequest) -> HttpResponse:
    organization = request_organization(request)
    instances = workload_selectors.buyer_instances(organization=organization)
    return render(
        request,
        "contracts/instances.html",
        {
            "page_obj": Paginator(instances, INSTANCES_PER_PAGE).get_page(request.GET.get("page")),
            "lines": list(workload_selectors.instance_lines(organization=organization)),
            "can_operate": _can_operate(request),
        },
    )


def _container_page(
    request: HttpRequest,
    line: ContractLine,
    *,
    start: Callable[..., Workload],
    done: str,
    title: str,
    action_label: str,
    form_class: type[ContainerForm] = ContainerForm,
    **context: object,
) -> HttpResponse:
    """The container form of ``line``: on a valid post, ``start`` (a service taking the
    line, the actor and the container's spec, and the form's one-time ``submission_key``
    when it has one) runs and the workload's page follows."""
    form = form_class(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        once = {"submission_key": data["submission_key"]} if "submission_key" in data else {}
        try:
            workload = start(
                line=line,
                gpu_count=data["gpu_count"],
                image=data["image"],
                ssh_public_key=data["ssh_public_key"].strip(),
                ports=data["ports"],
                env=data["env"],
                actor=request_actor(request),
                **once,
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, done)
            return redirect("contracts:workload", pk=workload.pk)
    return render(
        request,
        "contracts/workload_form.html",
        {
            "line": line,
            "contract": line.contract,
            "form": form,
            "title": title,
            "action_label": action_label,
            **context,
        },
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def instance_start(request: HttpRequest, pk: int, line_pk: int) -> HttpResponse:
    line = _line(request, pk, line_pk, LineKind.ON_DEMAND_GPU)
    free = workloads.free_gpus_by_node(line=line, now=timezone.now())
    return _container_page(
        request,
        line,
        start=workloads.instance_start,
        done="Instance requested. Its node starts it in a moment.",
        title="Start an instance",
        action_label="Start instance",
        form_class=InstanceForm,
        most_free_on_one_node=max(free.values(), default=0),
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def container_create(request: HttpRequest, pk: int, line_pk: int) -> HttpResponse:
    line = _line(request, pk, line_pk, LineKind.RESERVED)
    return _container_page(
        request,
        line,
        start=workloads.container_create,
        done="Container requested on your reserved GPUs.",
        title="Run a container on reserved GPUs",
        action_label="Run container",
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def deployment_create(request: HttpRequest, pk: int, line_pk: int) -> HttpResponse:
    line = _line(request, pk, line_pk, LineKind.RESERVED)
    form = DeploymentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            workload = workloads.deployment_create(
                line=line,
                product=form.cleaned_data["product"],
                gpu_count=form.cleaned_data["gpu_count"],
                actor=request_actor(request),
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(
                request,
                f"{workload.inference_product} deployed as {workload.served_model_name}.",
            )
            return redirect("contracts:workload", pk=workload.pk)
    return render(
        request,
        "contracts/workload_form.html",
        {
            "line": line,
            "contract": line.contract,
            "form": form,
            "title": "Deploy a model on reserved GPUs",
            "action_label": "Deploy",
        },
    )


def _workload_context(request: HttpRequest, workload: Workload) -> dict[str, object]:
    return {
        "workload": workload,
        "contract": workload.line.contract,
        "held": workload_selectors.instance_held(workload=workload, now=timezone.now()),
        "host": workload.host,
        "mapped_ports": sorted(
            ((str(inner), str(outer)) for inner, outer in workload.mapped_ports.items()),
            key=lambda pair: (len(pair[0]), pair[0]),
        ),
        "ssh_command": workload.ssh_command,
        "snippets": snippets(model=workload.served_model_name)
        if workload.kind == WorkloadKind.DEPLOYMENT
        else None,
        "can_operate": _can_operate(request),
        # The menu: an instance's page is under Instances (its path is under Contracts).
        "nav_section": reverse("contracts:instances") if workload.is_instance else None,
    }


@buyer_member
@require_http_methods(["GET"])
def workload_detail(request: HttpRequest, pk: int) -> HttpResponse:
    workload = _workload(request, pk)
    context = _workload_context(request, workload)
    if request.headers.get("HX-Request") == "true":  # the state panel's own refresh
        return render(request, "contracts/_workload_state.html", context)
    return render(request, "contracts/workload_detail.html", context)


@buyer_operator
@require_http_methods(["GET", "POST"])
def workload_stop(request: HttpRequest, pk: int) -> HttpResponse:
    workload = _workload(request, pk)
    if request.method == "POST":
        was_active = workload.is_active
        stopped = workloads.workload_stop(workload=workload, actor=request_actor(request))
        if was_active:
            messages.success(request, f"{stopped.get_kind_display()} stopped.")
        else:
            messages.info(request, f"This was already {stopped.get_state_display().lower()}.")
        return redirect("contracts:workload", pk=workload.pk)
    what = "instance" if workload.is_instance else workload.get_kind_display().lower()
    billing = (
        "Its GPUs are released and billing stops now."
        if workload.is_instance
        else "Your reservation keeps its GPUs; you can deploy on them again."
    )
    return render_confirm(
        request,
        title=f"Stop this {what}?",
        message=f"The node stops it and anything not saved elsewhere is lost. {billing}",
        action_label=f"Stop {what}",
        cancel_url=reverse("contracts:workload", args=[workload.pk]),
        danger=True,
    )


@buyer_operator
@require_http_methods(["GET", "POST"])
def workload_redeploy(request: HttpRequest, pk: int) -> HttpResponse:
    workload = _workload(request, pk)
    is_deployment = workload.kind == WorkloadKind.DEPLOYMENT
    form = RedeployForm(
        request.POST or None,
        is_deployment=is_deployment,
        initial={"image": workload.image, "product": workload.inference_product},
    )
    if request.method == "POST" and form.is_valid():
        try:
            fresh = workloads.workload_redeploy(
                workload=workload,
                actor=request_actor(request),
                image=form.cleaned_data.get("image") or None,
                product=form.cleaned_data.get("product"),
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Redeployed on the same GPUs.")
            return redirect("contracts:workload", pk=fresh.pk)
    return render(
        request,
        "contracts/workload_redeploy.html",
        {"workload": workload, "contract": workload.line.contract, "form": form},
    )
