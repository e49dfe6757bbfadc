"""One contract's bad data never stops another's invoice (issue 13, item 2).

Old data that bypassed today's validation (two rollup hours of 2^62 tokens, stored before
quantities were bounded) makes one contract's invoice line overflow a bigint when
drafted. That contract is recorded for finance and left undrafted and unfinalized; every
other contract of its chunk is drafted and finalized as usual.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.db.models import F

from accounts.models import AuditEvent
from billing.closing import close_period
from billing.invoices import draft_invoices
from billing.models import DraftFailure, Invoice, InvoiceStatus, LineKind
from capacity.metering.models import InferenceUsageHour
from tests.billing.conftest import inference_line_with_key
from tests.factories import ContractFactory

pytestmark = pytest.mark.django_db
OCTOBER = date(2026, 10, 1)
DRAFT_AT = datetime(2026, 11, 1, 1, tzinfo=UTC)
CLOSE_AT = datetime(2026, 11, 4, 1, tzinfo=UTC)
HUGE = 2**62


def _commitment_contract(commitment_minor: int):
    """An active contract whose October invoice is a true-up to ``commitment_minor``."""
    return ContractFactory(
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=commitment_minor,
    )


@pytest.fixture
def poisoned(buyer_org, buyer_owner, llm, devices):
    """A buyer's inference line whose October holds two rollup hours of 2^62 input tokens
    each (their sum, 2^63, does not fit the invoice line's bigint): written straight into
    the table, since receipts bound every request (10^7 tokens) and ingest never could."""
    line, _key = inference_line_with_key(
        buyer=buyer_org, actor=buyer_owner, product=llm, now=datetime(2026, 9, 20, tzinfo=UTC)
    )
    for hour in (datetime(2026, 10, 10, 10, tzinfo=UTC), datetime(2026, 10, 11, 10, tzinfo=UTC)):
        InferenceUsageHour.objects.create(
            line_id=line.pk, node=devices[0].node, hour=hour, input_tokens=HUGE, requests=1
        )
    return line


def test_a_contract_whose_draft_overflows_does_not_stop_the_others(poisoned, buyer_org):
    # In the same chunk of contracts (1,000), as two other buyers' contracts.
    other = _commitment_contract(10_000)
    another = _commitment_contract(30_000)

    with time_machine.travel(DRAFT_AT, tick=False):
        drafted = draft_invoices(month=OCTOBER)

    assert (drafted.created, drafted.failed) == (2, [poisoned.contract_id])
    assert sorted(Invoice.objects.values_list("contract_id", "total_minor")) == [
        (other.pk, 10_000),
        (another.pk, 30_000),
    ]
    failure = DraftFailure.objects.get()
    assert (failure.contract_id, failure.month, failure.attempts, failure.failed_at) == (
        poisoned.contract_id,
        OCTOBER,
        1,
        DRAFT_AT,
    )
    assert failure.error.startswith("DataError: ")
    event = AuditEvent.objects.get(action="billing.invoice_draft_failed")
    assert (event.organization, event.target_id, event.data["month"]) == (
        buyer_org,
        str(poisoned.contract_id),
        "2026-10",
    )

    with time_machine.travel(CLOSE_AT, tick=False):
        closed = close_period(month=OCTOBER, charge=False)

    assert (closed.drafted.unchanged, closed.drafted.failed) == (2, [poisoned.contract_id])
    assert closed.finalized == 2
    assert sorted(
        Invoice.objects.values_list("contract_id", "status", "number", "total_minor")
    ) == [
        (other.pk, InvoiceStatus.FINALIZED, "HG-2026-000001", 10_000),
        (another.pk, InvoiceStatus.FINALIZED, "HG-2026-000002", 30_000),
    ]
    assert DraftFailure.objects.get().attempts == 2


def test_a_stale_draft_is_not_finalized_until_the_contract_drafts_again(poisoned, llm, devices):
    bad_rows = list(InferenceUsageHour.objects.order_by("hour").values_list("pk", flat=True))
    # The rows out of October while it is drafted: an empty draft, before the data.
    away = timedelta(days=3650)
    InferenceUsageHour.objects.filter(pk__in=bad_rows).update(hour=F("hour") - away)
    with time_machine.travel(DRAFT_AT, tick=False):
        assert draft_invoices(month=OCTOBER).created == 1
    InferenceUsageHour.objects.filter(pk__in=bad_rows).update(hour=F("hour") + away)

    with time_machine.travel(CLOSE_AT, tick=False):
        closed = close_period(month=OCTOBER, charge=False)

    assert (closed.drafted.failed, closed.finalized) == ([poisoned.contract_id], 0)
    invoice = Invoice.objects.get()
    assert (invoice.status, invoice.total_minor) == (InvoiceStatus.DRAFT, 0)

    # Finance corrects the data (one hour of 2^62 tokens was real, the other not).
    InferenceUsageHour.objects.filter(pk=bad_rows[1]).delete()
    with time_machine.travel(CLOSE_AT, tick=False):
        closed = close_period(month=OCTOBER, charge=False)

    assert (closed.drafted.updated, closed.drafted.failed, closed.finalized) == (1, [], 1)
    assert not DraftFailure.objects.exists()
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.FINALIZED
    # 2^62 tokens = 4,611,686,018,427.387904 M x $0.20.
    assert list(invoice.lines.values_list("kind", "metered_quantity", "amount_minor")) == [
        (LineKind.INFERENCE_INPUT, HUGE, 92_233_720_368_548)
    ]
