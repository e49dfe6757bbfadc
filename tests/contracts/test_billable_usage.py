"""Billable usage, worked examples to the second, token and cent: reserved GPU-seconds,
the hour rule of metered usage, SLA and down minutes, and the charges rating and the
dashboard both price them with."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from billing.models import LineKind as InvoiceLineKind
from billing.rating import rate_month
from capacity.metering.availability import AvailabilityFigure
from capacity.metering.models import HourlyUsage, UsageRecord
from contracts.attribution import attribute_usage_records
from contracts.billable_usage import (
    MeteredQuantities,
    UsageKey,
    down_minutes,
    held_gpu_seconds,
    metered_quantities,
    sla_minutes,
)
from contracts.charges import ChargeKind, line_charges
from contracts.models import ContractLine, InferenceProduct
from contracts.sla import line_sla
from contracts.usage import month_to_date
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_line,
    inference_product,
    instance,
    key_for,
    observe,
    reserved_line,
    use,
    work,
)
from tests.factories import NodeWindowFactory, stored_usage

pytestmark = pytest.mark.django_db
D = Decimal
OCT_1 = datetime(2026, 10, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def product() -> InferenceProduct:
    return inference_product("llama-worked")


@pytest.fixture
def contract(buyer_org):
    return active_contract(buyer=buyer_org, since=datetime(2026, 9, 1, tzinfo=UTC))


@pytest.fixture
def reserved(contract, offer, devices):
    """GPU 0 (node A) from Oct 15 12:00 for a month, GPU 4 (node B) Oct 20 00:00 to Oct 21
    06:30: 1,425,600 + 109,800 = 1,535,400 GPU-seconds in October (426.5 GPU-hours)."""
    return reserved_line(
        contract=contract,
        offer=offer,
        holds=[
            (devices[0], at(15, 12), datetime(2026, 11, 15, 12, tzinfo=UTC)),
            (devices[4], at(20), at(21, 6, 30)),
        ],
    )


@pytest.fixture
def inference(contract, product, devices):
    """Line from Oct 1 09:30, ended Oct 6 10:15. Billed: 54 M input, 5 M output tokens in
    6 requests (a receipt bounds a request to 10 M tokens a direction)."""
    line = inference_line(contract=contract, product=product, since=at(1, 9, 30))
    key = key_for(line, created_at=at(1, 9, 30))
    use(key=key, product=product, gpu=devices[1], at=at(1, 8, 10), input_tokens=1_000)  # before
    use(
        key=key,
        product=product,
        gpu=devices[1],
        at=at(1, 9, 5),  # before the line, but in its first hour
        input_tokens=20_000_000,
        output_tokens=5_000_000,
    )
    use(key=key, product=product, gpu=devices[5], at=at(5, 14), input_tokens=30_000_000)
    use(key=key, product=product, gpu=devices[1], at=at(6, 10, 50), input_tokens=4_000_000)
    use(key=key, product=product, gpu=devices[1], at=at(6, 11), input_tokens=7_000_000)  # after
    use(key=key, product=product, gpu=devices[1], at=at(30, 23, 59) - timedelta(days=30))  # Sep
    ContractLine.objects.filter(pk=line.pk).update(ended_at=at(6, 10, 15))
    return line


@pytest.fixture
def on_demand_gpu(contract, offer, devices, other_org):
    """An instance on GPUs 2 and 3 from Oct 10 11:00 to 12:30 (3 GPU-hours held, billed
    at $2.40); its node reported 1,000,000 + 300,000 busy ms under its assignment (shown,
    not billed). GPU 1 is reserved by someone else from Oct 10 12:30."""
    line = gpu_line(contract=contract, offer=offer, since=OCT_1)
    reserved_line(
        contract=active_contract(buyer=other_org, since=OCT_1),
        offer=offer,
        holds=[(devices[1], at(10, 12, 30), at(11))],
    )
    workload = instance(
        line=line, gpus=[devices[2], devices[3]], start=at(10, 11), end=at(10, 12, 30)
    )
    work(workload=workload, gpu=devices[2], at=at(10, 11), busy_ms=1_000_000)
    work(workload=workload, gpu=devices[2], at=at(10, 12), busy_ms=300_000)
    return line, workload


def test_reserved_gpu_seconds_per_line_node_and_bucket(reserved, devices):
    node_a, node_b = devices[0].node_id, devices[4].node_id
    line = reserved.pk
    assert held_gpu_seconds(start=OCT_1, end=NOV_1, line_ids=[line]) == {
        UsageKey(line): D(1_535_400)
    }
    assert held_gpu_seconds(start=OCT_1, end=NOV_1, line_ids=[line], by_node=True) == {
        UsageKey(line, node_a): D(1_425_600),
        UsageKey(line, node_b): D(109_800),
    }
    by_day = held_gpu_seconds(start=OCT_1, end=NOV_1, line_ids=[line], bucket="day")
    assert len(by_day) == 17  # Oct 15 to Oct 31
    assert by_day[UsageKey(line, None, at(15))] == D(43_200)
    assert by_day[UsageKey(line, None, at(20))] == D(172_800)
    assert by_day[UsageKey(line, None, at(21))] == D(86_400 + 23_400)
    assert sum(by_day.values()) == D(1_535_400)
    by_hour = held_gpu_seconds(
        start=at(21, 6), end=at(21, 8), contract_ids=[reserved.contract_id], bucket="hour"
    )
    assert by_hour == {
        UsageKey(line, None, at(21, 6)): D(3_600 + 1_800),
        UsageKey(line, None, at(21, 7)): D(3_600),
    }
    # A period cut inside an allocation, to the microsecond.
    cut = at(16) + timedelta(microseconds=1)
    assert held_gpu_seconds(start=at(15, 12), end=cut, line_ids=[line]) == {
        UsageKey(line): D("43200.000001")
    }


def test_metered_tokens_count_whole_hours_of_the_line_in_force(inference, devices):
    line = inference.pk
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line]) == {
        UsageKey(line): MeteredQuantities(
            input_tokens=54_000_000, output_tokens=5_000_000, requests=6
        )
    }
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line], by_node=True) == {
        UsageKey(line, devices[1].node_id): MeteredQuantities(
            input_tokens=24_000_000, output_tokens=5_000_000, requests=3
        ),
        UsageKey(line, devices[5].node_id): MeteredQuantities(input_tokens=30_000_000, requests=3),
    }
    assert set(metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line], bucket="hour")) == {
        UsageKey(line, None, at(1, 9)),
        UsageKey(line, None, at(5, 14)),
        UsageKey(line, None, at(6, 10)),
    }
    # The line ended Oct 5 14:00: its hour 14:00 no longer counts, nor anything after.
    ContractLine.objects.filter(pk=line).update(ended_at=at(5, 14))
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line]) == {
        UsageKey(line): MeteredQuantities(
            input_tokens=20_000_000, output_tokens=5_000_000, requests=2
        )
    }


def test_an_instance_bills_the_seconds_it_held_and_shows_its_busy_time(on_demand_gpu, devices):
    line, workload = on_demand_gpu
    assert held_gpu_seconds(start=OCT_1, end=NOV_1, line_ids=[line.pk]) == {
        UsageKey(line.pk): D(2 * 5400)
    }
    assert held_gpu_seconds(
        start=OCT_1, end=NOV_1, line_ids=[line.pk], by_node=True, bucket="hour"
    ) == {
        UsageKey(line.pk, devices[2].node_id, at(10, 11)): D(2 * 3600),
        UsageKey(line.pk, devices[2].node_id, at(10, 12)): D(2 * 1800),
    }
    # Busy time is the line's (shown), from the rollups attribution stamped with it.
    assert metered_quantities(start=OCT_1, end=NOV_1, contract_ids=[line.contract_id]) == {
        UsageKey(line.pk): MeteredQuantities(busy_ms=1_300_000, energy_mj=1_300_000 * 700)
    }
    record = UsageRecord.objects.get(gpu=devices[2], window_start=at(10, 11))
    allocation = workload.allocations.get(gpu_device=devices[2])
    assert (record.workload_id, record.line_id, record.allocation_id, record.api_key_id) == (
        workload.pk,
        line.pk,
        allocation.pk,
        None,
    )
    assert HourlyUsage.objects.get(gpu=devices[2], hour=at(10, 11)).line_id == line.pk


def test_a_running_instance_holds_until_now(contract, offer, devices):
    line = gpu_line(contract=contract, offer=offer, since=OCT_1)
    instance(line=line, gpus=[devices[4]], start=at(20, 9))
    assert held_gpu_seconds(
        start=OCT_1, end=NOV_1, line_ids=[line.pk], now=at(20, 9, 30) + timedelta(seconds=7)
    ) == {UsageKey(line.pk): D(1807)}
    # A month that ended before now is billed to its end.
    assert held_gpu_seconds(start=OCT_1, end=NOV_1, line_ids=[line.pk], now=at(31, 23)) == {
        UsageKey(line.pk): D((11 * 24 + 14) * 3600)
    }


def test_assignment_work_is_the_workloads_only_on_its_node_and_gpus(on_demand_gpu, devices):
    line, workload = on_demand_gpu
    # The assignment id on a GPU it was not given (GPU 4 is another node's): nobody's.
    stray = stored_usage(
        gpu=devices[4], start=at(10, 11), kind="assignment", ref=workload.public_id, busy_ms=9
    )
    forged = stored_usage(
        gpu=devices[2], start=at(10, 11, 5), kind="assignment", ref="f" * 32, busy_ms=9
    )
    legacy = stored_usage(
        gpu=devices[3], start=at(10, 11, 6), kind="allocation", ref="gpu@abcdefgh", busy_ms=9
    )
    assert attribute_usage_records(records=UsageRecord.objects.all()) == 0
    for record in (stray, forged, legacy):
        record.refresh_from_db()
        assert (record.workload_id, record.line_id, record.allocation_id) == (None, None, None)
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line.pk])[
        UsageKey(line.pk)
    ] == MeteredQuantities(busy_ms=1_300_000, energy_mj=1_300_000 * 700)


def test_inference_reads_only_receipts_never_key_prefix_refs(contract, product, devices):
    """An inference window naming the key by its prefix (the retired convention) is
    stored for its GPU time and billed to nobody; the key's receipts are billed."""
    line = inference_line(contract=contract, product=product, since=OCT_1)
    key = key_for(line, created_at=OCT_1)
    legacy = stored_usage(
        gpu=devices[3],
        start=at(2, 10),
        kind="inference",
        ref=f"{product.slug}@{key.prefix}",
        input_tokens=1_000,
    )
    assert attribute_usage_records(records=UsageRecord.objects.filter(pk=legacy.pk)) == 0
    # Even an hour stamped by the retired attribution (migration 0005) is not read.
    HourlyUsage.objects.filter(gpu=devices[3]).update(api_key_id=key.pk, line_id=line.pk)
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line.pk]) == {}
    use(key=key, product=product, gpu=devices[3], at=at(2, 10, 5), input_tokens=7, output_tokens=3)
    assert metered_quantities(start=OCT_1, end=NOV_1, line_ids=[line.pk]) == {
        UsageKey(line.pk): MeteredQuantities(input_tokens=7, output_tokens=3, requests=1)
    }


