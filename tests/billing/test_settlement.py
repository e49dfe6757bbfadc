"""Settlement worked example: a reserved line over two nodes, an SLA credit charged back
to the node that was down, the statement, its approval, the ledger — to the cent."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import ValidationError

from accounts.models import AuditEvent
from billing.models import (
    Account,
    Attribution,
    JournalLine,
    LineKind,
    PaymentStatus,
    RevenueKind,
    SettlementStatement,
    StatementStatus,
)
from billing.settlement.agreements import agreement_create
from billing.settlement.attribution import partner_share_of, split_largest_remainder
from billing.settlement.statements import draft_statements, statement_approve
from tests.billing.conftest import save_card
from tests.billing.settlement_builders import (
    CLOSE_OCTOBER_AT,
    OCTOBER,
    close_october,
    observe_available,
    reserve_eight_gpus,
)

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def paid_october(buyer_org, partner_org, offer, devices, localstripe):
    """October paid: reserved 8 GPUs from the 15th ($6,854.40), one GPU of the second
    node down 20 hours (10 % SLA credit, -$685.44); the partner's reserved share is 70 %."""
    agreement_create(
        partner=partner_org,
        line_kind=RevenueKind.RESERVED,
        partner_share=D("0.7000"),
        effective_from=date(2026, 1, 1),
        actor=None,
    )
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    allocated = [a.gpu_device for a in line.allocations.order_by("gpu_device_id")]
    down_gpu = allocated[-1]
    observe_available(
        allocated,
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
        down={down_gpu: (date(2026, 10, 20), 0, 1200)},
    )
    save_card(buyer_org, localstripe)
    result = close_october()
    return line, down_gpu.node, result


def test_split_rules_are_exact():
    assert split_largest_remainder(100, {1: 1, 2: 1, 3: 1}) == {1: 34, 2: 33, 3: 33}
    assert split_largest_remainder(-100, {1: 1, 2: 1, 3: 1}) == {1: -34, 2: -33, 3: -33}
    assert split_largest_remainder(10, {1: D("0.5"), 2: D("9.5")}) == {1: 1, 2: 9}  # tie: lower id
    assert split_largest_remainder(10, {1: D("0.4"), 2: D("9.6")}) == {1: 0, 2: 10}
    assert split_largest_remainder(5, {1: 0, 2: 0}) == {}
    assert partner_share_of(999, D("0.8")) == 799  # 799.2 rounded down
    assert partner_share_of(-999, D("0.8")) == -800  # -799.2 rounded down (toward -inf)


def test_close_period_attributes_paid_lines_and_drafts_the_statement(
    paid_october, partner_org, buyer_org
):
    line, down_node, result = paid_october
    assert result.statements is not None and result.statements.created == 1
    invoice = line.contract.invoices.get(month=OCTOBER)
    assert invoice.payment_status == PaymentStatus.PAID
    assert [(x.kind, x.amount_minor) for x in invoice.lines.order_by("position")] == [
        (LineKind.RESERVED, 685_440),
        (LineKind.SLA_CREDIT, -68_544),
    ]
    rows = [
        (
            a.invoice_line.kind,
            a.node_id,
            a.amount_minor,
            a.partner_share_minor,
            a.platform_fee_minor,
        )
        for a in Attribution.objects.order_by("invoice_line__position", "node_id")
    ]
    nodes = sorted({a.node_id for a in Attribution.objects.all()})
    assert len(nodes) == 2 and down_node.pk == nodes[1]
    assert rows == [
        # reserved: equal GPU-seconds on both nodes; 70 % of 342,720 = 239,904
        (LineKind.RESERVED, nodes[0], 342_720, 239_904, 102_816),
        (LineKind.RESERVED, nodes[1], 342_720, 239_904, 102_816),
        # the SLA credit is charged back to the node that was down only;
        # 70 % of -68,544 = -47,980.8, rounded down to -47,981
        (LineKind.SLA_CREDIT, nodes[1], -68_544, -47_981, -20_563),
    ]
    statement = SettlementStatement.objects.get()
    assert (
        statement.partner,
        statement.month,
        statement.status,
        statement.earnings_minor,
        statement.adjustments_minor,
        statement.carried_in_minor,
        statement.payout_minor,
        statement.carried_out_minor,
    ) == (partner_org, OCTOBER, StatementStatus.DRAFT, 431_827, 0, 0, 431_827, 0)
    assert invoice.total_minor == 616_896 == 431_827 + 185_069
    assert not JournalLine.objects.filter(account=Account.PARTNER_PAYABLE).exists()


def test_closing_again_settles_nothing_twice(paid_october):
    before = list(Attribution.objects.order_by("pk").values())
    statement = SettlementStatement.objects.get()
    result = close_october()
    assert result.statements.invoices_attributed == 0
    assert list(Attribution.objects.order_by("pk").values()) == before
    assert SettlementStatement.objects.get().earnings_minor == statement.earnings_minor


def test_approval_posts_the_settlement_and_freezes_the_statement(paid_october, partner_org):
    statement = SettlementStatement.objects.get()
    with time_machine.travel(datetime(2026, 11, 6, tzinfo=UTC), tick=False):
        approved = statement_approve(statement=statement, actor=None)
    assert approved.status == StatementStatus.APPROVED
    lines = sorted(
        JournalLine.objects.filter(entry__key=f"settlement:{statement.pk}").values_list(
            "account", "amount_minor", "organization_id"
        )
    )
    assert lines == [
        (Account.PARTNER_PAYABLE, -431_827, partner_org.pk),
        (Account.PARTNER_SHARE, 431_827, None),
    ]
    assert AuditEvent.objects.filter(action="billing.statement_approved").count() == 1
    with pytest.raises(ValidationError, match="already approved"):
        statement_approve(statement=statement, actor=None)
    # A later drafting never touches an approved statement.
    with time_machine.travel(datetime(2026, 11, 7, tzinfo=UTC), tick=False):
        result = draft_statements(month=OCTOBER)
    assert (result.created, result.updated) == (0, 0)
    assert SettlementStatement.objects.get().approved_at == approved.approved_at


def test_unpaid_invoices_are_not_settled(buyer_org, partner_org, offer, devices):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    result = close_october(charge=False)
    assert result.statements.invoices_attributed == 0
    assert not Attribution.objects.exists() and not SettlementStatement.objects.exists()
    assert CLOSE_OCTOBER_AT  # the close ran after the grace window
