"""Concurrent checkouts on real PostgreSQL (threads, one connection each): never a double
booking; losers get other free GPUs of the same offer while there are enough."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role
from capacity import services as capacity_services
from contracts import allocations as allocations_module
from contracts import checkout
from contracts.checkout import QuoteChanged, QuotedPrice, reservation_checkout, reservation_quote
from contracts.models import Allocation, Contract, ContractLine, Workload
from contracts.workloads import instance_start
from devtools.race import overlapping_allocation_pairs, race_checkouts
from tests.contracts.usage_builders import active_contract, gpu_line
from tests.contracts.workload_builders import PYTORCH, SSH_KEY
from tests.factories import (
    MembershipFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    gpu_pool,
)
from tests.fixtures import client_for

concurrent = pytest.mark.django_db(transaction=True)


def _pool(gpus: int):
    site = SiteFactory(name="Race site")
    gpu_pool(site=site, gpus=gpus, per_node=4)
    return OfferFactory(site=site, gpu_count=gpus)


@concurrent
def test_ten_buyers_race_for_four_gpus():
    offer = _pool(4)
    buyers = [OrganizationFactory(is_buyer=True) for _ in range(10)]
    start = timezone.now() + timedelta(minutes=1)
    result = race_checkouts(buyers=buyers, offer=offer, gpus_each=1, starts_at=start)
    assert result.errors == []
    assert (result.succeeded, result.refused) == (4, 6)
    assert Allocation.objects.count() == 4
    assert Allocation.objects.values("gpu_device").distinct().count() == 4
    assert overlapping_allocation_pairs() == 0


@concurrent
def test_race_from_several_worker_processes():
    offer = _pool(4)
    buyers = [OrganizationFactory(is_buyer=True) for _ in range(10)]
    start = timezone.now() + timedelta(minutes=1)
    result = race_checkouts(buyers=buyers, offer=offer, gpus_each=1, starts_at=start, processes=3)
    assert result.errors == []
    assert (result.succeeded, result.refused) == (4, 6)
    assert len(result.latencies_ms) == 10
    assert Allocation.objects.values("gpu_device").distinct().count() == 4
    assert ContractLine.objects.filter(offer=offer).count() == 4
    assert overlapping_allocation_pairs() == 0


@concurrent
def test_losers_get_other_free_gpus_of_the_offer():
    offer = _pool(8)
    buyers = [OrganizationFactory(is_buyer=True) for _ in range(4)]
    start = timezone.now() + timedelta(minutes=1)
    result = race_checkouts(buyers=buyers, offer=offer, gpus_each=2, starts_at=start)
    assert result.errors == []
    assert result.succeeded == 4
    assert Allocation.objects.values("gpu_device").distinct().count() == 8
    assert overlapping_allocation_pairs() == 0


@pytest.mark.django_db
def test_conflict_retries_with_other_free_gpus(settings, buyer_org, other_org):
    """A GPU taken by a transaction committed after our pick: the exclusion constraint
    skips it (``ON CONFLICT DO NOTHING``), the next attempt picks only the missing GPU."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    offer = _pool(4)
    start = timezone.now() + timedelta(minutes=1)
    taken = (
        reservation_checkout(
            buyer=other_org, offer=offer, gpu_count=1, starts_at=start, term_months=1, actor=None
        )
        .allocations[0]
        .gpu_device_id
    )
    real_lock = allocations_module.selectors.lock_free_device_ids
    calls = []

    def stale_then_real(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # a stale snapshot: the taken GPU still looks free, first
            others = [pk for pk in real_lock(**kwargs) if pk != taken]
            return [taken, *others][: kwargs["limit"]]
        return real_lock(**kwargs)

    with mock.patch.object(allocations_module.selectors, "lock_free_device_ids", stale_then_real):
        # Stale pick = [taken, one free]; the insert conflicts; retry picks two free ones.
        result = reservation_checkout(
            buyer=buyer_org, offer=offer, gpu_count=2, starts_at=start, term_months=1, actor=None
        )
    assert len(calls) == 2
    assert taken not in {a.gpu_device_id for a in result.allocations}
    assert overlapping_allocation_pairs() == 0


@pytest.mark.django_db
def test_conflicts_every_time_give_a_clear_message(settings, buyer_org, other_org):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    offer = _pool(2)
    start = timezone.now() + timedelta(minutes=1)
    taken = (
        reservation_checkout(
            buyer=other_org, offer=offer, gpu_count=1, starts_at=start, term_months=1, actor=None
        )
        .allocations[0]
        .gpu_device_id
    )

    def always_stale(**kwargs):
        return [taken]

    with (
        mock.patch.object(allocations_module.selectors, "lock_free_device_ids", always_stale),
        pytest.raises(ValidationError, match="just reserved by someone else"),
    ):
        reservation_checkout(
            buyer=buyer_org, offer=offer, gpu_count=1, starts_at=start, term_months=1, actor=None
        )
    assert not ContractLine.objects.filter(contract__buyer=buyer_org).exists()


@concurrent
def test_one_confirm_form_submitted_twice_at_once_reserves_once():
    """Issue 13 #8: the same rendered confirm form posted twice at the same instant (a
    double click), each request on its own connection: one line, both land on it."""
    offer = _pool(4)
    owner = MembershipFactory(organization=OrganizationFactory(is_buyer=True), role=Role.OWNER)
    start = (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0)
    quote = reservation_quote(offer=offer, gpu_count=2, starts_at=start, term_months=1)
    form = {
        "offer": offer.pk,
        "gpu_count": 2,
        "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
        "term_months": 1,
        "quoted_price_per_gpu_hour": quote.price_per_gpu_hour,
        "quoted_currency": quote.currency,
        "quoted_total_minor": quote.total_minor,
        "submission_key": "one-render-of-the-confirm-form",
    }
    clients = [client_for(owner.user), client_for(owner.user)]
    start_line = threading.Barrier(len(clients), timeout=30)
    responses = []
    real_pick = checkout.pick_free_devices

    def slow_pick(**kwargs):
        # Hold the transaction open a while: the twin arrives while this one is in flight.
        time.sleep(0.3)
        return real_pick(**kwargs)

    def submit(client):
        try:
            start_line.wait()
            responses.append(client.post(reverse("marketplace:checkout"), form))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(client,)) for client in clients]
    with mock.patch.object(checkout, "pick_free_devices", slow_pick):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    contract = Contract.objects.get(buyer=owner.organization)
    contract_page = reverse("contracts:detail", args=[contract.pk])
    assert [(r.status_code, r.url) for r in responses] == [(302, contract_page)] * 2
    assert ContractLine.objects.filter(contract=contract).count() == 1
    assert Allocation.objects.filter(line__contract=contract).count() == 2
    assert overlapping_allocation_pairs() == 0