def test_sla_and_down_minutes_per_line_and_node(reserved, devices):
    """GPU 0 down 300 minutes on Oct 20; GPU 4 down 01:00-01:30 on Oct 21 and in
    maintenance announced a week ahead 05:00-06:00 (not counted)."""
    observe(
        devices[0],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
        down={date(2026, 10, 20): range(300)},
    )
    observe(
        devices[4],
        since=date(2026, 10, 20),
        until=date(2026, 10, 22),
        down={date(2026, 10, 21): range(60, 90)},
    )
    NodeWindowFactory(
        node=devices[4].node,
        period=DateTimeTZRange(at(21, 5), at(21, 6), "[)"),
        announced_at=at(14, 5),
    )
    line = reserved.pk
    node_a, node_b = devices[0].node_id, devices[4].node_id
    assert sla_minutes(start=OCT_1, end=NOV_1, line_ids=[line]) == {
        UsageKey(line): AvailabilityFigure(23_460 + 1_740, 23_760 + 1_770)
    }
    assert down_minutes(start=OCT_1, end=NOV_1, line_ids=[line], by_node=True) == {
        UsageKey(line, node_a): 300,
        UsageKey(line, node_b): 30,
    }
    # 25,200 / 25,530 = 98.707 %: below 99 %, at least 95 % → 25 % credit.
    sla = line_sla(line=reserved, since=OCT_1, until=NOV_1)
    assert (sla.availability_percent, sla.credit_percent) == (D("98.707"), D(25))


