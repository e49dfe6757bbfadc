"""SIGKILL of the gateway under load (issue 14 point 5): requests in flight, its request
log batch not yet written. Metering then bills from the agents' receipt records alone:
every request the buyer received an answer for is billed exactly what it delivered,
every receipt the agents journaled is billed once, nothing lost, nothing doubled.

The gateway's batch is kept from landing by a lock the test holds on the request table
(``SHARE``: reads go on, the gateway's insert waits), so the kill always finds it
unwritten; its connection dies with it and the insert never happens.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest
from django.db.models import Sum

from capacity.metering.models import InferenceRequest, InferenceUsageHour, QuarantinedRecord
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from tests.db_locks import hold_share_lock, wait_for_lock_waiter
from tests.gateway.fleet_helpers import (
    MESSAGES,
    Delivered,
    receipt_truth,
    running_fleet,
    serving_nodes,
    sweep_now,
    sweep_until_polled,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PRODUCT = "hashgrid-kill-llama"
NODES = 2
TOKENS_PER_SECOND = 20
# Answered before the kill (short), then in flight when it comes (60 tokens: 3 s).
SHORT_MAX_TOKENS = (3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8)
LONG_MAX_TOKENS = 60
IN_FLIGHT = 8


@dataclass
class Outcome:
    """One request as its client saw it: whole (``delivered``) or broken."""

    rid: str | None
    delivered: Delivered | None
    content_chunks: int


def _one_request(sdk: openai.OpenAI, max_tokens: int, *, stream: bool) -> Outcome:
    rid = None
    chunks = 0
    try:
        if not stream:
            raw = sdk.chat.completions.with_raw_response.create(
                model=PRODUCT, messages=MESSAGES, max_tokens=max_tokens
            )
            rid = raw.headers["x-request-id"]
            usage = raw.parse().usage
            assert usage is not None
            return Outcome(rid, Delivered(rid, usage.prompt_tokens, usage.completion_tokens), 0)
        raw = sdk.chat.completions.with_raw_response.create(
            model=PRODUCT,
            messages=MESSAGES,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        rid = raw.headers["x-request-id"]
        last = None
        for chunk in raw.parse():
            chunks += bool(chunk.choices and chunk.choices[0].delta.content)
            last = chunk
        assert last is not None and last.usage is not None
        return Outcome(
            rid, Delivered(rid, last.usage.prompt_tokens, last.usage.completion_tokens), chunks
        )
    except (openai.APIError, httpx.HTTPError):
        return Outcome(rid, None, chunks)


def _settled_receipts(fleet, *, at_least: int, timeout_s: float = 15.0) -> dict[str, int]:
    """The agents' receipt totals once every request they took has ended (the same
    count twice, half a second apart)."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        totals = receipt_truth(fleet, range(NODES))
        if totals == previous and totals["records"] >= at_least:
            return totals
        previous = totals
        time.sleep(0.5)
    raise AssertionError(f"the agents' receipts did not settle: {previous}")


def test_a_gateway_killed_under_load_loses_no_billed_token(
    buyer_org, buyer_owner, partner_org, tmp_path, start_gateway, settings
):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    product = InferenceProduct.objects.create(
        slug=PRODUCT,
        name="Kill Llama",
        input_price_per_million_tokens="0.2000",
        output_price_per_million_tokens="0.6000",
    )
    line = on_demand_enable(buyer=buyer_org, actor=buyer_owner, inference_product=product)
    _api_key, secret = line_api_key_create(line=line, name="load", actor=buyer_owner)

    with running_fleet(tmp_path, nodes=NODES, tokens_per_second=TOKENS_PER_SECOND) as fleet:
        node_ids = serving_nodes(partner=partner_org, fleet=fleet, product=product)
        gateway = start_gateway()
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0, timeout=20)
        lock = hold_share_lock("metering_inferencerequest")
        try:
            with ThreadPoolExecutor(max_workers=IN_FLIGHT + 4) as pool:
                answered = list(
                    pool.map(
                        lambda pair: _one_request(sdk, pair[1], stream=pair[0] % 2 == 1),
                        enumerate(SHORT_MAX_TOKENS),
                    )
                )
                started = threading.Barrier(IN_FLIGHT + 1)

                def long_request(index: int) -> Outcome:
                    started.wait()
                    return _one_request(sdk, LONG_MAX_TOKENS, stream=index % 2 == 1)

                in_flight = [pool.submit(long_request, i) for i in range(IN_FLIGHT)]
                started.wait()
                time.sleep(1.0)  # every long request is on a node, a third through
                wait_for_lock_waiter(lock)  # the gateway's batch is being written
                gateway.kill()
                cut = [future.result() for future in in_flight]
        finally:
            lock.close()
        receipts = _settled_receipts(fleet, at_least=len(SHORT_MAX_TOKENS))
        result = sweep_until_polled()
        again = sweep_now()  # a second sweep finds nothing new
    assert (result.polled, result.failed, result.quarantined) == (NODES, 0, 0)
    assert not QuarantinedRecord.objects.exists()

    # Every short request was answered; none of the long ones was.
    assert all(outcome.delivered is not None for outcome in answered)
    assert [outcome.delivered for outcome in cut] == [None] * IN_FLIGHT
    # The gateway's batch never landed: every row is the agents' side only.
    rows = {row.request_id.hex: row for row in InferenceRequest.objects.all()}
    assert not any(row.logged_at for row in rows.values())
    # Every request reached an agent before the kill: one receipt record each.
    assert len(rows) == receipts["records"] == len(SHORT_MAX_TOKENS) + IN_FLIGHT
    # The long streams had begun (their X-Request-Id came with the first byte); the long
    # whole answers had not.
    assert [outcome.rid is not None for outcome in cut] == [False, True] * (IN_FLIGHT // 2)
    assert {row.node_id for row in rows.values()} == set(node_ids)

    # Answered: billed exactly what the buyer received.
    assert {
        o.rid: (rows[o.rid].billed_input_tokens, rows[o.rid].billed_output_tokens) for o in answered
    } == {o.rid: (o.delivered.input_tokens, o.delivered.output_tokens) for o in answered}
    # In flight: billed what the agent relayed (at least what reached the buyer, at most
    # the receipt's bound).
    for outcome in cut:
        if outcome.rid is None:
            continue  # a whole answer: nothing reached the buyer
        assert outcome.content_chunks > 0
        row = rows[outcome.rid]
        assert outcome.content_chunks <= row.billed_output_tokens <= LONG_MAX_TOKENS
        assert (row.billed_input_tokens, row.billed_output_tokens) == (
            row.agent_input_tokens,
            row.agent_output_tokens,
        )
    # Everything the agents journaled is billed once.
    billed = InferenceRequest.objects.aggregate(
        input_tokens=Sum("billed_input_tokens"), output_tokens=Sum("billed_output_tokens")
    )
    assert billed == {
        "input_tokens": receipts["input_tokens"],
        "output_tokens": receipts["output_tokens"],
    }
    assert (
        InferenceUsageHour.objects.filter(line_id=line.pk).aggregate(
            input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens")
        )
        == billed
    )
    assert (again.polled, again.inserted, again.quarantined) == (NODES, 0, 0)
