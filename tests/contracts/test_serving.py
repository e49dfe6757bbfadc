"""Partners opt nodes in to serving inference products: the memory rule, tenancy, audit."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from contracts import serving
from contracts.models import InferenceProduct
from tests.factories import NodeFactory, SiteFactory, catalog_gpu
from tests.tenancy import assert_hidden_from

SLUG = "llama-3.1-70b-instruct"


@pytest.fixture
def product(db):
    product = InferenceProduct.objects.get(slug=SLUG)
    product.memory_required_mib = 150_000
    product.save(update_fields=["memory_required_mib"])
    return product


@pytest.fixture
def big_node(partner_org):
    # 2 x 80 GiB = 163,840 MiB ≥ 150,000.
    site = SiteFactory(organization=partner_org)
    return NodeFactory(site=site, name="big", gpu_model=catalog_gpu("H100 SXM 80GB"), gpu_count=2)


@pytest.fixture
def small_node(partner_org):
    # 6 x 24 GiB = 147,456 MiB < 150,000.
    site = SiteFactory(organization=partner_org)
    return NodeFactory(site=site, name="small", gpu_model=catalog_gpu("RTX 4090 24GB"), gpu_count=6)


def _served(node):
    return sorted(node.inference_products.values_list("slug", flat=True))


def test_memory_is_gpu_memory_times_count(big_node, small_node):
    assert serving.node_memory_mib(big_node) == 163_840
    assert serving.node_memory_mib(small_node) == 147_456


def test_opt_in_and_out_through_the_page_with_audit(partner_client, big_node, product):
    url = reverse("serving:node_models_update", args=[big_node.pk])
    response = partner_client.post(url, {"product": SLUG, "serving": "1"}, follow=True)
    assert response.status_code == 200
    assert _served(big_node) == [SLUG]
    assert "big now serves Llama 3.1 70B Instruct." in response.content.decode()
    # A repeat changes nothing and writes no second audit entry.
    partner_client.post(url, {"product": SLUG, "serving": "1"})
    events = AuditEvent.objects.filter(action="node.inference_opted_in")
    assert [(e.target_id, e.data) for e in events] == [
        (
            str(big_node.pk),
            {"product": SLUG, "node_memory_mib": 163_840, "memory_required_mib": 150_000},
        )
    ]
    partner_client.post(url, {"product": SLUG, "serving": "0"})
    assert _served(big_node) == []
    assert AuditEvent.objects.filter(action="node.inference_opted_out").count() == 1


def _served_rows(page) -> list[list[str]]:
    """The rows of the node page's "Inference products served" table, as text."""
    section = page.split("data-served-products", 1)[1].split("</section>", 1)[0]
    return [
        [
            " ".join(re.sub(r"<[^>]+>", " ", cell).split())
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)
        ]
        for row in re.findall(r"<tr data-product[^>]*>(.*?)</tr>", section)
    ]


def test_the_node_page_lists_the_products_it_serves(partner_client, big_node, product):
    node_page = reverse("capacity:node_detail", args=[big_node.pk])
    page = partner_client.get(node_page).content.decode()
    assert _served_rows(page) == []
    assert "This node serves no inference products" in page
    assert reverse("serving:node_models", args=[big_node.pk]) in page

    eight_b = InferenceProduct.objects.get(slug="llama-3.1-8b-instruct")
    serving.node_serving_set(node=big_node, product=product, serving=True, actor=None)
    serving.node_serving_set(node=big_node, product=eight_b, serving=True, actor=None)
    InferenceProduct.objects.filter(pk=eight_b.pk).update(is_active=False)
    page = partner_client.get(node_page).content.decode()
    assert _served_rows(page) == [
        ["Llama 3.1 70B Instruct llama-3.1-70b-instruct", "0.3500 / 0.4000 USD"],
        ["Llama 3.1 8B Instruct llama-3.1-8b-instruct no longer sold", "0.0500 / 0.0800 USD"],
    ]
    assert "requests for these models to this node while it is online" in page


def test_a_node_too_small_is_refused_in_plain_words(partner_client, small_node, product):
    page = partner_client.get(reverse("serving:node_models", args=[small_node.pk]))
    content = page.content.decode()
    refusal = (
        "Llama 3.1 70B Instruct needs 150,000 MiB of GPU memory; small has 147,456 MiB "
        "(6 x RTX 4090 24GB)."
    )
    assert refusal in content
    response = partner_client.post(
        reverse("serving:node_models_update", args=[small_node.pk]),
        {"product": SLUG, "serving": "1"},
        follow=True,
    )
    assert refusal in response.content.decode()
    assert _served(small_node) == []
    assert not AuditEvent.objects.filter(action__startswith="node.inference").exists()


def test_api_lists_opts_in_refuses_and_opts_out(partner_owner, big_node, small_node, product):
    client = APIClient()
    client.force_login(partner_owner)
    listing = client.get(reverse("api_node_inference_products", args=[small_node.pk]))
    assert listing.status_code == 200
    by_slug = {row["product"]: row for row in listing.json()}
    assert by_slug[SLUG] == {
        "product": SLUG,
        "name": "Llama 3.1 70B Instruct",
        "memory_required_mib": 150_000,
        "serving": False,
        "eligible": False,
        "refusal": "Llama 3.1 70B Instruct needs 150,000 MiB of GPU memory; small has "
        "147,456 MiB (6 x RTX 4090 24GB).",
    }
    refused = client.put(reverse("api_node_inference_product", args=[small_node.pk, SLUG]))
    assert refused.status_code == 400
    assert refused.json()["detail"][0].startswith("Llama 3.1 70B Instruct needs 150,000 MiB")
    assert _served(small_node) == []

    url = reverse("api_node_inference_product", args=[big_node.pk, SLUG])
    served = client.put(url)
    assert served.status_code == 200
    assert served.json()["serving"] is True
    assert _served(big_node) == [SLUG]
    assert client.delete(url).status_code == 204
    assert _served(big_node) == []


def test_other_tenants_get_404_and_change_nothing(other_client, other_owner, big_node, product):
    assert_hidden_from(other_client, reverse("serving:node_models", args=[big_node.pk]))
    assert_hidden_from(
        other_client,
        reverse("serving:node_models_update", args=[big_node.pk]),
        method="post",
        data={"product": SLUG, "serving": "1"},
    )
    client = APIClient()
    client.force_login(other_owner)
    url = reverse("api_node_inference_product", args=[big_node.pk, SLUG])
    assert client.put(url).status_code == 404
    assert client.get(reverse("api_node_inference_products", args=[big_node.pk])).status_code == 404
    assert _served(big_node) == []


def test_buyers_do_not_see_the_pages(buyer_client, big_node):
    assert buyer_client.get(reverse("serving:node_models", args=[big_node.pk])).status_code == 404
