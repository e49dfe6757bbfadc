"""Concurrent checkouts on real PostgreSQL (threads, one connection each): never a double
booking; losers get other free GPUs of the same offer while there are enough."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from contracts import allocations as allocations_module
from contracts.checkout import reservation_checkout
from contracts.models import Allocation, ContractLine
from devtools.race import overlapping_allocation_pairs, race_checkouts
from tests.factories import OfferFactory, OrganizationFactory, SiteFactory, gpu_pool

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
