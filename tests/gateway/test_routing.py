"""Routing against real agents: failover before the first byte only, the circuit breaker,
cut and abandoned streams logged with the tokens that reached the buyer.

Nodes are tried least outstanding first, ties to the least recently picked, in node id
order at first: a fresh gateway sends its first request to ``world.nodes[0]``.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from capacity.metering.models import InferenceRequest
from tests.gateway.conftest import PRODUCT, logged_rows

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHAT = {"model": PRODUCT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COOLDOWN_S = 1.5  # HASHGRID_GATEWAY_CIRCUIT_COOLDOWN_MS in the tests' gateway


def post(gateway, world, body=CHAT) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=30,
    )


def attempts_on(node) -> list[int]:
    return list(
        InferenceRequest.objects.filter(node=node, logged_at__isnull=False)
        .order_by("issued_at", "logged_at")
        .values_list("gateway_status", flat=True)
    )


def test_a_refusing_node_fails_over_before_the_first_byte(gateway, world, agents):
    agents[0].inject("engine_refuse")
    response = post(gateway, world)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == " tok0 tok1"
    rows = logged_rows(count=2)
    assert [(row.node_id, row.gateway_status, row.gateway_output_tokens) for row in rows] == [
        (world.nodes[0].pk, 503, 0),
        (world.nodes[1].pk, 200, 2),
    ]
    # The buyer's request id is the receipt of the attempt that answered.
    assert response.headers["x-request-id"] == rows[1].request_id.hex


def test_circuit_breaker_sets_a_failing_node_aside_and_probes_it(gateway, world, agents):
    failing = world.nodes[0]
    agents[0].inject("engine_refuse", count=4)
    assert [post(gateway, world).status_code for _ in range(8)] == [200] * 8
    logged_rows(count=8 + 3)
    assert attempts_on(failing) == [503, 503, 503]  # three failures: set aside
    time.sleep(COOLDOWN_S + 0.2)
    assert post(gateway, world).status_code == 200  # the probe fails: set aside again
    assert [post(gateway, world).status_code for _ in range(3)] == [200] * 3
    logged_rows(count=8 + 3 + 2 + 3)
    assert attempts_on(failing) == [503, 503, 503, 503]
    time.sleep(COOLDOWN_S + 0.2)
    assert post(gateway, world).status_code == 200  # the probe succeeds: back in service
    logged_rows(count=8 + 3 + 2 + 3 + 1)
    assert attempts_on(failing) == [503, 503, 503, 503, 200]


def test_a_stream_cut_after_the_first_byte_is_not_retried(gateway, world, agents):
    agents[0].inject("engine_cut", after_tokens=2)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=world.key, max_retries=0)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in sdk.chat.completions.create(
            model=PRODUCT, messages=CHAT["messages"], max_tokens=5, stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == " tok0 tok1"
    (row,) = logged_rows(count=1)
    assert (row.node_id, row.gateway_status) == (world.nodes[0].pk, 502)
    assert (row.gateway_input_tokens, row.gateway_output_tokens) == (1 + 4, 2)
    time.sleep(0.6)
    assert InferenceRequest.objects.count() == 1  # no second attempt


def test_a_buyer_leaving_mid_stream_is_logged_with_what_was_relayed(gateway, world):
    body = {**CHAT, "max_tokens": 32768, "stream": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(3)]
    assert first[0].startswith("data: ")
    (row,) = logged_rows(count=1)
    assert row.gateway_status == 499
    assert 1 <= row.gateway_output_tokens < 32768
    assert row.gateway_input_tokens == 5
