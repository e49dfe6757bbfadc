"""Forged inference usage (issue 13 item 1, issue 14 item 5): a partner node signs a
record of 10^12 tokens for a buyer: naming the buyer's key by its prefix (visible to every
member), under a receipt it signed itself, under another node's receipt, or inflating a
genuine receipt. Polled for real (signed, chained), each is quarantined with its reason:
rating bills nothing for it and settlement credits the node nothing. The honest twin, a
receipt record within its receipt, bills to the cent and settles to the node."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from billing.models import Attribution, InvoiceLine, LineKind, RevenueKind, SettlementStatement
from billing.settlement.agreements import agreement_create
from capacity.agent.receipts import Receipt, sign_receipt
from capacity.metering import batch
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import (
    HourlyUsage,
    InferenceRequest,
    QuarantinedRecord,
    QuarantineReason,
    UsageRecord,
)
from tests.billing.conftest import inference_line_with_key, save_card
from tests.billing.settlement_builders import OCTOBER, close_october
from tests.capacity.metering.conftest import (  # noqa: F401 (fixtures)
    agent_key,
    fake_agent,
    make_fields,
    node,
    partner_admin,
)
from tests.capacity.metering.receipt_builders import receipt_fields, receipt_for

pytestmark = pytest.mark.django_db
D = Decimal
FORGED_TOKENS = 10**12
WINDOW_START = datetime(2026, 10, 20, 10, tzinfo=UTC)
RID = "f" * 32


@pytest.fixture
def partner_node(
    node,  # noqa: F811 (fixtures imported above)
    fake_agent,  # noqa: F811 (fixtures imported above)
):
    """The metering tests' node (two GPUs) and its signing fake agent: another site of
    the partner whose nodes serve ``llm``."""
    return node, fake_agent


def _poll_and_close(*, forging, agent, buyer_org, buyer_owner, llm, localstripe, record):
    """The buyer's inference line and key; one signed, chained record built by
    ``record(line, key)``, polled from ``forging``; October closed and paid."""
    agreement_create(
        partner=forging.site.organization,
        line_kind=RevenueKind.INFERENCE,
        partner_share=D("0.8000"),
        effective_from=date(2026, 1, 1),
        actor=None,
    )
    line, key = inference_line_with_key(
        buyer=buyer_org, actor=buyer_owner, product=llm, now=datetime(2026, 10, 1, tzinfo=UTC)
    )
    agent.append(record(line, key))
    batch.poll_and_store(
        [forging.pk],
        now=WINDOW_START + timedelta(minutes=5),
        interval_seconds=60,
        transport=agent.transport(),
    )
    attribute_new_records()
    save_card(buyer_org, localstripe)
    close_october()
    return line


def _receipt(serving, line, key, **changes):
    return receipt_for(
        serving,
        rid=RID,
        line_id=line.pk,
        key_id=key.pk,
        product=line.inference_product.slug,
        max_input_tokens=2_000_000,
        max_output_tokens=2_000_000,
        issued_at=WINDOW_START,
        **changes,
    )


def _receipt_record(serving, *, tokens, token=None, **changes):
    def build(line, key):
        return receipt_fields(
            _receipt(serving, line, key, **changes),
            input_tokens=tokens,
            output_tokens=tokens,
            ended_at=WINDOW_START + timedelta(seconds=30),
            token=token,
        )

    return build


def _key_prefix_record(llm):
    """The retired convention: a window naming the buyer's key by its (visible) prefix."""

    def build(line, key):
        return make_fields(
            0,
            kind="inference",
            ref=f"{llm.slug}@{key.prefix}",
            start=WINDOW_START,
            input_tokens=FORGED_TOKENS,
            output_tokens=FORGED_TOKENS,
            requests=1,
        )

    return build


FORGERIES = {
    # No receipt at all: the buyer's key named by its prefix.
    "key_prefix_ref": lambda serving, llm: (
        _key_prefix_record(llm),
        QuarantineReason.PRODUCT_NOT_SERVED,
        f"the node does not serve inference product '{llm.slug}@",
    ),
    # A receipt the partner signed with a key of its own.
    "self_signed_receipt": lambda serving, llm: (
        _receipt_record(
            serving,
            tokens=FORGED_TOKENS,
            token=sign_receipt(
                Ed25519PrivateKey.generate(),
                Receipt(
                    1, RID, serving.pk, serving.agent_public_key, 1, 1, llm.slug, 10**7, 10**7, 1
                ),
            ),
        ),
        QuarantineReason.RECEIPT_INVALID,
        "receipt signature is not the platform's",
    ),
    # A genuine receipt of another node, replayed here.
    "receipt_of_another_node": lambda serving, llm: (
        _receipt_record(serving, tokens=1, node_id=serving.pk + 1),
        QuarantineReason.RECEIPT_OTHER_NODE,
        f"receipt {RID} was issued for node {serving.pk + 1}",
    ),
    # A genuine receipt for this node, inflated.
    "tokens_over_the_receipt": lambda serving, llm: (
        _receipt_record(serving, tokens=FORGED_TOKENS),
        QuarantineReason.TOKENS_OVER_RECEIPT,
        f"{FORGED_TOKENS} / {FORGED_TOKENS} tokens > the receipt's 2000000 / 2000000",
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_inference_bills_and_credits_nothing(
    forgery, partner_node, buyer_org, buyer_owner, llm, localstripe
):
    forging, agent = partner_node
    llm.nodes.add(forging)
    record, reason, detail = FORGERIES[forgery](forging, llm)

    line = _poll_and_close(
        forging=forging,
        agent=agent,
        buyer_org=buyer_org,
        buyer_owner=buyer_owner,
        llm=llm,
        localstripe=localstripe,
        record=record,
    )

    quarantined = QuarantinedRecord.objects.get(node=forging)
    assert quarantined.reason == reason
    assert quarantined.detail.startswith(detail)
    assert not UsageRecord.objects.exists()
    assert not HourlyUsage.objects.exists()
    assert not InferenceRequest.objects.exists()
    assert not InvoiceLine.objects.filter(invoice__contract_id=line.contract_id).exists()
    assert line.contract.invoices.get(month=OCTOBER).total_minor == 0
    assert not Attribution.objects.exists()
    assert not SettlementStatement.objects.filter(partner=forging.site.organization).exists()


def test_a_receipt_record_within_its_receipt_bills_and_settles(
    partner_node, buyer_org, buyer_owner, llm, localstripe
):
    forging, agent = partner_node

    line = _poll_and_close(
        forging=forging,
        agent=agent,
        buyer_org=buyer_org,
        buyer_owner=buyer_owner,
        llm=llm,
        localstripe=localstripe,
        record=_receipt_record(forging, tokens=1_500_000),
    )

    assert not QuarantinedRecord.objects.exists()
    invoice = line.contract.invoices.get(month=OCTOBER)
    assert sorted(invoice.lines.values_list("kind", "amount_minor")) == [
        (LineKind.INFERENCE_INPUT, 30),  # 1.5 M x $0.20
        (LineKind.INFERENCE_OUTPUT, 90),  # 1.5 M x $0.60
    ]
    assert sorted(
        Attribution.objects.values_list("node_id", "amount_minor", "partner_share_minor")
    ) == [(forging.pk, 30, 24), (forging.pk, 90, 72)]
