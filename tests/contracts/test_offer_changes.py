"""Partners changing an offer that has live reservations (issue 13, item 6): the offer
cannot list fewer GPUs than reservations hold at once; a reservation keeps the currency
and price it was sold at, whatever the offer says later."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from capacity import services as capacity_services
from capacity.models import Offer
from contracts.checkout import reservation_checkout
from contracts.models import ContractLine
from contracts.selectors import offer_committed_gpus


def _reserve(offer, buyer, *, gpus, starts_at, term_months=1):
    return reservation_checkout(
        buyer=buyer,
        offer=offer,
        gpu_count=gpus,
        starts_at=starts_at,
        term_months=term_months,
        actor=None,
    )


def _post_edit_form(client, offer, **changes):
    """The partner's offer edit form, posted with the factory's values and ``changes``."""
    return client.post(
        f"/partner/offers/{offer.pk}/edit/",
        {
            "gpu_count": "8",
            "on_demand_price_per_gpu_hour": "2.4000",
            "reserved_price_1m_per_gpu_hour": "2.1000",
            "reserved_price_3m_per_gpu_hour": "1.9000",
            "reserved_price_6m_per_gpu_hour": "1.8000",
            "reserved_price_12m_per_gpu_hour": "1.6000",
            "currency": "USD",
            **changes,
        },
    )


@pytest.fixture
def soon():
    return timezone.now() + timedelta(minutes=5)


SHRINK_REFUSED = (
    "Reservations hold 4 GPUs of this offer at once (now or later); it cannot list fewer "
    "until they end."
)


def test_an_offer_cannot_shrink_below_the_gpus_reserved(
    offer, buyer_org, other_org, partner_owner, soon
):
    """Issue 13 #6: 4 GPUs reserved, the partner shrinks the offer to 2: refused."""
    _reserve(offer, buyer_org, gpus=3, starts_at=soon)
    _reserve(offer, other_org, gpus=1, starts_at=soon + timedelta(days=2))
    with pytest.raises(ValidationError) as refused:
        capacity_services.offer_update(offer=offer, actor=None, data={"gpu_count": 2})
    assert refused.value.message_dict == {"gpu_count": [SHRINK_REFUSED]}
    partner = APIClient()
    partner.force_login(partner_owner)
    response = partner.patch(f"/api/v1/offers/{offer.pk}", {"gpu_count": 2}, format="json")
    assert (response.status_code, response.json()) == (400, {"gpu_count": [SHRINK_REFUSED]})
    page = _post_edit_form(partner, offer, gpu_count="2")
    assert page.status_code == 200
    assert SHRINK_REFUSED in page.content.decode()
    assert Offer.objects.get(pk=offer.pk).gpu_count == 8
    assert (
        capacity_services.offer_update(offer=offer, actor=None, data={"gpu_count": 4}).gpu_count
        == 4
    )


def test_the_commitment_is_the_busiest_moment_not_the_sum(offer, buyer_org, other_org, soon):
    first = _reserve(offer, buyer_org, gpus=3, starts_at=soon)
    # Starts where the first ends: never held together.
    _reserve(offer, other_org, gpus=2, starts_at=first.line.ends_at)
    assert offer_committed_gpus(offer_id=offer.pk, now=timezone.now()) == 3
    assert offer_committed_gpus(offer_id=offer.pk, now=first.line.ends_at) == 2
    assert offer_committed_gpus(offer_id=offer.pk, now=first.line.ends_at + timedelta(days=40)) == 0
    assert (
        capacity_services.offer_update(offer=offer, actor=None, data={"gpu_count": 3}).gpu_count
        == 3
    )


CURRENCY_REFUSED = (
    "Reservations of this offer were sold in USD and hold its GPUs now or later; its "
    "currency cannot change until they end. To sell in EUR, list a new offer."
)


def test_a_reservation_keeps_its_price_new_prices_apply_to_new_quotes(offer, buyer_org, soon):
    line = _reserve(offer, buyer_org, gpus=2, starts_at=soon).line
    capacity_services.offer_update(
        offer=offer,
        actor=None,
        data={
            "on_demand_price_per_gpu_hour": Decimal("9.9000"),
            "reserved_price_1m_per_gpu_hour": Decimal("9.5000"),
        },
    )
    stored = ContractLine.objects.select_related("contract").get(pk=line.pk)
    assert (stored.price_per_gpu_hour, stored.contract.currency) == (Decimal("2.1000"), "USD")
    # The next reservation is sold at the offer's new price, on the same contract.
    again = _reserve(offer, buyer_org, gpus=1, starts_at=soon)
    assert (again.line.price_per_gpu_hour, again.contract.pk) == (
        Decimal("9.5000"),
        stored.contract.pk,
    )


def test_the_currency_cannot_change_while_reservations_hold_gpus(
    offer, buyer_org, partner_owner, soon
):
    """Issue 13 #6: an offer with a live reservation was switched from USD to EUR."""
    line = _reserve(offer, buyer_org, gpus=2, starts_at=soon).line
    with pytest.raises(ValidationError) as refused:
        capacity_services.offer_update(offer=offer, actor=None, data={"currency": "EUR"})
    assert refused.value.message_dict == {"currency": [CURRENCY_REFUSED]}
    partner = APIClient()
    partner.force_login(partner_owner)
    response = partner.patch(f"/api/v1/offers/{offer.pk}", {"currency": "EUR"}, format="json")
    assert (response.status_code, response.json()) == (400, {"currency": [CURRENCY_REFUSED]})
    page = _post_edit_form(partner, offer, currency="EUR")
    assert page.status_code == 200
    assert CURRENCY_REFUSED in page.content.decode()
    assert Offer.objects.get(pk=offer.pk).currency == "USD"
    # Once the reservation has ended, the offer may sell in another currency; the line
    # keeps what it was sold at.
    with time_machine.travel(line.ends_at + timedelta(seconds=1)):
        changed = capacity_services.offer_update(offer=offer, actor=None, data={"currency": "EUR"})
    assert changed.currency == "EUR"
    stored = ContractLine.objects.select_related("contract").get(pk=line.pk)
    assert (stored.price_per_gpu_hour, stored.contract.currency) == (Decimal("2.1000"), "USD")
