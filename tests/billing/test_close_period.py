"""manage.py close_period YYYY-MM: progress, grace window, charges, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from billing.models import Invoice, PaymentAttempt, PaymentStatus
from tests.billing.conftest import save_card
from tests.factories import ContractFactory

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command("close_period", *args, stdout=out)
    return out.getvalue()


def test_close_period_drafts_finalizes_charges_and_second_run_changes_nothing(
    buyer_org, localstripe
):
    save_card(buyer_org, localstripe)
    contract = ContractFactory(
        buyer=buyer_org,
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=25_000,
    )
    with time_machine.travel(datetime(2026, 11, 1, 2, tzinfo=UTC), tick=False):
        output = _run("2026-10")
    assert "drafted: 1/1" in output
    assert "finalization waits for the grace window: from 2026-11-04 00:00 UTC" in output
    assert Invoice.objects.get(contract=contract).status == "draft"
    with time_machine.travel(datetime(2026, 11, 4, 1, tzinfo=UTC), tick=False):
        output = _run("2026-10")
        assert "finalized: 1/1" in output and "charged: 1/1" in output
        invoice = Invoice.objects.get(contract=contract)
        assert (invoice.number, invoice.payment_status) == ("HG-2026-000001", PaymentStatus.PAID)
        again = _run("2026-10")
    assert "drafts created 0, updated 0, unchanged 0, already final 1" in again
    assert "finalized 0; charged 0" in again
    assert PaymentAttempt.objects.count() == 1
    assert len(localstripe.payment_intents_of(buyer_org.billing_customer.stripe_customer_id)) == 1


def test_bad_month_and_unfinished_month(buyer_org):
    with pytest.raises(CommandError, match="YYYY-MM"):
        _run("October")
    with (
        time_machine.travel(datetime(2026, 10, 20, tzinfo=UTC), tick=False),
        pytest.raises(CommandError, match="has not ended"),
    ):
        _run("2026-10")
