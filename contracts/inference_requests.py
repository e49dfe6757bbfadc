"""A buyer's inference requests, one by one: what each was billed and what it cost.

Reads ``capacity.metering.InferenceRequest`` (both witnesses of one request, and the
tokens billed for it: docs/gateway.md point 8) for the buyer whose contract holds the
request's line, and prices the billed tokens at that line's prices, exactly
(``money.token_charge``, unrounded: an invoice line rounds the sum of its requests once,
so a request's cost is a Decimal, never cents). A request of another organization's line
does not exist for the caller. Requests of a reserved line are its deployments' (a
catalogue model on the reserved GPUs): their tokens are shown and cost nothing, the
reservation pays.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet

from accounts.models import ApiKey, Organization
from capacity.metering.models import InferenceRequest
from contracts.models import ContractLine, LineKind
from contracts.money import token_charge
from contracts.terms import add_months, month_start

# Requests read per round trip when a month is exported.
EXPORT_CHUNK = 2000


class RequestState:
    """Where a request stands between its two witnesses."""

    # The node's record is metered: the billed tokens are final.
    METERED = "metered"
    # Only the gateway's log so far: billed nothing yet (the next poll meters it).
    AWAITING_NODE = "awaiting_node"


@dataclass(frozen=True)
class BuyerInferenceRequest:
    """One request as its buyer sees it (no node, no partner)."""

    request_id: uuid.UUID
    key_id: int
    key_name: str
    key_prefix: str
    product: str
    state: str
    # The HTTP status the gateway answered; None when its log was lost.
    gateway_status: int | None
    gateway_input_tokens: int | None
    gateway_output_tokens: int | None
    billed_input_tokens: int
    billed_output_tokens: int
    # Billed tokens at the line's prices, exact, in ``currency``.
    cost: Decimal
    currency: str
    issued_at: datetime
    served_at: datetime | None
    time_to_first_token_ms: int | None
    duration_ms: int | None


def _lines_of(organization: Organization) -> dict[int, ContractLine]:
    return {
        line.pk: line
        for line in ContractLine.objects.filter(
            contract__buyer=organization, kind__in=(LineKind.INFERENCE, LineKind.RESERVED)
        ).select_related("contract")
    }


def _rows(
    requests: QuerySet[InferenceRequest], lines: dict[int, ContractLine], chunk: int
) -> Iterator[BuyerInferenceRequest]:
    keys: dict[int, ApiKey] = {}
    for request in requests.iterator(chunk_size=chunk):
        line = lines[request.line_id]
        if request.api_key_id not in keys:
            keys.update(
                (key.pk, key) for key in ApiKey.objects.filter(organization=line.contract.buyer_id)
            )
        key = keys.get(request.api_key_id)
        yield BuyerInferenceRequest(
            request_id=request.request_id,
            key_id=request.api_key_id,
            key_name=key.name if key else "",
            key_prefix=key.prefix if key else "",
            product=request.product_slug,
            state=(
                RequestState.METERED
                if request.usage_record_id is not None
                else RequestState.AWAITING_NODE
            ),
            gateway_status=request.gateway_status,
            gateway_input_tokens=request.gateway_input_tokens,
            gateway_output_tokens=request.gateway_output_tokens,
            billed_input_tokens=request.billed_input_tokens,
            billed_output_tokens=request.billed_output_tokens,
            cost=token_charge(
                tokens=request.billed_input_tokens,
                price_per_million=line.input_price_per_million_tokens or Decimal(0),
            )
            + token_charge(
                tokens=request.billed_output_tokens,
                price_per_million=line.output_price_per_million_tokens or Decimal(0),
            ),
            currency=line.contract.currency,
            issued_at=request.issued_at,
            served_at=request.served_at,
            time_to_first_token_ms=request.time_to_first_token_ms,
            duration_ms=request.duration_ms,
        )


def buyer_inference_request(
    *, organization: Organization, request_id: uuid.UUID
) -> BuyerInferenceRequest | None:
    """The request ``request_id`` if a line of ``organization``'s contracts made it."""
    lines = _lines_of(organization)
    requests = InferenceRequest.objects.filter(request_id=request_id, line_id__in=list(lines))
    return next(_rows(requests, lines, chunk=1), None)


def buyer_inference_requests(
    *, organization: Organization, month: datetime, chunk: int = EXPORT_CHUNK
) -> Iterator[BuyerInferenceRequest]:
    """Every request of ``organization``'s lines issued in the UTC calendar month of
    ``month``, oldest first, read ``chunk`` at a time (a month may hold millions)."""
    lines = _lines_of(organization)
    since = month_start(month)
    requests = InferenceRequest.objects.filter(
        line_id__in=list(lines), issued_at__gte=since, issued_at__lt=add_months(since, 1)
    ).order_by("issued_at", "request_id")
    return _rows(requests, lines, chunk=chunk)
