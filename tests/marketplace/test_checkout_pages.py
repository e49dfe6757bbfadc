"""Storefront pages: offer, quote, confirm; roles and the payment-method seam."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role
from capacity import services as capacity_services
from contracts.models import Allocation, Contract, ContractLine
from tests.factories import MembershipFactory, OfferFactory, SiteFactory, gpu_pool
from tests.fixtures import client_for


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def offer(partner_org):
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    gpu_pool(site=site, gpus=4)
    return OfferFactory(
        site=site,
        gpu_count=4,
        available_from=timezone.now() - timedelta(days=1),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )


def _start():
    return (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")


def _request(offer, **changes):
    return {"offer": offer.pk, "gpu_count": 2, "starts_at": _start(), "term_months": 1, **changes}


def _confirmation(client, offer, **changes):
    """What the quote page's confirm form posts: the request, the quoted price and the
    form's submission key."""
    request = _request(offer, **changes)
    page = client.get(reverse("marketplace:quote"), request)
    assert page.status_code == 200
    return {**request, **page.context["confirm_form"].initial}


def test_offer_page_shows_prices_and_reserve_form(offer, buyer_client):
    page = buyer_client.get(reverse("marketplace:offer_detail", args=[offer.pk]))
    assert page.status_code == 200
    assert b"Permian Flare 1" in page.content and b"Get a quote" in page.content


def test_quote_shows_the_total(offer, buyer_client):
    page = buyer_client.get(reverse("marketplace:quote"), _request(offer))
    assert page.status_code == 200
    quote = page.context["quote"]
    # 2 GPUs x hours of one calendar month from the start x 2.00.
    assert page.context["total"] == Decimal(quote.total_minor) / 100
    assert b"Confirm reservation" in page.content


def test_quote_for_best_offer_by_model(offer, buyer_client):
    page = buyer_client.get(
        reverse("marketplace:quote"),
        {"gpu_model": offer.gpu_model_id, "gpu_count": 2, "starts_at": _start(), "term_months": 1},
    )
    assert page.context["quote"].offer == offer


def test_confirm_creates_contract_and_redirects(offer, buyer_client, buyer_org):
    response = buyer_client.post(
        reverse("marketplace:checkout"), _confirmation(buyer_client, offer)
    )
    contract = Contract.objects.get(buyer=buyer_org)
    assert response.status_code == 302
    assert response.url == reverse("contracts:detail", args=[contract.pk])
    assert Allocation.objects.filter(line__contract=contract).count() == 2


def test_confirm_without_free_gpus_explains(offer, buyer_client):
    response = buyer_client.post(reverse("marketplace:checkout"), _request(offer, gpu_count=5))
    assert response.status_code == 400
    assert not Contract.objects.exists()


def test_no_payment_method_no_confirm_button(settings, offer, buyer_client):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    page = buyer_client.get(reverse("marketplace:quote"), _request(offer))
    assert b"Add a payment method" in page.content
    assert b"Confirm reservation" not in page.content
    response = buyer_client.post(
        reverse("marketplace:checkout"), _confirmation(buyer_client, offer)
    )
    assert response.status_code == 409
    assert not Contract.objects.exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.FINANCE])
def test_read_only_roles_cannot_confirm(offer, buyer_org, role):
    client = client_for(MembershipFactory(organization=buyer_org, role=role).user)
    assert client.get(reverse("marketplace:quote"), _request(offer)).status_code == 200
    assert client.post(reverse("marketplace:checkout"), _request(offer)).status_code == 403
    assert not Contract.objects.exists()


def test_partners_browse_but_do_not_get_quotes(offer, partner_client):
    """Offers are public; a quote needs a buyer organization."""
    for name, args in [("marketplace:search", []), ("marketplace:offer_detail", [offer.pk])]:
        assert partner_client.get(reverse(name, args=args)).status_code == 200
    page = partner_client.get(reverse("marketplace:offer_detail", args=[offer.pk]))
    assert b"Get a quote" not in page.content
    assert partner_client.get(reverse("marketplace:quote")).status_code == 404


def test_confirm_is_refused_when_the_price_changed_since_the_quote(offer, buyer_client, buyer_org):
    """Issue 13 #5: quoted at 2.00, the partner raises the 1-month price to 9.50 before the
    buyer confirms: nothing is reserved, the page says why and quotes the new price."""
    confirmation = _confirmation(buyer_client, offer)
    assert confirmation["quoted_price_per_gpu_hour"] == Decimal("2.0000")
    capacity_services.offer_update(
        offer=offer,
        actor=None,
        data={
            "on_demand_price_per_gpu_hour": Decimal("9.9000"),
            "reserved_price_1m_per_gpu_hour": Decimal("9.5000"),
        },
    )
    response = buyer_client.post(reverse("marketplace:checkout"), confirmation)
    assert response.status_code == 409
    hours = response.context["quote"].hours_per_gpu
    was, now = Decimal("2.00") * 2 * hours, Decimal("9.50") * 2 * hours
    assert response.context["form"].non_field_errors() == [
        f"The price changed since your quote: it was 2.0000 USD per GPU-hour, "
        f"{was.quantize(Decimal('0.01'))} USD for the term, it is now 9.5000 USD per "
        f"GPU-hour, {now.quantize(Decimal('0.01'))} USD for the term. Nothing was reserved; "
        "check the new price and confirm again."
    ]
    assert not Contract.objects.exists()
    assert not Allocation.objects.exists()
    # The page offers the new price under a new key; confirming it reserves at 9.50.
    again = response.context["confirm_form"].initial
    assert again["quoted_price_per_gpu_hour"] == Decimal("9.5000")
    assert again["submission_key"] != confirmation["submission_key"]
    assert response.context["quote"].free_gpus == 4
    done = buyer_client.post(reverse("marketplace:checkout"), {**confirmation, **again})
    assert done.status_code == 302
    assert ContractLine.objects.get(contract__buyer=buyer_org).price_per_gpu_hour == Decimal(
        "9.5000"
    )


def test_confirm_without_its_quote_is_refused(offer, buyer_client):
    response = buyer_client.post(reverse("marketplace:checkout"), _request(offer))
    assert response.status_code == 400
    assert response.context["form"].errors["quoted_price_per_gpu_hour"] == [
        "This confirmation does not carry its quote; get a quote and confirm it."
    ]
    assert not Contract.objects.exists()


def test_a_form_submitted_twice_reserves_once(offer, buyer_client, buyer_org):
    """Issue 13 #8 (the sequential half; tests/contracts/test_concurrency.py races it)."""
    confirmation = _confirmation(buyer_client, offer)
    first = buyer_client.post(reverse("marketplace:checkout"), confirmation, follow=True)
    second = buyer_client.post(reverse("marketplace:checkout"), confirmation, follow=True)
    contract = Contract.objects.get(buyer=buyer_org)
    contract_page = reverse("contracts:detail", args=[contract.pk])
    assert first.redirect_chain == second.redirect_chain == [(contract_page, 302)]
    assert [str(message) for message in second.context["messages"]] == [
        f"This reservation was already confirmed on contract {contract.reference}; "
        "nothing more was reserved."
    ]
    assert ContractLine.objects.filter(contract=contract).count() == 1
    assert Allocation.objects.filter(line__contract=contract).count() == 2
    # A new render of the quote page is a new form: it reserves again.
    third = buyer_client.post(reverse("marketplace:checkout"), _confirmation(buyer_client, offer))
    assert third.status_code == 302
    assert ContractLine.objects.filter(contract=contract).count() == 2
