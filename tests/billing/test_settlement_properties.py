"""Conservation to the cent over hypothesis-generated months: partners with their own
shares and nodes, buyers whose inference ran on several partners' GPUs, commitments the
platform keeps. Whatever the numbers:

- every paid line = the partner shares + the platform fees of its attributions;
- each share is the exact share rounded down, the fee the remainder;
- the statements carry exactly the partners' shares, payouts exactly the statements;
- every journal entry balances, and ``reconcile`` finds no difference (Stripe included).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

import pytest
import time_machine
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import (
    Attribution,
    Invoice,
    JournalLine,
    PaymentStatus,
    Payout,
    RevenueKind,
    SettlementStatement,
    StatementStatus,
)
from billing.reconcile import reconcile_month
from billing.settlement import payouts
from billing.settlement.agreements import agreement_create
from billing.settlement.statements import statement_approve
from contracts.models import Contract, InferenceProduct
from tests.billing.conftest import add_tokens, inference_line_with_key, save_card
from tests.billing.settlement_builders import OCTOBER, close_october, onboard
from tests.factories import MembershipFactory, OrganizationFactory, SiteFactory, gpu_pool

shares = st.decimals(min_value=Decimal("0"), max_value=Decimal("1"), places=4)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("20"), places=4)
usage = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=11),  # which GPU (over every partner's GPUs)
        st.integers(min_value=0, max_value=743),  # hour of October
        st.integers(min_value=0, max_value=10**9),  # input tokens
        st.integers(min_value=0, max_value=10**9),  # output tokens
    ),
    min_size=1,
    max_size=5,
)
months = st.tuples(
    st.lists(st.tuples(shares, st.integers(min_value=1, max_value=2)), min_size=1, max_size=3),
    st.lists(
        st.tuples(prices, prices, st.integers(min_value=0, max_value=10**6), usage),
        min_size=1,
        max_size=3,
    ),
)


@pytest.mark.django_db
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(month=months)
def test_paid_lines_equal_shares_plus_fees_and_the_month_reconciles(
    month, llm, localstripe, connect_fake
):
    partner_specs, buyer_specs = month
    partners, devices = [], []
    for share, node_count in partner_specs:
        partner = OrganizationFactory(is_buyer=False, is_partner=True)
        agreement_create(
            partner=partner,
            line_kind=RevenueKind.INFERENCE,
            partner_share=share,
            effective_from=date(2026, 1, 1),
            actor=None,
        )
        site = SiteFactory(organization=partner)
        devices += gpu_pool(site=site, gpus=2 * node_count, per_node=2)
        partners.append(partner)
    contracts = []
    for input_price, output_price, commitment, records in buyer_specs:
        buyer = OrganizationFactory(is_buyer=True)
        owner = MembershipFactory(organization=buyer, role="owner").user
        InferenceProduct.objects.filter(pk=llm.pk).update(
            input_price_per_million_tokens=input_price, output_price_per_million_tokens=output_price
        )
        llm.refresh_from_db()
        line, key = inference_line_with_key(
            buyer=buyer, actor=owner, product=llm, now=datetime(2026, 9, 20, tzinfo=UTC)
        )
        Contract.objects.filter(pk=line.contract_id).update(monthly_commitment_minor=commitment)
        contracts.append(line.contract_id)
        save_card(buyer, localstripe)
        for gpu, hour, input_tokens, output_tokens in records:
            add_tokens(
                gpu=devices[gpu % len(devices)],
                hour=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(hours=hour),
                line=line,
                key=key,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
    close_october()

    paid = Invoice.objects.filter(contract_id__in=contracts, payment_status=PaymentStatus.PAID)
    for invoice in paid.prefetch_related("lines__attributions"):
        for line in invoice.lines.all():
            parts = list(line.attributions.all())
            assert sum(p.amount_minor for p in parts) == line.amount_minor
            assert sum(p.partner_share_minor + p.platform_fee_minor for p in parts) == (
                line.amount_minor
            )
            for part in parts:
                exact = Decimal(part.amount_minor) * part.share
                assert part.partner_share_minor == int(exact.to_integral_value(ROUND_FLOOR))
                assert 0 <= part.amount_minor * part.share - part.partner_share_minor < 1
    paid_total = paid.aggregate(total=Sum("total_minor"))["total"] or 0
    attributed = Attribution.objects.filter(invoice__in=paid).aggregate(
        share=Sum("partner_share_minor"), fee=Sum("platform_fee_minor")
    )
    assert (attributed["share"] or 0) + (attributed["fee"] or 0) == paid_total

    with time_machine.travel(datetime(2026, 11, 6, tzinfo=UTC), tick=False):
        for partner in partners:
            onboard(partner, connect_fake)
            for statement in SettlementStatement.objects.filter(partner=partner):
                earned = Attribution.objects.filter(partner=partner).aggregate(
                    total=Sum("partner_share_minor")
                )["total"]
                assert statement.earnings_minor == (earned or 0)
                statement_approve(statement=statement, actor=None)
                payouts.statement_pay(statement=statement, actor=None)
                statement.refresh_from_db()
                assert statement.status == StatementStatus.PAID
                payout = Payout.objects.filter(statement=statement).first()
                assert (payout.amount_minor if payout else 0) == statement.payout_minor >= 0

    unbalanced = (
        JournalLine.objects.values("entry_id", "currency")
        .annotate(total=Sum("amount_minor"))
        .exclude(total=0)
    )
    assert not unbalanced.exists()
    report = reconcile_month(month=OCTOBER)
    assert report.is_clean, "\n".join(report.lines())
