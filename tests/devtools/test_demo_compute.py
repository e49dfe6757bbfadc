"""`make run`'s compute demo: the demo buyer holds reserved GPUs and an on-demand GPU line on
the demo partner's first offer; against the fleet as devrun starts it, an instance they
start and a model they deploy are running after one metering sweep; beat's sweep entry
follows the poll interval."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from capacity.metering.schedule import SWEEP_TASK_NAME
from capacity.models import Offer
from contracts.models import (
    Allocation,
    ContractLine,
    InferenceProduct,
    LineKind,
    NodeAssignments,
    Workload,
    WorkloadState,
)
from contracts.terms import add_months
from contracts.workloads import deployment_create, instance_start
from devtools.demo import DEMO_INFERENCE_PRODUCT, compute, people
from devtools.demo import fleet as demo_fleet
from tests.contracts.workload_builders import PYTORCH, SSH_KEY
from tests.devtools.test_demo_inference import demo_fleet_url  # noqa: F401 (devrun's fleet)
from tests.factories import OrganizationFactory
from tests.gateway.fleet_helpers import sweep_until_polled

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(demo_fleet_url, settings):  # noqa: F811
    """The demo's people and four fleet nodes, enrolled (no card saved: no Stripe here)."""
    settings.FLEET_URL = demo_fleet_url
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    organizations = people.seed_people()
    partners = [organizations["partner"], OrganizationFactory(is_buyer=False, is_partner=True)]
    demo_fleet.seed_fleet(partners, node_count=4, out=io.StringIO())
    return organizations


def _lines(buyer) -> list[tuple[str, int | None, int]]:  # type: ignore[no-untyped-def]
    return list(
        ContractLine.objects.filter(contract__buyer=buyer)
        .order_by("pk")
        .values_list("kind", "offer_id", "gpu_count")
    )


def test_the_demo_buyer_gets_reserved_gpus_and_an_on_demand_gpu_line_once(demo):
    buyer, partner = demo["buyer"], demo["partner"]
    offer = Offer.objects.filter(site__organization=partner).order_by("pk").first()
    before = timezone.now()

    summary = compute.seed_compute(buyer=buyer, partner=partner, out=io.StringIO())

    reserved = ContractLine.objects.get(pk=summary["reserved_line"])
    on_demand = ContractLine.objects.get(pk=summary["on_demand_line"])
    assert _lines(buyer) == [
        (LineKind.RESERVED, offer.pk, compute.RESERVED_GPUS),
        (LineKind.ON_DEMAND_GPU, offer.pk, 0),
    ]
    assert before <= reserved.starts_at <= timezone.now()
    assert reserved.ends_at == add_months(reserved.starts_at, compute.RESERVATION_MONTHS)
    assert on_demand.contract_id == reserved.contract_id
    assert Allocation.objects.filter(line=reserved, period__contains=timezone.now()).count() == 2

    # A second `make run`: nothing new.
    assert compute.seed_compute(buyer=buyer, partner=partner, out=io.StringIO()) == summary
    assert len(_lines(buyer)) == 2

    # After the reservation's end (a `make run` a month later) a fresh one is taken; the
    # on-demand GPU line is kept.
    with time_machine.travel(reserved.ends_at + timedelta(minutes=1)):
        again = compute.seed_compute(buyer=buyer, partner=partner, out=io.StringIO())
        assert again["on_demand_line"] == summary["on_demand_line"]
        renewed = ContractLine.objects.get(pk=again["reserved_line"])
        assert renewed.pk != reserved.pk
        assert renewed.starts_at >= reserved.ends_at


@pytest.mark.django_db(transaction=True)  # the sweep enqueues its batches on commit
def test_what_the_demo_buyer_starts_runs_after_one_sweep_of_the_demo_fleet(demo):
    buyer, partner = demo["buyer"], demo["partner"]
    summary = compute.seed_compute(buyer=buyer, partner=partner, out=io.StringIO())
    sweep_until_polled()  # beat's first sweep: the nodes are online

    instance = instance_start(
        line=ContractLine.objects.get(pk=summary["on_demand_line"]),
        gpu_count=2,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=None,
    )
    deployment = deployment_create(
        line=ContractLine.objects.get(pk=summary["reserved_line"]),
        product=InferenceProduct.objects.get(slug=DEMO_INFERENCE_PRODUCT),
        gpu_count=1,
        actor=None,
    )
    assert {instance.state, deployment.state} == {WorkloadState.REQUESTED}

    # The next sweep pushes both assignments and the demo fleet runs them at once; their
    # states come back on that poll when the node's workload digest is new to the
    # platform, else on the next one (docs/workloads.md "Cheap polling"): with make
    # run's sweep every 5 s, seconds after the buyer's click.
    sweep_until_polled()
    assert NodeAssignments.objects.get(node_id=instance.node_id).agent_generation == 2
    sweep_until_polled()
    instance.refresh_from_db()
    deployment.refresh_from_db()
    assert (instance.state, deployment.state) == (WorkloadState.RUNNING, WorkloadState.RUNNING)
    # The instance's node: the offer's only one, the reservation's GPUs on it too.
    assert instance.node_id == deployment.node_id
    # Reachable at the fleet's address, on the node's first two published ports (in the
    # order the node began them, which follows the assignments' random ids).
    ssh_port = instance.connection["ports"]["22"]
    assert instance.connection == {"host": "127.0.0.1", "ports": {"22": ssh_port}, "endpoint": ""}
    endpoint_port = 40001 if ssh_port == 40000 else 40000
    assert deployment.connection == {
        "host": "127.0.0.1",
        "ports": {},
        "endpoint": f"http://127.0.0.1:{endpoint_port}/v1",
    }
    assert ssh_port in (40000, 40001)
    assert list(
        NodeAssignments.objects.filter(node_id=instance.node_id).values_list(
            "generation", "agent_generation"
        )
    ) == [(2, 2)]
    assert Workload.objects.count() == 2


def test_the_sweep_entry_follows_the_poll_interval(settings):
    settings.METERING_POLL_INTERVAL_SECONDS = 5
    minute, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name=SWEEP_TASK_NAME).update(interval=minute, expire_seconds=60)

    assert compute.sweep_in_step() == 5

    task = PeriodicTask.objects.select_related("interval").get(name=SWEEP_TASK_NAME)
    assert (task.interval.every, task.interval.period, task.expire_seconds) == (
        5,
        IntervalSchedule.SECONDS,
        5,
    )