@concurrent
def test_a_checkout_waits_for_a_price_change_in_flight_and_refuses_it(settings):
    """The offer row is share-locked by checkout: a price change not yet committed makes
    the checkout wait, then price the committed row, so the quote of 2.10 is refused."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    offer = _pool(4)
    buyer = OrganizationFactory(is_buyer=True)
    start = timezone.now() + timedelta(minutes=5)
    quote = reservation_quote(offer=offer, gpu_count=1, starts_at=start, term_months=1)
    updated = threading.Event()
    outcomes = []

    def partner():
        try:
            with transaction.atomic():
                capacity_services.offer_update(
                    offer=offer,
                    actor=None,
                    data={
                        "on_demand_price_per_gpu_hour": Decimal("9.9000"),
                        "reserved_price_1m_per_gpu_hour": Decimal("9.5000"),
                    },
                )
                updated.set()
                time.sleep(0.5)  # not committed yet
        finally:
            connection.close()

    def confirm():
        try:
            assert updated.wait(timeout=30)
            reservation_checkout(
                buyer=buyer,
                offer=offer,
                gpu_count=1,
                starts_at=start,
                term_months=1,
                actor=None,
                quoted=QuotedPrice(price_per_gpu_hour=quote.price_per_gpu_hour),
            )
            outcomes.append("reserved")
        except QuoteChanged as refused:
            outcomes.append(str(refused.quote.price_per_gpu_hour))
        finally:
            connection.close()

    threads = [threading.Thread(target=partner), threading.Thread(target=confirm)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert quote.price_per_gpu_hour == Decimal("2.1000")
    assert outcomes == ["9.5000"]
    assert not ContractLine.objects.filter(offer=offer).exists()


@concurrent
def test_two_concurrent_starts_with_one_key_start_one_instance(buyer_org):
    """Two posts of one start form at the same moment (a double click), each on its own
    connection: one instance, one set of allocations, both answers the same workload."""
    offer = _pool(4)
    now = timezone.now()
    line = gpu_line(
        contract=active_contract(buyer=buyer_org, since=now - timedelta(days=1)),
        offer=offer,
        since=now - timedelta(days=1),
    )
    barrier = threading.Barrier(2)
    answers: list[int] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            barrier.wait()
            workload = instance_start(
                line=line,
                gpu_count=2,
                image=PYTORCH,
                ssh_public_key=SSH_KEY,
                ports=[22],
                env={},
                actor=None,
                submission_key="double-click-0001",
            )
            answers.append(workload.pk)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    workload = Workload.objects.get()
    assert answers == [workload.pk, workload.pk]
    assert Allocation.objects.filter(workload=workload).count() == 2
    assert Allocation.objects.count() == 2
