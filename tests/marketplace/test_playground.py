"""The inference playground page: what it lists, the key it creates once, its CSP."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import ApiKey, Role
from contracts.models import LineApiKey
from tests.contracts.inference_builders import inference_line
from tests.factories import MembershipFactory
from tests.fixtures import client_for
from tests.http_headers import NO_STORE, cache_headers

GATEWAY = "https://gateway.hashgrid.test:8443"


@pytest.fixture(autouse=True)
def setup(settings):
    settings.GATEWAY_URL = GATEWAY
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    settings.CSP_ENABLED = True


@pytest.fixture
def line(buyer_org, buyer_owner):
    return inference_line(buyer=buyer_org, actor=buyer_owner)


def test_the_page_lists_the_buyers_inference_lines(buyer_client, line):
    response = buyer_client.get(reverse("marketplace:playground"))
    assert response.status_code == 200
    page = response.content.decode()
    assert f'data-base-url="{GATEWAY}/v1"' in page
    assert (
        f'<option value="{line.pk}" data-model="llama-3.1-8b-instruct" data-input-price="0.0500" '
        'data-output-price="0.0800" data-currency="USD">' in page
    )
    assert '<script src="/static/js/playground.js" defer></script>' in page
    assert "data-create-key" in page
    # The browser may stream from the gateway: its origin is in connect-src.
    csp = response.headers["Content-Security-Policy"]
    connect = next(d for d in csp.split("; ") if d.startswith("connect-src"))
    assert GATEWAY in connect.split()
    assert "Playground" in page  # the buyer navigation links it


def test_without_an_inference_line_it_says_how_to_get_one(buyer_client):
    page = buyer_client.get(reverse("marketplace:playground")).content.decode()
    assert "No inference product on your contract yet" in page


def test_a_playground_key_is_answered_once_and_never_cached(buyer_client, line):
    response = buyer_client.post(reverse("marketplace:playground_key"), {"line": line.pk})
    assert response.status_code == 201
    body = response.json()
    link = LineApiKey.objects.select_related("api_key").get(line=line)
    assert body["prefix"] == link.api_key.prefix
    assert body["api_key"].startswith(link.api_key.prefix)
    assert link.api_key.name.startswith("Playground ")
    assert cache_headers(response) == NO_STORE


def test_members_cannot_create_keys_and_other_tenants_get_404(buyer_org, line, other_client):
    member = MembershipFactory(organization=buyer_org, role=Role.MEMBER).user
    client = client_for(member)
    assert "data-create-key" not in client.get(reverse("marketplace:playground")).content.decode()
    assert client.post(reverse("marketplace:playground_key"), {"line": line.pk}).status_code == 403
    response = other_client.post(reverse("marketplace:playground_key"), {"line": line.pk})
    assert response.status_code == 404
    assert ApiKey.objects.count() == 0


def test_partners_do_not_see_it(partner_client):
    assert partner_client.get(reverse("marketplace:playground")).status_code == 404
