"""The request log's upsert: the gateway's columns only, whoever wrote the row first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from capacity.metering.models import InferenceRequest
from gateway.request_log import Attempt, write_batch
from tests.factories import NodeFactory

pytestmark = pytest.mark.django_db

RID = "0123456789abcdef0123456789abcdef"
IAT = 1_780_000_000


def attempt(**overrides: object) -> Attempt:
    values: dict[str, object] = {
        "request_id": RID,
        "node_id": 0,
        "api_key_id": 11,
        "line_id": 22,
        "product_slug": "llama-3.1-8b-instruct",
        "max_input_tokens": 100,
        "max_output_tokens": 50,
        "issued_at": IAT,
        "status": 200,
        "input_tokens": 9,
        "output_tokens": 40,
        "time_to_first_token_ms": 12,
        "duration_ms": 80,
    }
    values.update(overrides)
    return Attempt(**values)  # type: ignore[arg-type]


def test_a_new_row_carries_the_receipt_and_the_gateway_side():
    node = NodeFactory()
    write_batch([attempt(node_id=node.pk)])
    row = InferenceRequest.objects.get()
    assert row.request_id == uuid.UUID(RID)
    assert (row.node_id, row.api_key_id, row.line_id, row.product_slug) == (
        node.pk,
        11,
        22,
        "llama-3.1-8b-instruct",
    )
    assert row.issued_at == datetime.fromtimestamp(IAT, tz=UTC)
    assert (row.gateway_status, row.gateway_input_tokens, row.gateway_output_tokens) == (200, 9, 40)
    assert (row.time_to_first_token_ms, row.duration_ms) == (12, 80)
    assert row.agent_input_tokens is None and row.billed_output_tokens == 0


def test_the_agents_side_written_first_is_left_alone():
    node = NodeFactory()
    InferenceRequest.objects.create(
        request_id=uuid.UUID(RID),
        node=node,
        api_key_id=11,
        line_id=22,
        product_slug="llama-3.1-8b-instruct",
        max_input_tokens=100,
        max_output_tokens=50,
        issued_at=datetime.fromtimestamp(IAT, tz=UTC),
        agent_input_tokens=9,
        agent_output_tokens=41,
        billed_input_tokens=9,
        billed_output_tokens=41,
    )
    write_batch([attempt(node_id=node.pk, status=499, output_tokens=40)])
    row = InferenceRequest.objects.get()
    assert (row.agent_input_tokens, row.agent_output_tokens) == (9, 41)
    assert (row.billed_input_tokens, row.billed_output_tokens) == (9, 41)
    assert (row.gateway_status, row.gateway_output_tokens) == (499, 40)
    assert row.logged_at is not None
