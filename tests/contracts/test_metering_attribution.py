"""Metering attributes what it stores: over real HTTP from the fleet simulator, a sweep
stores the records and beat's attribution run gives the records of a reserved GPU to the
allocation holding it; inference windows (protocol v1, no receipt) are stored for their
GPU time and attributed to nobody, even with the buyer holding an inference key (billed
inference comes from receipt records, ``tests/capacity/metering/test_receipts.py``); what
nobody bought stays unattributed. Expected values
come from the simulator's pure functions, apart from the platform."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from capacity.metering import batch, sweep
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import AttributionCursor, NodePollState, UsageRecord
from capacity.models import GpuDevice, Node
from contracts.checkout import reservation_checkout
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from devtools.simulated_fleet import FleetProcess, fleet_records, register_fleet_nodes
from tests.billing.stripe_fakes import free_port
from tests.factories import OfferFactory

pytestmark = [pytest.mark.django_db, pytest.mark.calendar]
GPUS = 2
BACKFILL = 30
# A seed whose node runs reserved work on GPU 0 for the whole half hour and inference on
# GPU 1 (``simulator.window_activity`` is a pure function of it).
SEED = 52


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def product() -> InferenceProduct:
    return InferenceProduct.objects.create(
        slug="fleet-llama",
        name="Fleet Llama",
        input_price_per_million_tokens=Decimal("0.2000"),
        output_price_per_million_tokens=Decimal("0.6000"),
    )


@pytest.fixture
def api_key(buyer_org, buyer_owner, product):
    """The buyer's inference key, created before the fleet's half hour of backfill."""
    line = on_demand_enable(buyer=buyer_org, actor=buyer_owner, inference_product=product)
    key, _secret = line_api_key_create(line=line, name="prod", actor=buyer_owner)
    type(key).objects.filter(pk=key.pk).update(created_at=timezone.now() - timedelta(hours=2))
    key.refresh_from_db()
    return key


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=1,
        port=free_port(),
        seed=SEED,
        gpus_per_node=GPUS,
        window_seconds=60,
        backfill_windows=BACKFILL,
        state_dir=tmp_path / "fleet",
    )
    with process:
        yield process


def _sweep(now: datetime) -> None:
    def enqueue(node_ids: list[int]) -> None:
        batch.poll_and_store(node_ids, now=now, interval_seconds=60)

    sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue, batch_size=10)


def test_a_sweep_attributes_reserved_windows_and_no_inference_window(
    fleet, partner_org, buyer_org, api_key, django_capture_on_commit_callbacks
):
    (node_id,) = register_fleet_nodes(organization=partner_org, fleet=fleet)
    node = Node.objects.get(pk=node_id)
    OfferFactory(
        site=node.site,
        gpu_model=node.gpu_model,
        gpu_count=GPUS,
        available_from=timezone.now() - timedelta(days=1),
    )
    # The buyer reserves one GPU from ten minutes ago (checkout's grace for "now").
    held_from = (timezone.now() - timedelta(minutes=10)).replace(second=0, microsecond=0)
    reserved = reservation_checkout(
        buyer=buyer_org,
        offer=node.site.offers.get(),
        gpu_count=1,
        starts_at=held_from,
        term_months=1,
        actor=None,
    )
    (allocation,) = reserved.allocations

    with django_capture_on_commit_callbacks(execute=True):
        _sweep(timezone.now())
    stored = UsageRecord.objects.filter(node_id=node_id)
    # Stored; attributed by the next run of beat's attribution task, not by the batch.
    assert not stored.filter(allocation_id__isnull=False).exists()
    attributed = attribute_new_records()

    # The truth, from the simulator's pure function: records 1..last_seq of the node.
    last_seq = NodePollState.objects.get(node_id=node_id).last_seq
    assert last_seq >= BACKFILL * GPUS
    device_of = dict(GpuDevice.objects.filter(node_id=node_id).values_list("index", "pk"))
    held_ms = int(held_from.timestamp() * 1000)
    expected_allocated, inference_windows, before_the_reservation = [], [], []
    for record in fleet_records(fleet, {0: last_seq}):
        on_the_reserved_gpu = device_of[record.gpu_index] == allocation.gpu_device_id
        if record.activity.kind == "allocation" and on_the_reserved_gpu:
            if record.window_start_ms >= held_ms:
                expected_allocated.append(record.seq)
            else:
                before_the_reservation.append(record.seq)
        if record.activity.kind == "inference":
            inference_windows.append(record.seq)

    assert stored.count() == last_seq
    # Inference windows (v1) are stored for their GPU time; inference is billed from
    # receipt records only (ingest), so attribution ties none of them to a key.
    assert attributed == len(expected_allocated)
    # Idempotent, and the cursor is at the last record.
    assert attribute_new_records() == 0
    assert AttributionCursor.objects.get().last_id == stored.order_by("-pk").first().pk
    assert (
        sorted(stored.filter(allocation_id=allocation.pk).values_list("seq", flat=True))
        == expected_allocated
    )
    assert not stored.filter(api_key_id__isnull=False).exists()
    assert not stored.filter(seq__in=inference_windows, line_id__isnull=False).exists()
    assert len(expected_allocated) >= 10 and len(before_the_reservation) >= 19
    assert len(inference_windows) >= 10
    # The GPU's work before the reservation began bills nobody.
    assert stored.filter(seq__in=before_the_reservation, allocation_id__isnull=True).count() == (
        len(before_the_reservation)
    )
    # Nothing else is billed to anyone: the rest is idle or a partner's own use.
    assert (
        stored.exclude(seq__in=expected_allocated).filter(allocation_id__isnull=False).count() == 0
    )
