"""Issue 16, points 1-4 and 14: the marketplace and prices without an account, what an
offer is made of, its terms on the quote and confirmation, a search that says why it did
not run, the card page and back, the status page. Exact values under a frozen clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import quote as urlquote

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from capacity import services as capacity_services
from capacity.models import EnergySource, Interconnect, Region
from contracts import checkout
from contracts.models import InferenceProduct
from tests.factories import (
    GpuDeviceFactory,
    MembershipFactory,
    NodeFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    catalog_gpu,
)
from tests.fixtures import client_for

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
START = "2026-03-11T00:00"  # 1 month: 31 days, 744 hours


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def offer(partner_org):
    site = SiteFactory(
        organization=partner_org,
        name="Permian Flare 1",
        region=Region.NORTH_AMERICA,
        energy_source=EnergySource.FLARE_GAS,
    )
    for name, cpu_model in (("gpu-a", "AMD EPYC 9454"), ("gpu-b", "AMD EPYC 9454")):
        node = NodeFactory(
            site=site,
            name=name,
            gpu_model=catalog_gpu(),
            gpu_count=2,
            cpu_cores=96,
            cpu_model=cpu_model,
            ram_gib=1024,
            disk_gib=7680,
            network_gbps=100,
            interconnect=Interconnect.NVLINK,
            driver_version="550.54.15",
            cuda_version="12.4",
            status="online",
        )
        for index in range(2):
            GpuDeviceFactory(node=node, index=index)
    NodeFactory(site=site, name="gpu-c", gpu_model=catalog_gpu(), gpu_count=8, status="online")
    return OfferFactory(
        site=site,
        gpu_count=4,
        available_from=datetime(2026, 3, 1, tzinfo=UTC),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )


def _text(response) -> str:  # type: ignore[no-untyped-def]
    """The page's visible text, whitespace collapsed."""
    body = response.content.decode().split("<main", 1)[1].split("</main>", 1)[0]
    footer = response.content.decode().split("<footer", 1)[-1]
    return " ".join(re.sub(r"<[^>]+>", " ", f"<main{body}</main><footer{footer}").split())


# -- point 1: public marketplace and pricing -------------------------------------------


def test_anyone_searches_offers_and_opens_one(offer, partner_org):
    anonymous = Client()
    search = anonymous.get(reverse("marketplace:search"))
    assert search.status_code == 200
    assert search.content.count(b"data-offer=") == 1

    page = anonymous.get(reverse("marketplace:offer_detail", args=[offer.pk]))
    assert page.status_code == 200
    text = _text(page)
    assert "Sign up to reserve" in text
    assert "Get a quote" not in text
    here = urlquote(reverse("marketplace:offer_detail", args=[offer.pk]), safe="/")
    assert f'href="/accounts/signup/?next={here}"' in page.content.decode()


def test_public_pages_show_no_tenant_data(offer, partner_org, buyer_org):
    """A buyer's reservation, the partner's name and its nodes' names stay private."""
    checkout.reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=2,
        starts_at=datetime(2026, 3, 11, tzinfo=UTC),
        term_months=1,
        actor=None,
    )
    anonymous = Client()
    for url in (
        reverse("marketplace:search"),
        reverse("marketplace:offer_detail", args=[offer.pk]),
        reverse("pricing"),
        reverse("landing"),
        reverse("status"),
    ):
        text = _text(anonymous.get(url))
        for private in (buyer_org.name, partner_org.name, "gpu-a", "gpu-b", "HG-C"):
            assert private not in text, (url, private)
    # The offer itself is public: its site, model and prices.
    page = _text(anonymous.get(reverse("marketplace:offer_detail", args=[offer.pk])))
    assert "Permian Flare 1" in page and "2.0000" in page
    assert "A new contract, billed monthly in arrears" in page


def test_quote_still_needs_a_buyer_account(offer):
    response = Client().get(reverse("marketplace:quote"), {"offer": offer.pk})
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/?next=/marketplace/quote/")


def test_pricing_page_lists_inference_products_and_gpu_prices(offer):
    InferenceProduct.objects.exclude(slug="llama-3.1-8b-instruct").update(is_active=False)
    page = Client().get(reverse("pricing"))
    assert page.status_code == 200
    text = _text(page)
    inference = text.split("Inference Model", 1)[1].split(" GPUs GPU model", 1)[0]
    assert inference.strip() == (
        "Input / 1M tokens Output / 1M tokens Llama 3.1 8B Instruct "
        "llama-3.1-8b-instruct 0.0500 USD 0.0800 USD"
    )
    gpus = text.split("GPUs GPU model", 1)[1].split(" Prices are public", 1)[0]
    assert gpus.strip() == (
        "On demand / GPU-h, from Reserved 12 months / GPU-h, from GPUs listed Regions "
        "H100 SXM 80GB 2.4000 USD 1.6000 USD 4 1"
    )


def test_public_navigation_links_marketplace_and_pricing(db):
    html = Client().get(reverse("landing")).content.decode()
    assert '<a class="btn btn-link" href="/marketplace/">Marketplace</a>' in html
    assert '<a class="btn btn-link" href="/pricing/">Pricing</a>' in html


