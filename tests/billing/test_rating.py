"""Rating from contracts and metering's rollups: the worked examples to the cent."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.apps import apps

from billing.invoices import draft_invoices, finalize_invoices
from billing.models import Invoice, LineKind
from billing.rating import rate_month
from contracts.checkout import reservation_checkout
from contracts.models import Contract
from contracts.workloads import instance_start, workload_stop
from tests.billing.conftest import add_tokens, add_usage, gpu_line_with_key, inference_line_with_key

pytestmark = pytest.mark.django_db
D = Decimal
OCTOBER = date(2026, 10, 1)
NOVEMBER_1 = datetime(2026, 11, 1, tzinfo=UTC)
FULL_DAY = "1" * 1440


def observe_available(devices, *, since: date, until: date, down: dict | None = None) -> None:
    """Every GPU observed available every minute of [since, until), except ``down``:
    {device index: (day, first minute, minutes)}."""
    availability = apps.get_model("metering", "GpuAvailabilityDay")
    rows = []
    day = since
    while day < until:
        for index, device in enumerate(devices):
            bits = FULL_DAY
            if down and index in down and down[index][0] == day:
                _, first, minutes = down[index]
                bits = bits[:first] + "0" * minutes + bits[first + minutes :]
            rows.append(availability(gpu=device, day=day, minutes=bits))
        day += timedelta(days=1)
    availability.objects.bulk_create(rows)


@pytest.fixture
def reservation(buyer_org, offer):
    """8 GPUs reserved at $2.10 per GPU-hour from 2026-10-15 00:00 UTC for a month."""
    with time_machine.travel(datetime(2026, 10, 1, 9, tzinfo=UTC), tick=False):
        return reservation_checkout(
            buyer=buyer_org,
            offer=offer,
            gpu_count=8,
            starts_at=datetime(2026, 10, 15, tzinfo=UTC),
            term_months=1,
            actor=None,
        ).line


def lines_of(invoice: Invoice) -> list[tuple[str, int]]:
    return [(line.kind, line.amount_minor) for line in invoice.lines.order_by("position")]


def test_reserved_8_gpus_from_the_15th_is_6854_40(reservation, devices):
    observe_available(devices, since=date(2026, 10, 15), until=date(2026, 11, 1))
    with time_machine.travel(NOVEMBER_1, tick=False):
        draft_invoices(month=OCTOBER)
    invoice = Invoice.objects.get(contract=reservation.contract, month=OCTOBER)
    line = invoice.lines.get()
    assert (line.kind, line.quantity, line.unit_price) == (
        LineKind.RESERVED,
        D("3264.000000000"),
        D("2.1000"),
    )
    assert line.amount_minor == 685_440  # 8 x 408 h x 2.10 = $6,854.40
    assert invoice.total_minor == 685_440


def test_one_gpu_down_20_hours_unannounced_credits_10_percent(reservation, devices):
    allocated = [a.gpu_device for a in reservation.allocations.order_by("gpu_device_id")]
    observe_available(
        allocated,
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
        down={0: (date(2026, 10, 20), 0, 20 * 60)},
    )
    with time_machine.travel(NOVEMBER_1, tick=False):
        draft_invoices(month=OCTOBER)
    invoice = Invoice.objects.get(contract=reservation.contract, month=OCTOBER)
    assert lines_of(invoice) == [(LineKind.RESERVED, 685_440), (LineKind.SLA_CREDIT, -68_544)]
    credit = invoice.lines.get(kind=LineKind.SLA_CREDIT)
    # 1 - 20 / 3,264 = 99.387 %: below 99.5 %, at least 99.0 % → 10 %.
    assert "99.387 %" in credit.description
    assert credit.quantity == D("10")
    assert invoice.total_minor == 685_440 - 68_544


def test_inference_tokens_and_commitment_true_up(buyer_org, buyer_owner, llm, devices):
    line, key = inference_line_with_key(
        buyer=buyer_org, actor=buyer_owner, product=llm, now=datetime(2026, 9, 20, tzinfo=UTC)
    )
    Contract.objects.filter(pk=line.contract_id).update(monthly_commitment_minor=50_000)
    hour = datetime(2026, 10, 10, 10, tzinfo=UTC)
    add_tokens(gpu=devices[0], hour=hour, line=line, key=key, input_tokens=100_000_000)
    add_tokens(
        gpu=devices[1],
        hour=hour + timedelta(days=5),
        line=line,
        key=key,
        input_tokens=20_000_000,
        output_tokens=30_000_000,
    )
    # September and November usage is not October's.
    add_tokens(
        gpu=devices[0],
        hour=datetime(2026, 9, 30, 23, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=7,
    )
    add_tokens(gpu=devices[0], hour=NOVEMBER_1, line=line, key=key, output_tokens=9)
    with time_machine.travel(NOVEMBER_1 + timedelta(hours=1), tick=False):
        draft_invoices(month=OCTOBER)
    invoice = Invoice.objects.get(contract_id=line.contract_id, month=OCTOBER)
    assert lines_of(invoice) == [
        (LineKind.INFERENCE_INPUT, 2_400),  # 120 M x $0.20
        (LineKind.INFERENCE_OUTPUT, 1_800),  # 30 M x $0.60
        (LineKind.COMMITMENT_TRUE_UP, 45_800),  # $500 - $42
    ]
    assert invoice.total_minor == 50_000


def test_on_demand_gpu_instances_bill_the_seconds_held_start_to_stop(
    buyer_org, buyer_owner, offer, devices
):
    line, key = gpu_line_with_key(
        buyer=buyer_org, actor=buyer_owner, offer=offer, now=datetime(2026, 10, 1, tzinfo=UTC)
    )
    started = datetime(2026, 10, 3, 10, tzinfo=UTC)
    workload = instance_start(
        line=line,
        gpu_count=2,
        image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        ssh_public_key="",
        ports=[22],
        env={},
        actor=buyer_owner,
        now=started,
    )
    stopped = started + timedelta(hours=1, minutes=30, milliseconds=500)
    workload_stop(workload=workload, actor=buyer_owner, now=stopped)
    workload_stop(workload=workload, actor=buyer_owner, now=stopped + timedelta(hours=5))
    # Busy time is shown, never billed: the node's busy records and the retired key-prefix
    # refs add nothing.
    add_usage(
        gpu=devices[0],
        hour=datetime(2026, 10, 3, 10, tzinfo=UTC),
        kind="assignment",
        ref=workload.public_id,
        busy_ms=3_600_000,
    )
    add_usage(
        gpu=devices[3],
        hour=datetime(2026, 10, 4, tzinfo=UTC),
        kind="allocation",
        ref=f"gpu@{key.prefix}",
        busy_ms=999_999,
    )
    rated = rate_month(month=OCTOBER)[line.contract_id]
    # 2 GPUs x 5,400.5 s = 10,801 GPU-seconds x $2.40 / 3600 = $7.2006… → $7.20
    assert [(r.kind, r.quantity, r.unit, r.metered_quantity, r.amount_minor) for r in rated] == [
        (LineKind.ON_DEMAND_GPU, Decimal("3.000277778"), "GPU-hours", None, 720)
    ]
    assert rated[0].exact_amount == Decimal("7.2" + "0066" + "6" * 53 + "7")
    draft_invoices(
        month=OCTOBER, contract_ids=[line.contract_id], now=datetime(2026, 11, 1, 1, tzinfo=UTC)
    )
    invoice = Invoice.objects.get(contract_id=line.contract_id, month=OCTOBER)
    assert [(row.kind, row.amount_minor) for row in invoice.lines.all()] == [
        (LineKind.ON_DEMAND_GPU, 720)
    ]


def test_an_ended_line_stops_billing_from_its_end(buyer_org, buyer_owner, llm, devices):
    """Receipts name the line; a line that ended pays for no hour that starts after its
    end (whatever requests the gateway's cache let through in its last seconds)."""
    line, key = inference_line_with_key(
        buyer=buyer_org, actor=buyer_owner, product=llm, now=datetime(2026, 10, 1, tzinfo=UTC)
    )
    add_tokens(
        gpu=devices[0],
        hour=datetime(2026, 10, 2, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=1_000_000,
    )
    line.ended_at = datetime(2026, 10, 3, tzinfo=UTC)
    line.save(update_fields=["ended_at"])
    add_tokens(
        gpu=devices[0],
        hour=datetime(2026, 10, 3, 1, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=5_000_000,
    )
    rated = rate_month(month=OCTOBER)[line.contract_id]
    assert [(r.metered_quantity, r.amount_minor) for r in rated] == [(1_000_000, 20)]


def test_late_usage_goes_on_the_next_invoice_labelled(buyer_org, buyer_owner, llm, devices):
    line, key = inference_line_with_key(
        buyer=buyer_org, actor=buyer_owner, product=llm, now=datetime(2026, 9, 20, tzinfo=UTC)
    )
    add_tokens(
        gpu=devices[0],
        hour=datetime(2026, 10, 31, 23, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=10_000_000,
    )
    with time_machine.travel(datetime(2026, 11, 4, tzinfo=UTC), tick=False):
        draft_invoices(month=OCTOBER)
        finalize_invoices(month=OCTOBER)
    october = Invoice.objects.get(contract_id=line.contract_id, month=OCTOBER)
    assert lines_of(october) == [(LineKind.INFERENCE_INPUT, 200)]
    # A node that was offline reports October usage after the invoice was finalized.
    add_tokens(
        gpu=devices[1],
        hour=datetime(2026, 10, 31, 22, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=2_500_000,
    )
    add_tokens(
        gpu=devices[1],
        hour=datetime(2026, 11, 2, tzinfo=UTC),
        line=line,
        key=key,
        input_tokens=1_000_000,
    )
    with time_machine.travel(datetime(2026, 12, 1, tzinfo=UTC), tick=False):
        draft_invoices(month=date(2026, 11, 1))
        draft_invoices(month=date(2026, 11, 1))  # again: nothing billed twice
    october.refresh_from_db()
    assert lines_of(october) == [(LineKind.INFERENCE_INPUT, 200)]  # never edited
    november = Invoice.objects.get(contract_id=line.contract_id, month=date(2026, 11, 1))
    assert lines_of(november) == [(LineKind.INFERENCE_INPUT, 20), (LineKind.LATE_USAGE, 50)]
    late = november.lines.get(kind=LineKind.LATE_USAGE)
    assert late.service_month == OCTOBER
    assert late.metered_quantity == 2_500_000
    assert late.description.startswith("Late usage from October 2026")
