"""Partner pages of serving: which inference products a node serves (``contracts.serving``).

Mounted under /partner/ (namespace "serving") next to capacity's node pages: the rule
belongs to contracts, which owns the products, so capacity never imports it. Every node
comes from ``get_for_org_or_404``: another tenant's node answers 404.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from accounts.models import OPERATOR_ROLES
from accounts.requests import request_actor
from accounts.tenancy import current_membership, get_for_org_or_404, org_required
from capacity.models import Node
from contracts import serving
from contracts.models import InferenceProduct

partner_member = org_required(partner=True)
partner_operator = org_required(OPERATOR_ROLES, partner=True)


def _node(request: HttpRequest, pk: int) -> Node:
    return get_for_org_or_404(
        Node.objects.select_related("site__organization", "gpu_model"), request, pk=pk
    )


@partner_member
@require_http_methods(["GET"])
def node_models(request: HttpRequest, pk: int) -> HttpResponse:
    node = _node(request, pk)
    membership = current_membership(request)
    return render(
        request,
        "contracts/serving/node_models.html",
        {
            "node": node,
            "memory_mib": serving.node_memory_mib(node),
            "options": serving.node_serving_options(node=node),
            "can_operate": membership is not None and membership.can_operate,
        },
    )


@partner_operator
@require_http_methods(["POST"])
def node_models_update(request: HttpRequest, pk: int) -> HttpResponse:
    node = _node(request, pk)
    product = get_object_or_404(InferenceProduct, slug=request.POST.get("product", ""))
    serve = request.POST.get("serving") == "1"
    try:
        changed = serving.node_serving_set(
            node=node, product=product, serving=serve, actor=request_actor(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        if not changed:
            messages.info(request, "Nothing changed.")
        elif serve:
            messages.success(request, f"{node.name} now serves {product.name}.")
        else:
            messages.success(request, f"{node.name} no longer serves {product.name}.")
    return redirect("serving:node_models", pk=node.pk)
