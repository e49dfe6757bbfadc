"""Receipt records as an agent v1.1 journals them: one per inference request, its receipt
signed with the platform's key (``config.gateway_keys``) exactly as the gateway signs it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from capacity.agent.protocol import format_time
from capacity.agent.receipts import Receipt, sign_receipt
from capacity.metering.models import InferenceRequest
from capacity.models import Node
from config.gateway_keys import receipt_signing_key
from tests.capacity.metering.conftest import GPU_UUIDS


def receipt_for(
    node: Node,
    *,
    rid: str,
    line_id: int,
    key_id: int,
    product: str = "llama",
    max_input_tokens: int = 1_000,
    max_output_tokens: int = 500,
    issued_at: datetime,
    agent: str | None = None,
    node_id: int | None = None,
) -> Receipt:
    return Receipt(
        v=1,
        rid=rid,
        node=node.pk if node_id is None else node_id,
        agent=node.agent_public_key if agent is None else agent,
        line=line_id,
        key=key_id,
        product=product,
        max_input_tokens=max_input_tokens,
        max_output_tokens=max_output_tokens,
        iat=int(issued_at.timestamp()),
    )


def receipt_fields(
    receipt: Receipt,
    *,
    input_tokens: int,
    output_tokens: int,
    ended_at: datetime,
    seconds: float = 2,
    gpu: int = 0,
    token: str | None = None,
    ref: str | None = None,
    requests: int = 1,
    busy_ms: int = 0,
) -> dict[str, object]:
    """The record's fields before chaining (docs/gateway.md point 6)."""
    return {
        "gpu_uuid": GPU_UUIDS[gpu],
        "window_start": format_time(ended_at - timedelta(seconds=seconds)),
        "window_end": format_time(ended_at),
        "workload": {
            "kind": "inference",
            "ref": receipt.rid if ref is None else ref,
            "receipt": sign_receipt(receipt_signing_key(), receipt) if token is None else token,
        },
        "busy_ms": busy_ms,
        "energy_mj": 0,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "requests": requests,
    }


def gateway_logged(
    receipt: Receipt, *, input_tokens: int, output_tokens: int, status: int = 200
) -> InferenceRequest:
    """The gateway's side of the request, as its request log writes it (docs/gateway.md
    point 7): the receipt's claims and what it relayed to the buyer."""
    issued_at = datetime.fromtimestamp(receipt.iat, tz=UTC)
    return InferenceRequest.objects.create(
        request_id=uuid.UUID(receipt.rid),
        node_id=receipt.node,
        api_key_id=receipt.key,
        line_id=receipt.line,
        product_slug=receipt.product,
        max_input_tokens=receipt.max_input_tokens,
        max_output_tokens=receipt.max_output_tokens,
        issued_at=issued_at,
        gateway_status=status,
        gateway_input_tokens=input_tokens,
        gateway_output_tokens=output_tokens,
        logged_at=issued_at + timedelta(seconds=1),
    )
