"""Receipt records as an agent v1.1 journals them: one per inference request, its receipt
signed with the platform's key (``config.gateway_keys``) exactly as the gateway signs it;
and ``meter_requests``, which meters requests the way a poll does (validation, then
ingest's statement), for tests of what reads the billed tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.protocol import chain_record, format_time, public_key_b64
from capacity.agent.receipts import MAX_TOKENS_BOUND, Receipt, sign_receipt
from capacity.metering import ingest
from capacity.metering.models import InferenceRequest, NodePollState
from capacity.metering.polling import PageToStore
from capacity.metering.validation import (
    AcceptedRecord,
    GpuRef,
    ReceiptContext,
    to_unix_us,
    validate_record,
)
from capacity.models import GpuDevice, Node
from config.gateway_keys import receipt_public_key, receipt_signing_key
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
    gpu_uuid: str = GPU_UUIDS[0],
    token: str | None = None,
    ref: str | None = None,
    requests: int = 1,
    busy_ms: int = 0,
) -> dict[str, object]:
    """The record's fields before chaining (docs/gateway.md point 6)."""
    return {
        "gpu_uuid": gpu_uuid,
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


def meter_requests(
    *,
    gpu: GpuDevice,
    line_id: int,
    key_id: int,
    product: str,
    at: datetime,
    input_tokens: int = 0,
    output_tokens: int = 0,
    gateway: tuple[int, int] | None = None,
) -> list[InferenceRequest]:
    """Inference served on ``gpu`` for the key's line, issued at ``at``, metered as a poll
    meters it: each request's receipt record is chained after the node's stored cursor,
    checked by ``validation.validate_record`` and stored by ``ingest.store_page`` (the
    real statement: request row, billed tokens, hourly rollup). As many requests as the
    tokens need, each within a receipt's bound (``MAX_TOKENS_BOUND`` a direction).
    ``gateway``: the gateway's (input, output) count of the first request, logged before
    the agent's record is metered."""
    node = gpu.node
    if not node.agent_public_key:
        node.agent_public_key = public_key_b64(Ed25519PrivateKey.generate())
        node.save(update_fields=["agent_public_key"])
    state, _ = NodePollState.objects.get_or_create(node=node)
    epoch = state.journal_epoch or "test-epoch"
    seq, prev_hash = state.last_seq, state.last_hash
    page = PageToStore(state.journal_epoch, state.last_seq, epoch, seq, prev_hash)
    context = ReceiptContext(
        node_id=node.pk,
        agent_public_key=node.agent_public_key,
        platform_key=receipt_public_key(),
        seen_rids=set(),
    )
    rids = []
    remaining_in, remaining_out = input_tokens, output_tokens
    while remaining_in or remaining_out or not rids:
        served_in = min(remaining_in, MAX_TOKENS_BOUND)
        served_out = min(remaining_out, MAX_TOKENS_BOUND)
        remaining_in, remaining_out = remaining_in - served_in, remaining_out - served_out
        receipt = receipt_for(
            node,
            rid=uuid.uuid4().hex,
            line_id=line_id,
            key_id=key_id,
            product=product,
            max_input_tokens=MAX_TOKENS_BOUND,
            max_output_tokens=MAX_TOKENS_BOUND,
            issued_at=at,
        )
        if gateway is not None and not rids:
            gateway_logged(receipt, input_tokens=gateway[0], output_tokens=gateway[1])
        seq += 1
        record = chain_record(
            receipt_fields(
                receipt,
                input_tokens=served_in,
                output_tokens=served_out,
                ended_at=at + timedelta(seconds=2),
                gpu_uuid=gpu.uuid,
            ),
            seq=seq,
            prev_hash=prev_hash,
        )
        prev_hash = str(record["hash"])
        verdict = validate_record(
            record,
            gpus={gpu.uuid: GpuRef(device_id=gpu.pk, max_power_w=700)},
            now_us=to_unix_us(at) + 60_000_000,
            gpu_window_ends={},
            receipts=context,
        )
        assert isinstance(verdict, AcceptedRecord), verdict
        page.accepted.append(verdict)
        rids.append(uuid.UUID(receipt.rid))
    page.to_seq, page.to_hash = seq, prev_hash
    stored = ingest.store_page(
        node_id=node.pk, page=page, polled_at=at + timedelta(minutes=1), next_poll_at=at
    )
    assert stored.moved and stored.inserted == len(rids), stored
    return list(InferenceRequest.objects.filter(request_id__in=rids).order_by("issued_at"))
