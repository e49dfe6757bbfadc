"""Properties for arbitrary contracts and usage (hypothesis): the invoice total is the sum
of its rounded lines, every line is its exact amount rounded once, and closing a period
twice changes nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.closing import close_period
from billing.models import Invoice, InvoiceLine, JournalLine
from billing.rating import rate_month
from contracts.models import Contract
from tests.billing.conftest import add_tokens, inference_line_with_key
from tests.factories import MembershipFactory, OrganizationFactory

OCTOBER = date(2026, 10, 1)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("50"), places=4)
usage = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=743),  # hour of October
        st.integers(min_value=0, max_value=10**10),  # input tokens
        st.integers(min_value=0, max_value=10**10),  # output tokens
    ),
    max_size=6,
)
contracts = st.lists(
    st.tuples(prices, prices, st.integers(min_value=0, max_value=10**7), usage),
    min_size=1,
    max_size=3,
)


def _snapshot():
    return (
        list(Invoice.objects.order_by("pk").values()),
        list(InvoiceLine.objects.order_by("pk").values()),
        list(JournalLine.objects.order_by("pk").values()),
    )


@pytest.mark.django_db
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=contracts)
def test_total_is_the_sum_of_rounded_lines_and_closing_twice_changes_nothing(specs, llm, devices):
    from contracts.models import InferenceProduct

    # Examples share one database transaction: earlier examples' invoices stay (finalized,
    # untouchable) and must not change either.
    created: list[int] = []
    for input_price, output_price, commitment, records in specs:
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
        created.append(line.contract_id)
        for hour, input_tokens, output_tokens in records:
            add_tokens(
                gpu=devices[hour % len(devices)],
                hour=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(hours=hour),
                line=line,
                key=key,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
    rated = rate_month(month=OCTOBER)
    for lines in rated.values():
        for line in lines:
            assert line.amount_minor == int(
                (line.exact_amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            )
    with time_machine.travel(datetime(2026, 11, 5, tzinfo=UTC), tick=False):
        close_period(month=OCTOBER, charge=False)
        first = _snapshot()
        result = close_period(month=OCTOBER, charge=False)
        assert _snapshot() == first
    assert result.finalized == 0 and result.drafted.created == result.drafted.updated == 0
    for invoice in Invoice.objects.filter(contract_id__in=created).prefetch_related("lines"):
        assert invoice.total_minor == sum(line.amount_minor for line in invoice.lines.all())
        assert invoice.total_minor == sum(r.amount_minor for r in rated[invoice.contract_id])
        assert (
            invoice.total_minor
            >= Contract.objects.get(pk=invoice.contract_id).monthly_commitment_minor
        )
