"""A month of inference through the real gateway, to the cent (docs/gateway.md, issue 14
point 7).

A buyer's key on an inference line; requests with the official ``openai`` SDK through
the gateway process (answers whole and streamed, a stream the buyer abandons half way,
attempts a refusing node fails before the first byte, one request every node refuses)
to a partner's nodes of the fleet simulator (agents v1.1: receipts checked, one journal
record per request); metering polls the agents over HTTP; the month closes (the clock
moves past the grace window with time-machine); the invoice's inference lines are
exactly the tokens the SDK received x the line's prices, and the partner's statement
credits exactly the nodes that served them, each by the tokens it served.

What the buyer received is counted from the SDK alone: ``usage`` of whole answers, the
``include_usage`` chunk of streams that asked for it, and for the others one output
token per content chunk (the simulator's engine sends one token per chunk) with the
prompt's tokens by the engine's rule (words + 4 per message, checked against an
answer's usage).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

import openai
import pytest
import time_machine
from django.db.models import Sum
from django.utils import timezone

from billing.closing import close_period
from billing.models import (
    Attribution,
    Invoice,
    InvoiceStatus,
    LineKind,
    PaymentStatus,
    RevenueKind,
    SettlementStatement,
)
from billing.periods import finalizable_at, month_of
from billing.settlement.agreements import agreement_create
from capacity.metering.models import InferenceRequest, InferenceUsageHour, QuarantinedRecord
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    localstripe,
    save_card,
    stripe_proxy,
    stripe_settings,
)
from tests.gateway.conftest import logged_rows
from tests.gateway.fleet_helpers import (
    MESSAGES,
    PROMPT_TOKENS,
    Delivered,
    receipt_truth,
    running_fleet,
    serving_nodes,
    sweep_until_polled,
)

pytestmark = [pytest.mark.slow, pytest.mark.calendar, pytest.mark.django_db(transaction=True)]
D = Decimal
PRODUCT = "hashgrid-month-llama"
# High prices, so a few dozen tokens make cents (and half cents to round).
INPUT_PRICE, OUTPUT_PRICE = D("15000.0000"), D("65000.0000")
INFERENCE_SHARE = D("0.7000")
# Ten tokens a second: a stream the buyer leaves stops being relayed before its next token.
TOKENS_PER_SECOND = 10


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(D("1"), rounding=ROUND_HALF_UP))


def split_by_weight(amount_minor: int, weights: dict[int, int]) -> dict[int, int]:
    """Largest remainder, ties to the lower node id (the split attribution documents)."""
    total = sum(weights.values())
    exact = {key: D(amount_minor) * weight / total for key, weight in weights.items()}
    parts = {
        key: int(value.to_integral_value(rounding=ROUND_FLOOR)) for key, value in exact.items()
    }
    by_remainder = sorted(exact, key=lambda key: (-(exact[key] - parts[key]), key))
    for key in by_remainder[: amount_minor - sum(parts.values())]:
        parts[key] += 1
    return parts


def _requests(sdk: openai.OpenAI) -> list[Delivered]:
    """The buyer's month: what each answered request delivered, by its X-Request-Id."""
    delivered = []

    # A whole answer: its usage.
    raw = sdk.chat.completions.with_raw_response.create(
        model=PRODUCT, messages=MESSAGES, max_tokens=7
    )
    answer = raw.parse()
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (PROMPT_TOKENS, 7)
    delivered.append(Delivered(raw.headers["x-request-id"], 8, 7))

    # A whole completion (prompt: 4 words, no message overhead).
    raw = sdk.completions.with_raw_response.create(
        model=PRODUCT, prompt="Once upon a time", max_tokens=3
    )
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.choices[0].text == " tok0 tok1 tok2"
    delivered.append(
        Delivered(
            raw.headers["x-request-id"],
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens,
        )
    )

    # A stream that asked for usage: its last chunk.
    raw = sdk.chat.completions.with_raw_response.create(
        model=PRODUCT,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    delivered.append(
        Delivered(raw.headers["x-request-id"], usage.prompt_tokens, usage.completion_tokens)
    )

    # A stream without usage: one token per content chunk.
    raw = sdk.chat.completions.with_raw_response.create(
        model=PRODUCT, messages=MESSAGES, max_tokens=4, stream=True
    )
    contents = [c.choices[0].delta.content for c in raw.parse() if c.choices]
    tokens = [content for content in contents if content]
    assert "".join(tokens) == " tok0 tok1 tok2 tok3"
    delivered.append(Delivered(raw.headers["x-request-id"], PROMPT_TOKENS, len(tokens)))

    # A stream the buyer leaves after 6 of its 40 tokens.
    raw = sdk.chat.completions.with_raw_response.create(
        model=PRODUCT, messages=MESSAGES, max_tokens=40, stream=True
    )
    stream = raw.parse()
    received = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if len(received) == 6:
            break
    stream.close()
    assert "".join(received) == " tok0 tok1 tok2 tok3 tok4 tok5"
    delivered.append(Delivered(raw.headers["x-request-id"], PROMPT_TOKENS, len(received)))
    return delivered


def test_a_month_through_the_gateway_bills_exactly_what_the_sdk_received(
    buyer_org,
    buyer_owner,
    partner_org,
    tmp_path,
    start_gateway,
    localstripe,  # noqa: F811 (fixtures imported above)
    connect_fake,  # noqa: F811 (fixtures imported above)
):
    month = month_of(timezone.now())
    agreement_create(
        partner=partner_org,
        line_kind=RevenueKind.INFERENCE,
        partner_share=INFERENCE_SHARE,
        effective_from=date(2026, 1, 1),
        actor=None,
    )
    product = InferenceProduct.objects.create(
        slug=PRODUCT,
        name="Month Llama",
        input_price_per_million_tokens=INPUT_PRICE,
        output_price_per_million_tokens=OUTPUT_PRICE,
    )
    save_card(buyer_org, localstripe)
    line = on_demand_enable(buyer=buyer_org, actor=buyer_owner, inference_product=product)
    _api_key, secret = line_api_key_create(line=line, name="prod", actor=buyer_owner)

    with running_fleet(tmp_path, nodes=3, tokens_per_second=TOKENS_PER_SECOND) as fleet:
        node_ids = serving_nodes(partner=partner_org, fleet=fleet, product=product)
        # The first node's engine refuses everything: the gateway fails over before the
        # first byte (and sets it aside after three failures).
        fleet.inject("engine_refuse", [0], count=1_000)
        gateway = start_gateway()
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)

        delivered = _requests(sdk)
        # Every node refuses the next request: the buyer gets an error, and nothing to pay.
        fleet.inject("engine_refuse", [1, 2], count=1)
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(model=PRODUCT, messages=MESSAGES, max_tokens=9)
        assert refused.value.status_code == 503

        attempts = logged_rows(count=len(delivered) + 3)
        poll = sweep_until_polled()
        receipts = receipt_truth(fleet, range(3))
    assert (poll.polled, poll.failed) == (3, 0)
    assert not QuarantinedRecord.objects.exists()

    rows = {row.request_id.hex: row for row in InferenceRequest.objects.all()}
    answered = {d.rid for d in delivered}
    # Every attempt has both witnesses; the answered ones are billed what the SDK got.
    assert len(rows) == len(attempts) == receipts["records"]
    assert {
        rid: (row.billed_input_tokens, row.billed_output_tokens)
        for rid, row in rows.items()
        if rid in answered
    } == {d.rid: (d.input_tokens, d.output_tokens) for d in delivered}
    # The abandoned stream (the last one delivered) is the gateway's 499, at what it relayed.
    abandoned = rows[delivered[-1].rid]
    assert (abandoned.gateway_status, abandoned.gateway_output_tokens) == (499, 6)
    assert [rows[d.rid].gateway_status for d in delivered[:-1]] == [200] * 4
    failed = [row for rid, row in rows.items() if rid not in answered]
    assert failed, "no attempt failed"
    assert {
        (
            row.gateway_status,
            row.gateway_output_tokens,
            row.billed_input_tokens,
            row.billed_output_tokens,
        )
        for row in failed
    } == {(503, 0, 0, 0)}
    assert {(row.agent_input_tokens, row.agent_output_tokens) for row in failed} == {(0, 0)}
    # The refusing node served nothing; the others served the answered requests.
    served_by = {row.node_id for rid, row in rows.items() if rid in answered}
    assert served_by == set(node_ids[1:])
    assert {row.node_id for row in failed} <= set(node_ids)

    tokens_in = sum(d.input_tokens for d in delivered)
    tokens_out = sum(d.output_tokens for d in delivered)
    assert InferenceUsageHour.objects.filter(line_id=line.pk).aggregate(
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens")
    ) == {"input_tokens": tokens_in, "output_tokens": tokens_out}

    # -- the month ends: close it -----------------------------------------------------
    closed_at = finalizable_at(month) + timedelta(hours=1)
    with time_machine.travel(closed_at, tick=False):
        result = close_period(month=month)
    assert (result.finalized, result.charged, result.charge_failures) == (1, 1, 0)
    invoice = Invoice.objects.get(contract=line.contract, month=month)
    assert (invoice.status, invoice.payment_status) == (InvoiceStatus.FINALIZED, PaymentStatus.PAID)
    expected = {
        LineKind.INFERENCE_INPUT: cents(D(tokens_in) * INPUT_PRICE / 1_000_000),
        LineKind.INFERENCE_OUTPUT: cents(D(tokens_out) * OUTPUT_PRICE / 1_000_000),
    }
    assert {item.kind: item.amount_minor for item in invoice.lines.all()} == expected
    assert invoice.total_minor == sum(expected.values())

    # -- the partner's statement: the serving nodes, by the tokens each served ----------
    per_node = {
        kind: dict.fromkeys(served_by, 0)
        for kind in (LineKind.INFERENCE_INPUT, LineKind.INFERENCE_OUTPUT)
    }
    for d in delivered:
        node_id = rows[d.rid].node_id
        per_node[LineKind.INFERENCE_INPUT][node_id] += d.input_tokens
        per_node[LineKind.INFERENCE_OUTPUT][node_id] += d.output_tokens
    statement = SettlementStatement.objects.get(partner=partner_org, month=month)
    expected_share = 0
    for item in invoice.lines.all():
        parts = split_by_weight(item.amount_minor, per_node[item.kind])
        attributions = {
            a.node_id: (a.amount_minor, a.partner_share_minor)
            for a in Attribution.objects.filter(invoice_line=item)
        }
        shares = {
            node_id: int((D(part) * INFERENCE_SHARE).to_integral_value(rounding=ROUND_FLOOR))
            for node_id, part in parts.items()
        }
        assert attributions == {node_id: (parts[node_id], shares[node_id]) for node_id in parts}
        assert {a.statement_id for a in Attribution.objects.filter(invoice_line=item)} == {
            statement.pk
        }
        expected_share += sum(shares.values())
    assert statement.earnings_minor == expected_share
