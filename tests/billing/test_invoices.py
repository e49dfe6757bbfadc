"""Invoices: one per contract and month, gap-free numbers, immutable once finalized."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from billing import ledger
from billing.invoices import draft_invoices, finalize_invoices
from billing.models import Account, Invoice, InvoiceLine, InvoiceStatus, PaymentStatus
from billing.numbering import issue_numbers
from tests.factories import ContractFactory

pytestmark = pytest.mark.django_db
OCTOBER = date(2026, 10, 1)


@pytest.fixture
def contracts():
    """Three active contracts with a $100 commitment each (one true-up line each)."""
    return [
        ContractFactory(
            starts_at=datetime(2026, 9, 1, tzinfo=UTC),
            activated_at=datetime(2026, 9, 1, tzinfo=UTC),
            monthly_commitment_minor=10_000 * (i + 1),
        )
        for i in range(3)
    ]


def test_drafting_waits_for_the_month_end(contracts):
    with (
        time_machine.travel(datetime(2026, 10, 31, 23, 59, tzinfo=UTC), tick=False),
        pytest.raises(ValidationError),
    ):
        draft_invoices(month=OCTOBER)
    assert not Invoice.objects.exists()


def test_finalizing_waits_for_the_grace_window_then_numbers_gap_free(contracts):
    with time_machine.travel(datetime(2026, 11, 1, tzinfo=UTC), tick=False):
        assert draft_invoices(month=OCTOBER).created == 3
        with pytest.raises(ValidationError, match="grace window"):
            finalize_invoices(month=OCTOBER)
    assert set(Invoice.objects.values_list("status", flat=True)) == {InvoiceStatus.DRAFT}
    with time_machine.travel(datetime(2026, 11, 4, tzinfo=UTC), tick=False):
        result = finalize_invoices(month=OCTOBER)
    assert result.numbers == ["HG-2026-000001", "HG-2026-000002", "HG-2026-000003"]
    invoices = list(Invoice.objects.order_by("number"))
    assert [i.total_minor for i in invoices] == [10_000, 20_000, 30_000]
    assert {i.payment_status for i in invoices} == {PaymentStatus.UNPAID}
    # Each finalization is in the ledger: receivable per buyer = its invoice.
    for invoice in invoices:
        assert (
            ledger.receivable_of(organization=invoice.buyer, currency="USD") == invoice.total_minor
        )
    assert ledger.account_balances()[(Account.REVENUE, "USD")] == -60_000
    with time_machine.travel(datetime(2026, 11, 5, tzinfo=UTC), tick=False):
        assert finalize_invoices(month=OCTOBER).finalized == 0  # nothing left


def test_a_december_invoice_is_numbered_in_the_year_it_is_finalized():
    ContractFactory(
        starts_at=datetime(2026, 12, 1, tzinfo=UTC),
        activated_at=datetime(2026, 12, 1, tzinfo=UTC),
        monthly_commitment_minor=10_000,
    )
    december = date(2026, 12, 1)
    with time_machine.travel(datetime(2027, 1, 1, 0, 5, tzinfo=UTC), tick=False):
        assert draft_invoices(month=december).created == 1
    with time_machine.travel(datetime(2027, 1, 4, 0, 5, tzinfo=UTC), tick=False):
        assert finalize_invoices(month=december).numbers == ["HG-2027-000001"]
    invoice = Invoice.objects.get()
    assert (invoice.month, invoice.finalized_at) == (
        december,
        datetime(2027, 1, 4, 0, 5, tzinfo=UTC),
    )


def test_numbers_continue_and_restart_each_year(contracts):
    with transaction.atomic():
        assert issue_numbers(series="HG", year=2026, count=2) == [
            "HG-2026-000001",
            "HG-2026-000002",
        ]
    with pytest.raises(RuntimeError), transaction.atomic():
        issue_numbers(series="HG", year=2026, count=1)
        raise RuntimeError("rolled back: the number goes back too")
    with transaction.atomic():
        assert issue_numbers(series="HG", year=2026, count=1) == ["HG-2026-000003"]
        assert issue_numbers(series="HG", year=2027, count=1) == ["HG-2027-000001"]


def test_one_invoice_per_contract_and_month(contracts):
    contract = contracts[0]
    Invoice.objects.create(contract=contract, buyer=contract.buyer, month=OCTOBER, currency="USD")
    with pytest.raises(IntegrityError), transaction.atomic():
        Invoice.objects.create(
            contract=contract, buyer=contract.buyer, month=OCTOBER, currency="USD"
        )


@pytest.fixture
def finalized(contracts):
    with time_machine.travel(datetime(2026, 11, 4, tzinfo=UTC), tick=False):
        draft_invoices(month=OCTOBER)
        finalize_invoices(month=OCTOBER)
    return Invoice.objects.order_by("number").first()


@pytest.mark.parametrize(
    "change",
    [
        {"total_minor": 1},
        {"number": "HG-2026-999999"},
        {"status": "draft", "number": None, "finalized_at": None},
        {"month": date(2026, 9, 1)},
    ],
)
def test_database_refuses_edits_of_a_finalized_invoice(finalized, change):
    with pytest.raises(IntegrityError, match="finalized"), transaction.atomic():
        Invoice.objects.filter(pk=finalized.pk).update(**change)
    before = finalized
    finalized.refresh_from_db()
    assert (finalized.total_minor, finalized.number) == (before.total_minor, before.number)


def test_database_refuses_line_changes_and_deletion_of_a_finalized_invoice(finalized):
    line = finalized.lines.get()
    for action in (
        lambda: InvoiceLine.objects.filter(pk=line.pk).update(amount_minor=0),
        lambda: InvoiceLine.objects.filter(pk=line.pk).delete(),
        lambda: InvoiceLine.objects.create(
            invoice=finalized,
            position=9,
            kind="sla_credit",
            description="x",
            service_month=OCTOBER,
            amount_minor=-1,
        ),
        lambda: Invoice.objects.filter(pk=finalized.pk).delete(),
    ):
        with pytest.raises(IntegrityError, match="finalized"), transaction.atomic():
            action()
    assert finalized.lines.count() == 1


def test_payment_fields_of_a_finalized_invoice_may_change(finalized):
    Invoice.objects.filter(pk=finalized.pk).update(
        payment_status=PaymentStatus.PAID, amount_paid_minor=finalized.total_minor
    )
    finalized.refresh_from_db()
    assert finalized.amount_due_minor == 0
