"""Storefront pages: offer, quote, confirm; roles and the payment-method seam."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role
from contracts.models import Allocation, Contract
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
    response = buyer_client.post(reverse("marketplace:checkout"), _request(offer))
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
    response = buyer_client.post(reverse("marketplace:checkout"), _request(offer))
    assert response.status_code == 409
    assert not Contract.objects.exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.FINANCE])
def test_read_only_roles_cannot_confirm(offer, buyer_org, role):
    client = client_for(MembershipFactory(organization=buyer_org, role=role).user)
    assert client.get(reverse("marketplace:quote"), _request(offer)).status_code == 200
    assert client.post(reverse("marketplace:checkout"), _request(offer)).status_code == 403
    assert not Contract.objects.exists()


def test_partners_have_no_storefront(offer, partner_client):
    for name, args in [("marketplace:search", []), ("marketplace:offer_detail", [offer.pk])]:
        assert partner_client.get(reverse(name, args=args)).status_code == 404