def test_rating_and_the_month_to_date_price_the_same_charges(
    contract, reserved, inference, on_demand_gpu, devices
):
    observe(
        devices[0],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
        down={date(2026, 10, 20): range(300)},
    )
    observe(devices[4], since=date(2026, 10, 20), until=date(2026, 10, 22))
    lines = {
        line.pk: line
        for line in ContractLine.objects.filter(contract=contract).select_related(
            "contract__sla_policy"
        )
    }
    charges = [
        (charge.line.pk, charge.kind, charge.exact_amount, charge.amount_minor)
        for charge in line_charges(lines=lines, start=OCT_1, end=NOV_1)
    ]
    gpu = on_demand_gpu[0].pk
    assert charges == [
        # 426.5 GPU-hours x $2.10; (23,460 + 1,830) / 25,590 = 98.83 % → 25 % credit
        (reserved.pk, ChargeKind.RESERVED, D("895.65"), 89_565),
        (reserved.pk, ChargeKind.SLA_CREDIT, D("-223.9125"), -22_391),
        (inference.pk, ChargeKind.INFERENCE_INPUT, D("10.8"), 1_080),
        (inference.pk, ChargeKind.INFERENCE_OUTPUT, D("3.0"), 300),
        # 3 GPU-hours held x $2.40 (busy time is not priced)
        (gpu, ChargeKind.ON_DEMAND_GPU, D("7.2"), 720),
    ]
    rated = rate_month(month=date(2026, 10, 1), contract_ids=[contract.pk])[contract.pk]
    assert [(line.kind, line.amount_minor) for line in rated] == [
        (InvoiceLineKind.RESERVED, 89_565),
        (InvoiceLineKind.SLA_CREDIT, -22_391),
        (InvoiceLineKind.INFERENCE_INPUT, 1_080),
        (InvoiceLineKind.INFERENCE_OUTPUT, 300),
        (InvoiceLineKind.ON_DEMAND_GPU, 720),
    ]
    month = month_to_date(contracts=[contract], since=OCT_1, until=NOV_1)
    assert month.total_minor == 69_274 == sum(line.amount_minor for line in rated)
    assert {cost.line.pk: cost.amount_minor for cost in month.line_costs} == {
        reserved.pk: 67_174,
        inference.pk: 1_380,
        gpu: 720,
    }
    assert (month.input_tokens, month.output_tokens, month.busy_ms) == (
        54_000_000,
        5_000_000,
        1_300_000,
    )
