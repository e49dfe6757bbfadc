"""A buyer looks up an inference request by its id and exports a month of them: both
witnesses' tokens, the billed tokens and the exact cost; another organization's request
does not exist for them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from capacity.metering.models import InferenceRequest
from contracts import on_demand
from contracts.models import InferenceProduct
from tests.capacity.metering.receipt_builders import gateway_logged, meter_requests, receipt_for
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db
AT = datetime(2026, 10, 20, 10, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def payment_method(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True


def _keyed_line(organization, actor, *, input_price: str, output_price: str):
    line = on_demand.on_demand_enable(
        buyer=organization,
        actor=actor,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
    )
    type(line).objects.filter(pk=line.pk).update(
        input_price_per_million_tokens=Decimal(input_price),
        output_price_per_million_tokens=Decimal(output_price),
    )
    api_key, secret = on_demand.line_api_key_create(line=line, name="prod", actor=actor)
    return line, api_key, secret


@pytest.fixture
def requests_made(buyer_org, buyer_owner, other_org, devices):
    """Two requests of the buyer (one metered: gateway 130/50, agent 120/80; one only
    logged by the gateway) and one of another buyer."""
    line, api_key, secret = _keyed_line(
        buyer_org, buyer_owner, input_price="0.2000", output_price="0.6000"
    )
    (metered,) = meter_requests(
        gpu=devices[0],
        line_id=line.pk,
        key_id=api_key.pk,
        product="llama-3.1-8b-instruct",
        at=AT,
        input_tokens=120,
        output_tokens=80,
        gateway=(130, 50),
    )
    waiting = gateway_logged(
        receipt_for(
            devices[1].node,
            rid="c" * 32,
            line_id=line.pk,
            key_id=api_key.pk,
            product="llama-3.1-8b-instruct",
            issued_at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC),
        ),
        input_tokens=12,
        output_tokens=0,
        status=503,
    )
    other_owner = MembershipFactory(organization=other_org, role="owner").user
    other_line, other_key, _ = _keyed_line(
        other_org, other_owner, input_price="1.0000", output_price="1.0000"
    )
    (foreign,) = meter_requests(
        gpu=devices[2],
        line_id=other_line.pk,
        key_id=other_key.pk,
        product="llama-3.1-8b-instruct",
        at=AT,
        input_tokens=1,
        output_tokens=1,
    )
    return {
        "metered": metered,
        "waiting": waiting,
        "foreign": foreign,
        "key": api_key,
        "secret": secret,
    }


def _client(*, secret: str | None = None, user=None) -> APIClient:
    client = APIClient()
    if secret:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    else:
        client.force_login(user)
    return client


def test_a_request_by_its_id_with_both_witnesses_and_its_exact_cost(requests_made):
    metered: InferenceRequest = requests_made["metered"]
    key = requests_made["key"]
    client = _client(secret=requests_made["secret"])

    body = client.get(reverse("api_inference_request", args=[metered.request_id.hex])).json()

    assert body == {
        "request_id": metered.request_id.hex,
        "key": {"id": key.pk, "name": "prod", "prefix": key.prefix},
        "product": "llama-3.1-8b-instruct",
        "state": "metered",
        "gateway_status": 200,
        "gateway_input_tokens": 130,
        "gateway_output_tokens": 50,
        "billed_input_tokens": 120,
        "billed_output_tokens": 50,
        # 120 x $0.20 / 1 M + 50 x $0.60 / 1 M
        "cost": "0.000054",
        "currency": "USD",
        "issued_at": "2026-10-20T10:15:00Z",
        "served_at": "2026-10-20T10:15:02Z",
        "time_to_first_token_ms": None,
        "duration_ms": None,
    }
    # The id with dashes is the same request.
    assert (
        client.get(reverse("api_inference_request", args=[str(metered.request_id)])).json() == body
    )


def test_a_request_only_the_gateway_logged_is_billed_nothing_yet(requests_made, buyer_owner):
    waiting = requests_made["waiting"]
    body = (
        _client(user=buyer_owner)
        .get(reverse("api_inference_request", args=[waiting.request_id.hex]))
        .json()
    )
    assert (body["state"], body["gateway_status"], body["billed_input_tokens"], body["cost"]) == (
        "awaiting_node",
        503,
        0,
        "0",
    )


def test_another_organizations_request_is_not_found(requests_made, buyer_owner):
    client = _client(secret=requests_made["secret"])
    for request_id in (requests_made["foreign"].request_id.hex, "0" * 32, "not-an-id"):
        response = client.get(reverse("api_inference_request", args=[request_id]))
        assert response.status_code == 404, request_id


def test_a_month_of_requests_as_csv(requests_made, buyer_owner):
    metered, waiting = requests_made["metered"], requests_made["waiting"]
    client = _client(user=buyer_owner)

    response = client.get(reverse("api_inference_requests_export"), {"month": "2026-10"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="inference-requests-2026-10.csv"'
    )
    table = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    prefix = requests_made["key"].prefix
    assert table == [
        [
            "request_id",
            "key_name",
            "key_prefix",
            "product",
            "state",
            "gateway_status",
            "gateway_input_tokens",
            "gateway_output_tokens",
            "billed_input_tokens",
            "billed_output_tokens",
            "cost",
            "currency",
            "issued_at",
            "served_at",
            "time_to_first_token_ms",
            "duration_ms",
        ],
        [
            metered.request_id.hex, "prod", prefix, "llama-3.1-8b-instruct", "metered",
            "200", "130", "50", "120", "50", "0.000054", "USD",
            "2026-10-20T10:15:00Z", "2026-10-20T10:15:02Z", "", "",
        ],
        [
            waiting.request_id.hex, "prod", prefix, "llama-3.1-8b-instruct", "awaiting_node",
            "503", "12", "0", "0", "0", "0", "USD",
            "2026-10-31T23:59:00Z", "", "", "",
        ],
    ]  # fmt: skip
    november = client.get(reverse("api_inference_requests_export"), {"month": "2026-11"})
    assert len(list(csv.reader(io.StringIO(b"".join(november.streaming_content).decode())))) == 1
    refused = client.get(reverse("api_inference_requests_export"), {"month": "2026-13"})
    assert refused.status_code == 400


def test_the_usage_page_links_the_export(buyer_client):
    page = buyer_client.get(reverse("contracts:usage"))
    assert page.status_code == 200
    html = page.content.decode()
    assert reverse("api_inference_requests_export") + "?month=" in html
    assert "data-inference-requests" in html
