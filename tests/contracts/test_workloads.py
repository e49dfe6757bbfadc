"""Workload services: instances on free GPUs of an offer, containers and deployments on
reserved GPUs, stop (idempotent), and the generation each change raises for its node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.utils import timezone

from accounts.models import AuditEvent
from capacity.models import NodeStatus, WindowKind
from contracts.lifecycle import contract_amend
from contracts.models import (
    Allocation,
    Contract,
    ContractState,
    NodeAssignments,
    Workload,
    WorkloadFault,
    WorkloadKind,
    WorkloadState,
)
from contracts.workloads import (
    NoFreeGpus,
    container_create,
    deployment_create,
    free_gpus_by_node,
    instance_start,
    instances_never_taken_fail,
    line_workloads_end,
    workload_redeploy,
    workload_stop,
    workloads_end_with_lines,
)
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_product,
    reserved_line,
)
from tests.factories import NodeWindowFactory

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5 buyer@laptop"
IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"


@pytest.fixture
def contract(buyer_org):
    return active_contract(buyer=buyer_org, since=NOW - timedelta(days=3))


@pytest.fixture
def line(contract, offer):
    return gpu_line(contract=contract, offer=offer, since=NOW - timedelta(days=3))


def start(line, gpus: int = 2, at: datetime = NOW, **changes) -> Workload:
    fields = {"image": IMAGE, "ssh_public_key": KEY, "ports": [22], "env": {"A": "1"}}
    return instance_start(line=line, gpu_count=gpus, actor=None, now=at, **(fields | changes))


def generations() -> dict[int, int]:
    return dict(NodeAssignments.objects.values_list("node_id", "generation"))


def test_instance_holds_gpus_of_one_node_open_ended_and_raises_the_generation(line, devices):
    workload = start(line, gpus=3)
    assert workload.kind == WorkloadKind.CONTAINER and workload.is_instance
    assert workload.state == WorkloadState.REQUESTED and workload.started_at == NOW
    allocations = list(Allocation.objects.filter(workload=workload).order_by("gpu_device__index"))
    assert [a.gpu_device_id for a in allocations] == [d.pk for d in devices[:3]]
    assert {a.line_id for a in allocations} == {line.pk}
    assert all(a.period == DateTimeTZRange(NOW, None, "[)") for a in allocations)
    assert sorted(workload.gpus.values_list("pk", flat=True)) == [d.pk for d in devices[:3]]
    assert workload.node_id == devices[0].node_id
    assert generations() == {devices[0].node_id: 1}
    assert AuditEvent.objects.filter(action="workload.instance_started").count() == 1


def test_a_repeated_submission_key_starts_one_instance(line, devices):
    first = start(line, gpus=2, submission_key="start-7f3c9a2e-0001")
    again = start(line, gpus=2, at=NOW + timedelta(seconds=3), submission_key="start-7f3c9a2e-0001")

    assert again.pk == first.pk
    assert (first.replayed, again.replayed) == (False, True)
    assert Workload.objects.count() == 1
    assert list(Allocation.objects.values_list("workload_id", flat=True)) == [first.pk] * 2
    assert AuditEvent.objects.filter(action="workload.instance_started").count() == 1
    assert generations() == {devices[0].node_id: 1}


def test_a_submission_key_reused_for_another_instance_is_refused(line, devices):
    first = start(line, gpus=2, submission_key="start-7f3c9a2e-0001")
    for changes in ({"gpus": 1}, {"image": "nvidia/cuda:12.4.1-base-ubuntu22.04"}, {"env": {}}):
        with pytest.raises(ValidationError) as refused:
            start(line, submission_key="start-7f3c9a2e-0001", **changes)
        assert refused.value.code == "submission_reused"
    assert list(Workload.objects.values_list("pk", flat=True)) == [first.pk]
    assert Allocation.objects.count() == 2
    # Another key, or none, starts another instance.
    start(line, gpus=1, submission_key="start-7f3c9a2e-0002")
    start(line, gpus=1)
    assert Workload.objects.count() == 3


def test_one_submission_key_per_line_in_the_database(line, devices):
    first = start(line, gpus=1, submission_key="start-7f3c9a2e-0001")
    with pytest.raises(IntegrityError), transaction.atomic():
        Workload.objects.create(
            line=line,
            node_id=first.node_id,
            kind=WorkloadKind.CONTAINER,
            image=IMAGE,
            started_at=NOW,
            submission_key="start-7f3c9a2e-0001",
        )


def test_instance_goes_to_the_node_with_enough_free_gpus(line, devices):
    start(line, gpus=3)  # node 1 keeps one free GPU
    second = start(line, gpus=2)
    assert second.node_id == devices[4].node_id
    assert generations() == {devices[0].node_id: 1, devices[4].node_id: 1}


def test_too_few_free_gpus_on_one_node_is_refused_and_nothing_changes(line, devices):
    start(line, gpus=2)
    start(line, gpus=3)
    before = (Workload.objects.count(), Allocation.objects.count(), generations())
    with pytest.raises(NoFreeGpus) as refused:
        start(line, gpus=3)
    assert refused.value.messages == [
        "Only 2 GPUs of this offer are free right now; you asked for 3."
    ]
    assert (Workload.objects.count(), Allocation.objects.count(), generations()) == before


def test_nodes_offline_or_in_a_window_take_no_instance(line, devices):
    first, second = devices[0].node, devices[4].node
    first.status = NodeStatus.UNREACHABLE
    first.save(update_fields=["status"])
    NodeWindowFactory(
        node=second,
        kind=WindowKind.CURTAILMENT,
        period=DateTimeTZRange(NOW - timedelta(hours=1), NOW + timedelta(hours=1), "[)"),
    )
    with pytest.raises(NoFreeGpus) as refused:
        start(line, gpus=1)
    assert refused.value.messages == [
        "Only 0 GPUs of this offer are free right now; you asked for 1."
    ]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"ports": [0]}, "invalid_ports"),
        ({"ports": list(range(1, 18))}, "too_many_ports"),
        ({"ssh_public_key": "ssh-dss AAAA"}, "invalid_ssh_key"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"image": "Not An Image"}, "invalid_image"),
    ],
)
def test_invalid_container_inputs_are_refused(line, devices, changes, code):
    with pytest.raises(ValidationError) as refused:
        start(line, **changes)
    assert refused.value.code == code
    assert Workload.objects.count() == 0


def test_stop_truncates_the_allocations_and_is_idempotent(line, devices):
    workload = start(line, gpus=2)
    stopped_at = NOW + timedelta(minutes=90, seconds=7)
    stopped = workload_stop(workload=workload, actor=None, now=stopped_at)
    assert (stopped.state, stopped.ended_at, stopped.state_since) == (
        WorkloadState.STOPPED,
        stopped_at,
        stopped_at,
    )
    periods = set(Allocation.objects.filter(workload=workload).values_list("period", flat=True))
    assert periods == {DateTimeTZRange(NOW, stopped_at, "[)")}
    assert generations() == {workload.node_id: 2}
    again = workload_stop(workload=workload, actor=None, now=stopped_at + timedelta(hours=1))
    assert (again.state, again.ended_at) == (WorkloadState.STOPPED, stopped_at)
    assert generations() == {workload.node_id: 2}
    assert AuditEvent.objects.filter(action="workload.stopped").count() == 1


def test_an_instance_no_node_took_fails_unbilled_after_10_minutes(line, devices):
    waiting = start(line)
    taken = start(line)
    Workload.objects.filter(pk=taken.pk).update(state=WorkloadState.RUNNING)
    assert instances_never_taken_fail(now=NOW + timedelta(minutes=9, seconds=59)) == 0
    assert instances_never_taken_fail(now=NOW + timedelta(minutes=10)) == 1
    assert instances_never_taken_fail(now=NOW + timedelta(minutes=11)) == 0  # idempotent
    waiting.refresh_from_db()
    assert (waiting.state, waiting.ended_at, waiting.fault) == (
        WorkloadState.FAILED,
        NOW,
        WorkloadFault.NODE,
    )
    assert not Allocation.objects.filter(workload=waiting).exists()  # not a second held
    taken.refresh_from_db()
    assert taken.state == WorkloadState.RUNNING
    assert Allocation.objects.filter(workload=taken).count() == 2


def test_beat_fails_instances_no_node_took_every_5_minutes(settings, line, devices):
    from contracts import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["contracts: fail instances no node took"]
    assert (entry["task"], entry["schedule"]) == (tasks.instances_never_taken.name, 300)
    waiting = start(line, at=timezone.now() - timedelta(minutes=11))
    assert tasks.instances_never_taken() == 1
    waiting.refresh_from_db()
    assert waiting.state == WorkloadState.FAILED


def test_a_reservation_and_an_instance_cannot_hold_the_same_gpu(contract, line, offer, devices):
    workload = start(line, gpus=1)
    reserved = reserved_line(
        contract=contract,
        offer=offer,
        holds=[(devices[1], NOW, NOW + timedelta(days=30))],
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.create(
            line=reserved,
            gpu_device=devices[0],
            period=DateTimeTZRange(NOW + timedelta(days=2), NOW + timedelta(days=3), "[)"),
        )
    assert Allocation.objects.filter(gpu_device=devices[0]).get().workload == workload


def test_an_open_ended_allocation_needs_a_workload(line, devices):
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.create(
            line=line, gpu_device=devices[0], period=DateTimeTZRange(NOW, None, "[)")
        )


def test_instance_start_needs_an_active_on_demand_line(contract, line, offer, devices):
    contract.state = ContractState.SUSPENDED
    contract.save(update_fields=["state"])
    with pytest.raises(ValidationError) as refused:
        start(line)
    assert refused.value.code == "contract_not_active"


# -- reserved GPUs ------------------------------------------------------------------------


@pytest.fixture
def reservation(contract, offer, devices):
    return reserved_line(
        contract=contract,
        offer=offer,
        holds=[(gpu, NOW - timedelta(days=1), NOW + timedelta(days=29)) for gpu in devices[:4]],
    )


def test_deployment_on_reserved_gpus_gets_a_private_name(reservation, devices):
    product = inference_product("llama-3-1-8b")
    workload = deployment_create(
        line=reservation, product=product, gpu_count=1, actor=None, now=NOW
    )
    assert workload.kind == WorkloadKind.DEPLOYMENT
    assert workload.served_model_name == f"d-{workload.public_id}"
    assert len(workload.public_id) == 32
    assert list(workload.gpus.values_list("pk", flat=True)) == [devices[0].pk]
    assert not Allocation.objects.filter(workload=workload).exists()
    assert generations() == {devices[0].node_id: 1}


def test_deployment_refused_when_the_gpus_cannot_hold_the_model(reservation, devices):
    product = inference_product("big-model")
    product.memory_required_mib = 200_000
    product.save(update_fields=["memory_required_mib"])
    with pytest.raises(ValidationError) as refused:
        deployment_create(line=reservation, product=product, gpu_count=2, actor=None, now=NOW)
    assert refused.value.messages == [
        "Big model needs 200,000 MiB of GPU memory; the 2 GPUs chosen have 163,840 MiB."
    ]
    deployed = deployment_create(
        line=reservation, product=product, gpu_count=3, actor=None, now=NOW
    )
    assert deployed.gpus.count() == 3


def test_one_workload_per_reserved_gpu_and_only_gpus_held(reservation, devices):
    container_create(
        line=reservation,
        image=IMAGE,
        ssh_public_key=KEY,
        ports=[22],
        env={},
        gpu_ids=[devices[0].pk],
        actor=None,
        now=NOW,
    )
    for gpu_ids, code in (([devices[0].pk], "gpu_busy"), ([devices[5].pk], "gpu_not_reserved")):
        with pytest.raises(ValidationError) as refused:
            container_create(
                line=reservation,
                image=IMAGE,
                ssh_public_key=KEY,
                ports=[],
                env={},
                gpu_ids=gpu_ids,
                actor=None,
                now=NOW,
            )
        assert refused.value.code == code


def test_a_gpu_still_running_a_workload_is_not_free_for_an_instance(reservation, line, devices):
    """An amendment releases reserved GPUs at once; what ran on them stops when beat next
    ends workloads of lines that no longer hold their GPUs. Until then the GPU is busy."""
    running = container_create(
        line=reservation,
        image=IMAGE,
        ssh_public_key=KEY,
        ports=[22],
        env={},
        gpu_ids=[devices[0].pk],
        actor=None,
        now=NOW,
    )
    # The reservation gives its GPUs back from now (as contract_amend does).
    Allocation.objects.filter(line=reservation).update(
        period=DateTimeTZRange(NOW - timedelta(days=1), NOW, "[)")
    )
    later = NOW + timedelta(minutes=5)
    assert free_gpus_by_node(line=line, now=later) == {
        devices[0].node_id: 3,  # devices[0] runs the container, 1-3 are free
        devices[4].node_id: 4,
    }
    workload_stop(workload=running, actor=None, now=later)
    assert free_gpus_by_node(line=line, now=later) == {
        devices[0].node_id: 4,
        devices[4].node_id: 4,
    }


def test_gpus_of_a_reservation_awaiting_renewal_are_not_free(contract, line, offer, devices):
    """The term ended ten minutes ago and roll-over (hourly) has not renewed it yet: an
    instance on those GPUs would make the renewal conflict and the reservation expire."""
    term_end = NOW - timedelta(minutes=10)
    Contract.objects.filter(pk=contract.pk).update(term_ends_at=term_end, auto_renew=True)
    reserved_line(
        contract=contract,
        offer=offer,
        holds=[(gpu, term_end - timedelta(days=30), term_end) for gpu in devices[:2]],
    )
    assert free_gpus_by_node(line=line, now=NOW) == {
        devices[4].node_id: 4,
        devices[0].node_id: 2,
    }
    # Not renewing: the GPUs are free at the term's end.
    Contract.objects.filter(pk=contract.pk).update(auto_renew=False)
    assert free_gpus_by_node(line=line, now=NOW) == {
        devices[0].node_id: 4,
        devices[4].node_id: 4,
    }


def test_redeploy_replaces_the_workload_on_the_same_gpus(reservation, devices):
    product = inference_product("llama-3-1-8b")
    old = deployment_create(line=reservation, product=product, gpu_count=2, actor=None, now=NOW)
    later = NOW + timedelta(hours=1)
    new = workload_redeploy(workload=old, actor=None, now=later)
    old.refresh_from_db()
    assert (old.state, old.ended_at) == (WorkloadState.STOPPED, later)
    assert new.state == WorkloadState.REQUESTED and new.public_id != old.public_id
    assert sorted(new.gpus.values_list("pk", flat=True)) == [devices[0].pk, devices[1].pk]
    assert generations() == {devices[0].node_id: 3}


def test_workloads_stop_when_the_reservation_ends(reservation, devices):
    workload = container_create(
        line=reservation,
        image=IMAGE,
        ssh_public_key="",
        ports=[],
        env={},
        gpu_count=1,
        actor=None,
        now=NOW,
    )
    assert workloads_end_with_lines(now=NOW + timedelta(days=1)) == 0
    assert workloads_end_with_lines(now=NOW + timedelta(days=30)) == 1
    workload.refresh_from_db()
    assert (workload.state, workload.ended_at) == (
        WorkloadState.STOPPED,
        NOW + timedelta(days=29),
    )
    assert workloads_end_with_lines(now=NOW + timedelta(days=31)) == 0


def test_an_amendment_that_gives_gpus_back_now_stops_what_ran_on_them(
    contract, reservation, devices
):
    kept, given_back = (
        container_create(
            line=reservation,
            image=IMAGE,
            ssh_public_key="",
            ports=[],
            env={},
            gpu_ids=[gpu.pk],
            actor=None,
            now=NOW,
        )
        for gpu in (devices[0], devices[3])  # the amendment gives back the last GPU
    )
    later = NOW + timedelta(hours=2)
    contract_amend(
        contract=contract,
        actor=None,
        effective_at=later,
        line=reservation,
        remove_gpus=1,
        now=later,
    )
    given_back.refresh_from_db()
    kept.refresh_from_db()
    assert (given_back.state, given_back.ended_at) == (WorkloadState.STOPPED, later)
    assert kept.state == WorkloadState.REQUESTED


def test_ending_a_line_stops_its_instances_there(line, devices):
    workload = start(line, gpus=1)
    at = NOW + timedelta(hours=2)
    assert line_workloads_end(line_ids=[line.pk], at=at) == 1
    workload.refresh_from_db()
    assert (workload.state, workload.ended_at) == (WorkloadState.STOPPED, at)
    assert Allocation.objects.get(workload=workload).period == DateTimeTZRange(NOW, at, "[)")


def test_rate_of_an_instance_line_is_the_offer_on_demand_rate(line):
    assert line.price_per_gpu_hour == Decimal("2.4000")
