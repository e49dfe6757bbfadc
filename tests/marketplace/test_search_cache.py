"""The search cache is exact at commit: the inventory version moves with every committed
change search shows (and only then), and a cached page never outlives it.

Transactional tests: the version is written by deferred triggers at commit, and the
cache is used only outside a transaction, as a search request runs in production."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from capacity.models import NodeStatus
from contracts.checkout import reservation_checkout
from marketplace import search_cache
from marketplace.models import InventoryVersion
from tests.factories import OfferFactory, SiteFactory, catalog_gpu, gpu_pool

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


@pytest.fixture
def pool(partner_org):
    site = SiteFactory(organization=partner_org, name="Permian")
    model = catalog_gpu()
    devices = gpu_pool(site=site, gpus=8, gpu_model=model)
    offer = OfferFactory(
        site=site,
        gpu_model=model,
        gpu_count=8,
        available_from=timezone.now() - timedelta(days=1),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )
    return offer, devices


def version() -> int:
    return InventoryVersion.objects.get().version


def free_cell(response) -> str:
    """The "Free GPUs" cell of the only result row, as text."""
    html = response.content.decode()
    row = html[html.index("data-offer=") :]
    cell = row.split('data-label="Free GPUs">')[1].split("</td>")[0]
    return " ".join(re.sub(r"<[^>]+>", " ", cell).split())


def test_every_committed_inventory_change_moves_the_version_once(pool):
    offer, devices = pool
    node = devices[0].node
    before = version()

    # Metering's routine node update (poll time, utilization): search does not read it.
    node.last_poll_at = timezone.now()
    node.gpu_utilization_pct = 40
    node.save(update_fields=["last_poll_at", "gpu_utilization_pct"])
    assert version() == before

    # Health changes (metering): search counts the node's GPUs the same either way.
    node.status = NodeStatus.UNREACHABLE
    node.save(update_fields=["status"])
    node.status = NodeStatus.DEGRADED
    node.save(update_fields=["status"])
    assert version() == before

    node.status = NodeStatus.RETIRED
    node.save(update_fields=["status"])
    after_status = version()
    assert after_status != before

    # Several writes in one transaction: one new version at commit.
    with transaction.atomic():
        offer.reserved_price_1m_per_gpu_hour = Decimal("1.9000")
        offer.save(update_fields=["reserved_price_1m_per_gpu_hour"])
        offer.site.name = "Permian West"
        offer.site.save(update_fields=["name"])
        # Inside the transaction nothing has moved yet, and the cache is not used.
        assert version() == after_status
        assert search_cache.inventory_version() is None
    after_commit = version()
    assert after_commit not in (before, after_status)

    # A rolled-back change leaves the version alone.
    with pytest.raises(RuntimeError), transaction.atomic():
        offer.site.name = "Never"
        offer.site.save(update_fields=["name"])
        raise RuntimeError("roll back")
    assert version() == after_commit


def test_versions_are_never_reused_after_the_table_is_emptied(pool):
    before = version()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE contracts_allocation")
    truncated = version()
    InventoryVersion.objects.all().delete()
    offer, _ = pool
    offer.save(update_fields=["gpu_count"])
    assert len({before, truncated, version()}) == 3
    assert version() > before


def test_a_cached_page_is_served_until_a_reservation_commits(
    pool, buyer_org, buyer_client, django_assert_num_queries
):
    offer, _ = pool
    url = reverse("marketplace:search")
    first = buyer_client.get(url)
    assert free_cell(first) == "8 of 8"

    # Served from the cache: session, user, memberships, the inventory version.
    with django_assert_num_queries(4):
        again = buyer_client.get(url)
    assert again.content.count(b"data-offer=") == 1
    assert free_cell(again) == "8 of 8"

    reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=3,
        starts_at=timezone.now() + timedelta(minutes=2),
        term_months=1,
        actor=None,
    )
    assert free_cell(buyer_client.get(url)) == "5 of 8"


def test_a_checkout_that_rolls_back_changes_nothing_shown(pool, buyer_org, buyer_client):
    offer, _ = pool
    url = reverse("marketplace:search")
    assert free_cell(buyer_client.get(url)) == "8 of 8"
    before = version()
    with pytest.raises(RuntimeError), transaction.atomic():
        reservation_checkout(
            buyer=buyer_org,
            offer=offer,
            gpu_count=8,
            starts_at=timezone.now() + timedelta(minutes=2),
            term_months=1,
            actor=None,
        )
        raise RuntimeError("payment page closed")
    assert version() == before
    assert free_cell(buyer_client.get(url)) == "8 of 8"


def test_the_cache_is_used_only_outside_transactions(pool):
    assert search_cache.inventory_version() == version()
    computed: list[int] = []

    def compute() -> int:
        computed.append(1)
        return 42

    assert search_cache.cached("test", ("a",), compute) == 42
    assert search_cache.cached("test", ("a",), compute) == 42
    assert len(computed) == 1
    with transaction.atomic():
        assert search_cache.cached("test", ("a",), compute) == 42
    assert len(computed) == 2


def test_query_strings_the_form_never_sends_are_computed_not_cached(
    pool, buyer_client, django_assert_num_queries
):
    url = reverse("marketplace:search")
    assert free_cell(buyer_client.get(url, {"utm": "x"})) == "8 of 8"
    # The whole page again, not the 4 queries of a cached one: session, user, memberships,
    # the version (free GPUs per window are still cached), the form's model and region
    # choices (models and regions listed), the pools without a fresh stored availability
    # and the five reads that compute theirs (no beat here: nodes, GPUs, bitmaps,
    # maintenance, polls), the count and the page.
    with django_assert_num_queries(14):
        again = buyer_client.get(url, {"utm": "x"})
    assert free_cell(again) == "8 of 8"


def test_a_failing_search_cache_is_bypassed(pool, buyer_client, settings):
    settings.CACHES = {
        **settings.CACHES,
        # Nothing listens on port 9: every cache call fails.
        "search": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
        },
    }
    response = buyer_client.get(reverse("marketplace:search"))
    assert response.status_code == 200
    assert free_cell(response) == "8 of 8"