# -- point 2: hardware and terms ------------------------------------------------------


def test_offer_page_shows_the_servers_behind_it(offer):
    page = Client().get(reverse("marketplace:offer_detail", args=[offer.pk]))
    hardware = page.context["hardware"]
    assert [(h.node_count, h.gpus_per_node, h.cpu_cores, h.cpu_model) for h in hardware] == [
        (2, 2, 96, "AMD EPYC 9454"),
        (1, 8, 64, ""),
    ]
    text = _text(page)
    assert (
        "Nodes 2 GPUs per node 2 x H100 SXM 80GB CPU 96 cores (AMD EPYC 9454) RAM 1024 GiB "
        "Disk 7680 GiB Network 100 Gbit/s GPU interconnect NVLink Driver / CUDA 550.54.15 / "
        "CUDA 12.4 Nodes 1 GPUs per node 8 x H100 SXM 80GB CPU 64 cores RAM 1024 GiB "
        "Disk not stated Network not stated GPU interconnect not stated Driver / CUDA not stated"
    ) in text
    assert "GPU memory: 80 GiB per GPU." in text


def test_offer_page_shows_the_default_terms(offer):
    text = _text(Client().get(reverse("marketplace:offer_detail", args=[offer.pk])))
    assert (
        "Auto-renewal On: the contract renews for another term when this one ends, unless you "
        "cancel before"
    ) in text
    assert "Early-termination fee 25.00 % of the reserved charge left in the term" in text
    assert "SLA Standard: 99.50 % availability per month" in text
    assert (
        "at least 99.50 % 0.00 % at least 99.00 %, below 99.50 % 10.00 % "
        "at least 95.00 %, below 99.00 % 25.00 % at least 0.00 %, below 95.00 % 50.00 %"
    ) in text


def test_quote_and_confirmation_show_the_terms_with_the_fee_in_money(offer, buyer_client):
    request = {"offer": offer.pk, "gpu_count": 2, "starts_at": START, "term_months": 1}
    page = buyer_client.get(reverse("marketplace:quote"), request)
    assert page.status_code == 200
    text = _text(page)
    # 2 GPUs x 744 h x 2.00 = 2976.00; the fee at most 25 % of it.
    assert page.context["total"] == Decimal("2976.00")
    assert (
        "Early-termination fee 25.00 % of the reserved charge left in the term; at most "
        "744.00 USD for this reservation"
    ) in text
    assert "Auto-renewal On" in text and "SLA Standard: 99.50 %" in text
    assert "Confirm reservation" in text


def test_terms_of_an_open_contract_are_the_ones_shown(offer, buyer_org, buyer_client):
    done = checkout.reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=1,
        starts_at=datetime(2026, 3, 11, tzinfo=UTC),
        term_months=1,
        actor=None,
    )
    contract = done.contract
    contract.auto_renew = False
    contract.early_termination_fee_percent = Decimal("10.00")
    contract.save(update_fields=["auto_renew", "early_termination_fee_percent"])

    request = {"offer": offer.pk, "gpu_count": 2, "starts_at": START, "term_months": 1}
    text = _text(buyer_client.get(reverse("marketplace:quote"), request))
    assert f"Added to your open contract {contract.reference}" in text
    assert "Auto-renewal Off: the contract ends with its term" in text
    # 10 % of 2 x 744 h x 2.00 = 297.60.
    assert "at most 297.60 USD for this reservation" in text
    # Another tenant's quote does not mention this contract.
    other = client_for(
        MembershipFactory(
            organization=OrganizationFactory(name="Other Buyer", is_buyer=True), role=Role.OWNER
        ).user
    )
    other_text = _text(other.get(reverse("marketplace:quote"), request))
    assert contract.reference not in other_text
    assert "A new contract, billed monthly in arrears" in other_text


def test_node_hardware_is_checked_by_the_service(partner_org):
    site = SiteFactory(organization=partner_org)
    with pytest.raises(Exception) as refused:
        capacity_services.node_create(
            site=site,
            actor=None,
            name="n1",
            gpu_model=catalog_gpu(),
            gpu_count=1,
            cpu_cores=8,
            ram_gib=64,
            network_gbps=5000,
            interconnect="token-ring",
        )
    assert refused.value.message_dict == {  # type: ignore[attr-defined]
        "network_gbps": ["A node's network is between 1 and 3,200 Gbit/s."],
        "interconnect": ["Choose PCIe, NVLink or NVLink with NVSwitch."],
    }
    assert not site.nodes.exists()


# -- point 3: search form, a start in the past, listed models and regions ----------------


def test_a_start_in_the_past_says_why_nothing_was_searched(offer):
    page = Client().get(reverse("marketplace:search"), {"starts_at": "2026-03-09T08:00"})
    text = _text(page)
    assert "No search was run: Start (UTC): The reservation cannot start in the past." in text
    assert "No offers match" not in text
    assert b"data-offer=" not in page.content


