"""Forged inference usage (issue 13, item 1): a partner node that does not serve a product
signs a record naming a buyer's key (key prefixes are visible to every member) with 10^12
tokens. Polled for real (signed, chained), it is quarantined with its reason: rating bills
nothing for it and settlement credits the node nothing. The same record's honest twin,
from a node serving the product within its throughput, bills to the cent."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import Attribution, InvoiceLine, LineKind, RevenueKind, SettlementStatement
from billing.settlement.agreements import agreement_create
from capacity.metering import batch
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import HourlyUsage, QuarantinedRecord, QuarantineReason, UsageRecord
from tests.billing.conftest import inference_line_with_key, save_card
from tests.billing.settlement_builders import OCTOBER, close_october
from tests.capacity.metering.conftest import (  # noqa: F401 (fixtures)
    agent_key,
    fake_agent,
    make_fields,
    node,
    partner_admin,
)

pytestmark = pytest.mark.django_db
D = Decimal
FORGED_TOKENS = 10**12
WINDOW_START = datetime(2026, 10, 20, 10, tzinfo=UTC)


@pytest.fixture
def partner_node(
    node,  # noqa: F811 (fixtures imported above)
    fake_agent,  # noqa: F811 (fixtures imported above)
):
    """The metering tests' node (two GPUs) and its signing fake agent: another site of
    the partner whose nodes serve ``llm``."""
    return node, fake_agent


def _poll_and_close(*, forging, agent, buyer_org, buyer_owner, llm, localstripe, tokens):
    """The buyer's inference line and key; one signed record of ``tokens`` input and
    output tokens naming the key, polled from ``forging``; October closed and paid."""
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
    agent.append(
        make_fields(
            0,
            kind="inference",
            ref=f"{llm.slug}@{key.prefix}",
            start=WINDOW_START,
            input_tokens=tokens,
            output_tokens=tokens,
            requests=1,
        )
    )
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


def test_forged_tokens_from_a_node_not_serving_the_product_bill_and_credit_nothing(
    partner_node, buyer_org, buyer_owner, llm, localstripe
):
    forging, agent = partner_node
    assert not llm.nodes.filter(pk=forging.pk).exists()

    line = _poll_and_close(
        forging=forging,
        agent=agent,
        buyer_org=buyer_org,
        buyer_owner=buyer_owner,
        llm=llm,
        localstripe=localstripe,
        tokens=FORGED_TOKENS,
    )

    quarantined = QuarantinedRecord.objects.get(node=forging)
    assert (quarantined.reason, quarantined.detail) == (
        QuarantineReason.PRODUCT_NOT_SERVED,
        f"the node does not serve inference product {llm.slug!r}",
    )
    assert quarantined.payload["input_tokens"] == FORGED_TOKENS
    assert not UsageRecord.objects.exists()
    assert not HourlyUsage.objects.exists()
    assert not InvoiceLine.objects.filter(invoice__contract_id=line.contract_id).exists()
    assert line.contract.invoices.get(month=OCTOBER).total_minor == 0
    assert not Attribution.objects.exists()
    assert not SettlementStatement.objects.filter(partner=forging.site.organization).exists()


def test_tokens_above_the_products_throughput_are_quarantined_even_from_a_serving_node(
    partner_node, buyer_org, buyer_owner, llm, localstripe
):
    forging, agent = partner_node
    llm.nodes.add(forging)

    line = _poll_and_close(
        forging=forging,
        agent=agent,
        buyer_org=buyer_org,
        buyer_owner=buyer_owner,
        llm=llm,
        localstripe=localstripe,
        tokens=FORGED_TOKENS,
    )

    assert QuarantinedRecord.objects.get(node=forging).reason == (
        QuarantineReason.TOKENS_EXCEED_THROUGHPUT
    )
    assert not InvoiceLine.objects.filter(invoice__contract_id=line.contract_id).exists()
    assert not Attribution.objects.exists()


def test_tokens_within_the_throughput_of_a_serving_node_bill_and_settle(
    partner_node, buyer_org, buyer_owner, llm, localstripe
):
    forging, agent = partner_node
    llm.nodes.add(forging)

    # 1.5 M input + 1.5 M output tokens in a minute: 50,000 per GPU-second, the default.
    line = _poll_and_close(
        forging=forging,
        agent=agent,
        buyer_org=buyer_org,
        buyer_owner=buyer_owner,
        llm=llm,
        localstripe=localstripe,
        tokens=1_500_000,
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
