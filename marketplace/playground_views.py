"""The inference playground: a buyer picks one of their inference products, pastes or
creates a key, types a prompt and watches the answer stream from the gateway.

The browser talks to the gateway directly (``static/js/playground.js``: fetch and a
``ReadableStream`` parsing server-sent events), as any client of the inference API would;
this page only lists the lines and, on demand, creates a "playground" key, shown once
and kept only in the browser's ``sessionStorage``.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.models import MANAGER_ROLES
from accounts.requests import request_actor, request_organization
from accounts.response_headers import no_store
from accounts.tenancy import current_membership, get_for_org_or_404, org_required
from contracts import on_demand, selectors
from contracts.inference_snippets import inference_base_url
from contracts.models import ContractLine, LineKind

buyer_member = org_required(buyer=True)
buyer_manager = org_required(MANAGER_ROLES, buyer=True)


@buyer_member
@require_http_methods(["GET"])
def playground(request: HttpRequest) -> HttpResponse:
    lines = list(selectors.buyer_inference_lines(organization=request_organization(request)))
    chosen = request.GET.get("line", "")
    membership = current_membership(request)
    return render(
        request,
        "marketplace/playground.html",
        {
            "lines": lines,
            "chosen": chosen,
            "base_url": inference_base_url(),
            "can_create_key": membership is not None and membership.can_manage,
        },
    )


@buyer_manager
@require_http_methods(["POST"])
def playground_key(request: HttpRequest) -> HttpResponse:
    """Create a key for the chosen line; answer it once as JSON (never cached)."""
    line = get_for_org_or_404(
        ContractLine.objects.select_related("contract__buyer", "inference_product"),
        request,
        pk=request.POST.get("line") or 0,
        kind=LineKind.INFERENCE,
    )
    try:
        api_key, secret = on_demand.line_api_key_create(
            line=line,
            name=f"Playground {timezone.now():%Y-%m-%d %H:%M}",
            actor=request_actor(request),
        )
    except ValidationError as error:
        return JsonResponse({"error": " ".join(error.messages)}, status=400)
    return no_store(JsonResponse({"api_key": secret, "prefix": api_key.prefix}, status=201))