def test_model_and_region_choices_are_what_is_listed(offer):
    SiteFactory(region=Region.ASIA_PACIFIC)  # a site without offers adds no region
    form = Client().get(reverse("marketplace:search")).content.decode()
    gpu_options = form.split('name="gpu_model"')[1].split("</select>")[0]
    region_options = form.split('name="region"')[1].split("</select>")[0]
    assert [line.split(">")[1].split("<")[0] for line in gpu_options.split("<option")[1:]] == [
        "Any model",
        "H100 SXM 80GB",
    ]
    assert [line.split(">")[1].split("<")[0] for line in region_options.split("<option")[1:]] == [
        "Any region",
        "North America",
    ]


def test_search_form_uses_the_styled_fields(offer):
    html = Client().get(reverse("marketplace:search")).content.decode()
    assert '<form method="get" class="filters filters-grid" aria-label="Search filters">' in html
    assert '<label for="id_gpu_model" class="field-label">GPU model</label>' in html


def test_landing_counts_the_regions_listed(offer):
    other_site = SiteFactory(region=Region.MIDDLE_EAST)
    OfferFactory(site=other_site)
    text = _text(Client().get(reverse("landing")))
    assert "GPU marketplace · 2 regions" in text
    assert "Monthly GPU reservations in 2 regions North America, Middle East." in text


# -- point 4: the card page and back to the quote ---------------------------------------


def test_quote_without_a_card_links_to_the_card_page_and_back(settings, offer, buyer_client):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    request = {"offer": offer.pk, "gpu_count": 2, "starts_at": START, "term_months": 1}
    page = buyer_client.get(reverse("marketplace:quote"), request)
    quote_url = f"/marketplace/quote/?offer={offer.pk}&gpu_count=2&starts_at=2026-03-11T00%3A00&term_months=1"
    assert page.context["quote_url"] == quote_url
    link = f'href="/billing/payment-method/?next={urlquote(quote_url, safe="/")}"'
    assert link in page.content.decode()


def test_card_page_keeps_only_local_return_addresses(buyer_client, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9/"  # nothing listens: no SetupIntent
    local = buyer_client.get(
        reverse("billing:payment_method"), {"next": "/marketplace/quote/?offer=1"}
    )
    assert local.context["return_to"] == "/marketplace/quote/?offer=1"
    foreign = buyer_client.get(reverse("billing:payment_method"), {"next": "https://evil.test/"})
    assert foreign.context["return_to"] == ""
    scheme_relative = buyer_client.get(reverse("billing:payment_method"), {"next": "//evil.test/"})
    assert scheme_relative.context["return_to"] == ""


def test_a_member_without_billing_rights_is_told_whom_to_ask(settings, offer, buyer_org):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    member = client_for(MembershipFactory(organization=buyer_org, role=Role.MEMBER).user)
    request = {"offer": offer.pk, "gpu_count": 2, "starts_at": START, "term_months": 1}
    text = _text(member.get(reverse("marketplace:quote"), request))
    assert "ask an owner, admin or finance member of your organization to save a card" in text
    assert "/billing/payment-method/" not in text


# -- point 14: the status page ------------------------------------------------------------


def test_status_page_in_words_and_linked_from_the_footer(db):
    page = Client().get(reverse("status"))
    assert page.status_code == 200
    text = _text(page)
    assert "All systems operational." in text
    assert "Database Operational Accounts, contracts, invoices and usage are stored." in text
    assert "Task broker Operational" in text
    assert '<a href="/healthz"><code>/healthz</code></a>' in page.content.decode()
    landing = Client().get(reverse("landing")).content.decode()
    assert '<li><a href="/status/">System status</a></li>' in landing


def test_status_page_says_what_is_down(db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"
    page = Client().get(reverse("status"))
    assert page.status_code == 503
    text = _text(page)
    assert "Some systems are down." in text
    assert (
        "Task broker Down Background work (metering polls, invoices, payments) is queued and "
        "delayed."
    ) in text


def test_a_partner_states_the_hardware_on_the_node_form_and_sees_it(partner_org, partner_client):
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    response = partner_client.post(
        reverse("capacity:node_create"),
        {
            "site": site.pk,
            "name": "rack-7",
            "gpu_model": catalog_gpu().pk,
            "gpu_count": 8,
            "cpu_cores": 96,
            "ram_gib": 1536,
            "cpu_model": " AMD EPYC 9454 ",
            "disk_gib": 15360,
            "network_gbps": 200,
            "interconnect": Interconnect.NVSWITCH,
            "driver_version": "550.54.15",
            "cuda_version": "12.4",
        },
    )
    assert response.status_code == 201
    node = site.nodes.get()
    assert (
        node.cpu_model,
        node.disk_gib,
        node.network_gbps,
        node.interconnect,
        node.driver_version,
        node.cuda_version,
    ) == ("AMD EPYC 9454", 15360, 200, "nvswitch", "550.54.15", "12.4")
    page = _text(partner_client.get(reverse("capacity:node_detail", args=[node.pk])))
    assert (
        "Hardware buyers see CPU 96 cores (AMD EPYC 9454) RAM 1536 GiB Disk 15360 GiB Network "
        "200 Gbit/s GPU interconnect NVLink with NVSwitch Driver / CUDA 550.54.15 / CUDA 12.4"
    ) in page
