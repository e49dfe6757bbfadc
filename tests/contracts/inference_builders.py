"""Builders for inference tests: an inference line with a key, and the gateway's rows."""

from __future__ import annotations

import uuid
from datetime import datetime

from capacity.metering.models import InferenceRequest
from capacity.models import Node
from contracts import on_demand
from contracts.models import ContractLine, InferenceProduct


def inference_line(*, buyer, actor, slug: str = "llama-3.1-8b-instruct") -> ContractLine:
    return on_demand.on_demand_enable(
        buyer=buyer, actor=actor, inference_product=InferenceProduct.objects.get(slug=slug)
    )


def billed_request(
    *,
    node: Node,
    line: ContractLine,
    api_key_id: int,
    issued_at: datetime,
    input_tokens: int,
    output_tokens: int,
) -> InferenceRequest:
    """A request both witnesses agreed on: billed = what was served."""
    return InferenceRequest.objects.create(
        request_id=uuid.uuid4(),
        node=node,
        api_key_id=api_key_id,
        line_id=line.pk,
        product_slug=line.inference_product.slug,
        max_input_tokens=input_tokens,
        max_output_tokens=output_tokens,
        issued_at=issued_at,
        billed_input_tokens=input_tokens,
        billed_output_tokens=output_tokens,
    )
