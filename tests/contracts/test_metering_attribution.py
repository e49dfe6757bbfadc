"""Metering attributes what it stores: over real HTTP from the fleet simulator (agent
protocol v1.1), a buyer runs a container on a reserved GPU; the sweep tells the node,
the node's records of that GPU name the assignment, and beat's attribution run gives them
to the workload, the reservation's allocation and its line. The other GPU, which no
assignment covers, is idle and attributed to nobody, as is the reserved GPU's time before
the container ran. Nothing here bills: the reservation pays for its hours whatever runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from capacity.metering import batch, sweep
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import AttributionCursor, UsageRecord
from capacity.models import Node
from config.gateway_keys import receipt_public_key_b64
from contracts.checkout import reservation_checkout
from contracts.models import NodeAssignments, WorkloadState
from contracts.workloads import container_create
from devtools.simulated_fleet import FleetProcess, register_fleet_nodes
from tests.billing.stripe_fakes import free_port
from tests.factories import OfferFactory

pytestmark = [pytest.mark.django_db, pytest.mark.calendar]
GPUS = 2
# Short windows, so the container's records arrive within seconds.
WINDOW_SECONDS = 1
BACKFILL = 5
SEED = 52


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=1,
        port=free_port(),
        seed=SEED,
        gpus_per_node=GPUS,
        window_seconds=WINDOW_SECONDS,
        backfill_windows=BACKFILL,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=("--pending-seconds=0", "--pull-seconds=0", "--start-seconds=0"),
    )
    with process:
        yield process


def _sweep(now: datetime) -> None:
    def enqueue(node_ids: list[int]) -> None:
        batch.poll_and_store(node_ids, now=now, interval_seconds=60)

    sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue, batch_size=10)


def _poll_until(node_id: int, condition, *, timeout_s: float = 20.0) -> None:
    """Poll the node as a sweep's batch does (the sweep itself polls a node once per
    interval) until ``condition`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch.poll_and_store([node_id], now=timezone.now(), interval_seconds=60)
        if condition():
            return
        assert time.monotonic() < deadline, "the fleet did not get there in time"
        time.sleep(0.5)


def test_a_sweep_attributes_a_containers_records_to_its_reservation(
    fleet, partner_org, buyer_org, django_capture_on_commit_callbacks
):
    (node_id,) = register_fleet_nodes(organization=partner_org, fleet=fleet)
    node = Node.objects.get(pk=node_id)
    OfferFactory(
        site=node.site,
        gpu_model=node.gpu_model,
        gpu_count=GPUS,
        available_from=timezone.now() - timedelta(days=1),
    )
    with django_capture_on_commit_callbacks(execute=True):
        _sweep(timezone.now())  # the node's backfill: idle, nobody's
    before_the_container = set(
        UsageRecord.objects.filter(node_id=node_id).values_list("seq", flat=True)
    )
    assert len(before_the_container) >= BACKFILL * GPUS
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
    workload = container_create(
        line=allocation.line,
        image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuyer buyer@laptop",
        ports=[22],
        env={},
        actor=None,
        gpu_count=1,
    )
    assert list(workload.gpus.values_list("pk", flat=True)) == [allocation.gpu_device_id]

    stored = UsageRecord.objects.filter(node_id=node_id)
    with django_capture_on_commit_callbacks(execute=True):
        _poll_until(node_id, lambda: stored.filter(workload_kind="assignment").count() >= 3)
    # The node took generation 1 and reported the container running.
    assert NodeAssignments.objects.get(node_id=node_id).agent_generation == 1
    workload.refresh_from_db()
    assert workload.state == WorkloadState.RUNNING
    # Stored; attributed by the next run of beat's attribution task, not by the batch.
    assert not stored.filter(line_id__isnull=False).exists()
    assigned = set(stored.filter(workload_kind="assignment").values_list("seq", flat=True))
    attributed = attribute_new_records()

    assert attributed == len(assigned)
    # Idempotent, and the cursor is at the last record.
    assert attribute_new_records() == 0
    assert AttributionCursor.objects.get().last_id == stored.order_by("-pk").first().pk
    mine = stored.filter(seq__in=assigned)
    assert set(mine.values_list("gpu_id", flat=True)) == {allocation.gpu_device_id}
    assert set(mine.values_list("workload_ref", flat=True)) == {workload.public_id}
    assert set(mine.values_list("workload_id", "allocation_id", "line_id")) == {
        (workload.pk, allocation.pk, allocation.line_id)
    }
    # Nothing else is anyone's: the backfill before the container, the other GPU (idle).
    others = stored.exclude(seq__in=assigned)
    assert set(others.values_list("workload_kind", flat=True)) == {"idle"}
    assert not others.filter(busy_ms__gt=0).exists()
    assert not others.filter(line_id__isnull=False).exists()
    assert before_the_container <= set(others.values_list("seq", flat=True))
