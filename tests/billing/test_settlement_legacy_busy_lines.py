"""Settlement weighs an invoice line as it was billed: an on-demand GPU line billed on busy
time (its ``meter``, before instances were billed per second held) by each node's busy
milliseconds; one billed per second held by each node's held GPU-seconds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import Invoice, InvoiceLine, LineKind, Meter, RevenueKind
from billing.settlement.attribution import _MonthWeights
from capacity.metering.models import HourlyUsage
from tests.contracts.usage_builders import active_contract, gpu_line, instance

pytestmark = pytest.mark.django_db

OCTOBER = date(2026, 10, 1)
T0 = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)


def _invoice_line(line, *, meter: str) -> InvoiceLine:
    invoice = Invoice.objects.create(
        contract=line.contract, buyer=line.contract.buyer, month=OCTOBER, currency="USD"
    )
    return InvoiceLine.objects.create(
        invoice=invoice,
        position=1,
        kind=LineKind.ON_DEMAND_GPU,
        contract_line=line,
        description="On-demand GPU",
        service_month=OCTOBER,
        meter=meter,
        amount_minor=1000,
    )


def test_a_line_billed_on_busy_time_is_weighed_by_each_nodes_busy_time(buyer_org, offer, devices):
    contract = active_contract(buyer=buyer_org, since=T0 - timedelta(days=3))
    line = gpu_line(contract=contract, offer=offer, since=T0 - timedelta(days=3))
    first, second = devices[0], devices[4]
    assert first.node_id != second.node_id
    for gpu, busy_ms in ((first, 1_800_000), (second, 600_000)):
        HourlyUsage.objects.create(
            node_id=gpu.node_id,
            gpu=gpu,
            workload_kind="allocation",
            workload_ref="gpu@legacy00",
            hour=T0,
            busy_ms=busy_ms,
            record_count=30,
            line_id=line.pk,
        )
    old = _invoice_line(line, meter=Meter.GPU_BUSY_MS)
    weights = _MonthWeights(service_month=OCTOBER, lines=[old])
    assert weights.for_line(old) == (
        RevenueKind.ON_DEMAND_GPU,
        {first.node_id: Decimal(1_800_000), second.node_id: Decimal(600_000)},
        "busy GPU-ms",
    )


def test_a_line_billed_per_second_held_is_weighed_by_held_seconds(buyer_org, offer, devices):
    contract = active_contract(buyer=buyer_org, since=T0 - timedelta(days=3))
    line = gpu_line(contract=contract, offer=offer, since=T0 - timedelta(days=3))
    instance(line=line, gpus=[devices[0], devices[1]], start=T0, end=T0 + timedelta(hours=1))
    new = _invoice_line(line, meter="")
    weights = _MonthWeights(service_month=OCTOBER, lines=[new])
    assert weights.for_line(new) == (
        RevenueKind.ON_DEMAND_GPU,
        {devices[0].node_id: Decimal(7200)},
        "GPU-seconds",
    )
