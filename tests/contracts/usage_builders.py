"""Builders for billable-usage tests: contracts and lines exactly where a test wants them
(periods, prices, key times), usage stored and attributed as metering does it."""

from __future__ import annotations

from collections.abc import Container, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import ApiKey, Organization
from capacity.metering.attribution import attribute_records
from capacity.metering.models import GpuAvailabilityDay, UsageRecord
from capacity.models import GpuDevice, Offer
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    InferenceProduct,
    LineApiKey,
    LineKind,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from tests.capacity.metering.receipt_builders import meter_requests
from tests.factories import ApiKeyFactory, ContractFactory, stored_usage

FULL_DAY = "1" * 1440


def inference_product(slug: str) -> InferenceProduct:
    """A product at $0.20 / $0.60 per million input / output tokens (lines set their own)."""
    return InferenceProduct.objects.create(
        slug=slug,
        name=slug.replace("-", " ").capitalize(),
        input_price_per_million_tokens=Decimal("0.2000"),
        output_price_per_million_tokens=Decimal("0.6000"),
    )


def active_contract(*, buyer: Organization | None = None, since: datetime) -> Contract:
    """An active contract, activated at ``since``, running for a year."""
    extra = {"buyer": buyer} if buyer is not None else {}
    return ContractFactory(
        starts_at=since,
        activated_at=since,
        term_ends_at=since + timedelta(days=365),
        **extra,
    )


def reserved_line(
    *,
    contract: Contract,
    offer: Offer,
    holds: list[tuple[GpuDevice, datetime, datetime]],
    rate: Decimal = Decimal("2.1000"),
) -> ContractLine:
    """A reserved line holding each ``(GPU, start, end)`` of ``holds``."""
    starts_at = min(start for _, start, _ in holds)
    line = ContractLine.objects.create(
        contract=contract,
        kind=LineKind.RESERVED,
        offer=offer,
        gpu_count=len(holds),
        term_months=1,
        price_per_gpu_hour=rate,
        starts_at=starts_at,
        ends_at=max(end for _, _, end in holds),
    )
    Allocation.objects.bulk_create(
        Allocation(line=line, gpu_device=gpu, period=DateTimeTZRange(start, end, "[)"))
        for gpu, start, end in holds
    )
    return line


def gpu_line(
    *, contract: Contract, offer: Offer, since: datetime, rate: Decimal = Decimal("2.4000")
) -> ContractLine:
    return ContractLine.objects.create(
        contract=contract,
        kind=LineKind.ON_DEMAND_GPU,
        offer=offer,
        price_per_gpu_hour=rate,
        starts_at=since,
    )


def inference_line(
    *,
    contract: Contract,
    product: InferenceProduct,
    since: datetime,
    input_price: Decimal = Decimal("0.2000"),
    output_price: Decimal = Decimal("0.6000"),
) -> ContractLine:
    return ContractLine.objects.create(
        contract=contract,
        kind=LineKind.INFERENCE,
        inference_product=product,
        input_price_per_million_tokens=input_price,
        output_price_per_million_tokens=output_price,
        starts_at=since,
    )


def instance(
    *, line: ContractLine, gpus: list[GpuDevice], start: datetime, end: datetime | None = None
) -> Workload:
    """An instance of the on-demand GPU ``line`` holding ``gpus`` (one node's) from
    ``start`` until ``end`` (None: still running), as ``contracts.workloads`` leaves it."""
    workload = Workload.objects.create(
        line=line,
        node_id=gpus[0].node_id,
        kind=WorkloadKind.CONTAINER,
        image="nvidia/cuda:12.4.1-base-ubuntu22.04",
        state=WorkloadState.RUNNING if end is None else WorkloadState.STOPPED,
        state_since=end or start,
        started_at=start,
        ended_at=end,
    )
    workload.gpus.set(gpus)
    Allocation.objects.bulk_create(
        Allocation(
            line=line, gpu_device=gpu, workload=workload, period=DateTimeTZRange(start, end, "[)")
        )
        for gpu in gpus
    )
    return workload


def work(*, workload: Workload, gpu: GpuDevice, at: datetime, busy_ms: int) -> UsageRecord:
    """A node's record of a minute of ``workload``'s busy time on ``gpu`` (naming its
    assignment), stored and attributed as metering does it."""
    record = stored_usage(
        gpu=gpu,
        start=at,
        kind="assignment",
        ref=workload.public_id,
        busy_ms=busy_ms,
        energy_mj=busy_ms * 700,
    )
    attribute_records(records=UsageRecord.objects.filter(pk=record.pk))
    return record


def key_for(
    line: ContractLine, *, created_at: datetime, revoked_at: datetime | None = None
) -> ApiKey:
    """An API key of the line's buyer, linked to the line."""
    key = ApiKeyFactory(
        organization=line.contract.buyer, created_at=created_at, revoked_at=revoked_at
    )
    LineApiKey.objects.create(line=line, api_key=key)
    return key


def use(
    *,
    key: ApiKey,
    product: InferenceProduct,
    gpu: GpuDevice,
    at: datetime,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> None:
    """Inference of ``product`` for ``key`` metered from receipt records as a poll meters
    them (``meter_requests``: the key's line of that product, issued at ``at``)."""
    line = LineApiKey.objects.get(api_key=key, line__inference_product=product).line
    meter_requests(
        gpu=gpu,
        line_id=line.pk,
        key_id=key.pk,
        product=product.slug,
        at=at,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def observe(
    gpu: GpuDevice,
    *,
    since: date,
    until: date,
    down: Mapping[date, Container[int]] | None = None,
) -> None:
    """The GPU observed available every minute of the days ``[since, until)``, except the
    minutes of the day in ``down``."""
    rows, day = [], since
    while day < until:
        missing = (down or {}).get(day, ())
        bits = "".join("0" if minute in missing else "1" for minute in range(1440))
        rows.append(GpuAvailabilityDay(gpu=gpu, day=day, minutes=bits))
        day += timedelta(days=1)
    GpuAvailabilityDay.objects.bulk_create(rows)
