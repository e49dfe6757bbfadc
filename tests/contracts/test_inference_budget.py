"""Inference caps and limits (pages and API, with bounds), spend this month, snippets."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import AuditEvent, Role
from capacity.metering.models import InferenceRequest
from contracts import on_demand
from contracts.inference_budget import inference_spend
from contracts.inference_spend import inference_month_spend
from contracts.models import Contract, LineApiKey
from tests.contracts.inference_builders import billed_request, inference_line
from tests.factories import MembershipFactory, NodeFactory
from tests.fixtures import client_for

NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
GATEWAY = "https://gateway.hashgrid.test"


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture(autouse=True)
def gateway_url(settings):
    settings.GATEWAY_URL = GATEWAY


@pytest.fixture
def line(buyer_org, buyer_owner):
    # Llama 3.1 8B: 0.05 per M input tokens, 0.08 per M output tokens.
    return inference_line(buyer=buyer_org, actor=buyer_owner)


@pytest.fixture
def link(line, buyer_owner):
    api_key, _secret = on_demand.line_api_key_create(line=line, name="chatbot", actor=buyer_owner)
    return LineApiKey.objects.select_related("api_key").get(api_key=api_key)


@pytest.fixture
def usage(line, link, partner_org, buyer_owner):
    node = NodeFactory(site__organization=partner_org)
    second, _ = on_demand.line_api_key_create(line=line, name="batch", actor=buyer_owner)
    # This month, key "chatbot": 1,500,000 in x 0.05 + 625,000 out x 0.08 = 0.075 + 0.05.
    billed_request(
        node=node,
        line=line,
        api_key_id=link.api_key_id,
        issued_at=datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
        input_tokens=1_000_000,
        output_tokens=625_000,
    )
    billed_request(
        node=node,
        line=line,
        api_key_id=link.api_key_id,
        issued_at=datetime(2026, 12, 15, 11, 59, tzinfo=UTC),
        input_tokens=500_000,
        output_tokens=0,
    )
    # Key "batch": 7 in x 0.05 + 11 out x 0.08 per M = 0.00000035 + 0.00000088.
    billed_request(
        node=node,
        line=line,
        api_key_id=second.pk,
        issued_at=datetime(2026, 12, 2, tzinfo=UTC),
        input_tokens=7,
        output_tokens=11,
    )
    # Last month: not this month's spend.
    billed_request(
        node=node,
        line=line,
        api_key_id=link.api_key_id,
        issued_at=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC),
        input_tokens=9_000_000,
        output_tokens=9_000_000,
    )
    return second


def api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_spend_is_the_gateways_figure_rounded_up_once(line, link, usage):
    spend = inference_spend(contract=line.contract, now=NOW)
    # In micros (millionths of a cent): 0.125 USD and 0.00000123 USD.
    assert spend.by_api_key_micros == {link.api_key_id: 12_500_000, usage.pk: 123}
    assert spend.contract.spent_micros == 12_500_123
    assert spend.contract.spent == Decimal("0.12500123")
    assert spend.contract.spent_minor == 13  # up, once
    assert spend.key(link).spent_minor == 13
    assert spend.key(LineApiKey(api_key_id=usage.pk)).spent_minor == 1  # 123 micros: up
    assert spend.contract.cap_minor is None
    assert spend.contract.percent is None


def test_pages_and_alerts_count_what_the_gateways_caps_count(line, link, partner_org):
    """One rule (``contracts.inference_spend``): a request the node has not reported yet
    counts with the gateway's tokens, and the larger witness counts per direction."""
    node = NodeFactory(site__organization=partner_org)

    def witnessed(day: int, *, billed: tuple[int, int], relayed: tuple[int, int]) -> None:
        request = billed_request(
            node=node,
            line=line,
            api_key_id=link.api_key_id,
            issued_at=datetime(2026, 12, day, tzinfo=UTC),
            input_tokens=billed[0],
            output_tokens=billed[1],
        )
        InferenceRequest.objects.filter(pk=request.pk).update(
            max_input_tokens=max(billed[0], relayed[0]),
            max_output_tokens=max(billed[1], relayed[1]),
            gateway_input_tokens=relayed[0],
            gateway_output_tokens=relayed[1],
        )

    # Relayed, not reported by the node yet: nothing billed.
    witnessed(3, billed=(0, 0), relayed=(2_000_000, 1_000_000))
    # The gateway relayed more output than was billed: 7 counts.
    witnessed(4, billed=(3, 5), relayed=(3, 7))
    spend = inference_spend(contract=line.contract, now=NOW)
    # 2M x 0.05 + 1M x 0.08 = 0.18 USD = 18,000,000 micros; 3 x 0.05 + 7 x 0.08 per M
    # = 0.00000071 USD = 71 micros.
    assert spend.contract.spent_micros == 18_000_071
    assert spend.key(link).spent_micros == 18_000_071
    gateway = inference_month_spend(moment=NOW)
    assert gateway.by_contract_micros == {line.contract.pk: 18_000_071}
    assert gateway.by_key_micros == {link.api_key_id: 18_000_071}
    assert spend.contract.spent_minor == gateway.contract_minor(line.contract.pk) == 19


def test_the_pages_say_what_the_spend_counts(buyer_client, line, link, usage):
    rule = "at the larger of the tokens billed and the tokens the gateway relayed to you"
    for url in (
        reverse("contracts:detail", args=[line.contract.pk]),
        reverse("contracts:inference_cap", args=[line.contract.pk]),
        reverse("contracts:line_api_key_detail", args=[line.contract.pk, link.pk]),
    ):
        page = buyer_client.get(url).content.decode()
        assert rule in page, url


def test_contract_cap_through_the_page_with_bounds(buyer_client, line, link, usage):
    contract = line.contract
    url = reverse("contracts:inference_cap", args=[contract.pk])
    refused = buyer_client.post(url, {"inference_monthly_cap_minor": "0.99"})
    assert refused.status_code == 200
    assert (
        "A monthly cap is between 1.00 and 10,000,000.00 USD; leave it empty for no cap."
        in refused.content.decode()
    )
    contract.refresh_from_db()
    assert contract.inference_monthly_cap_minor is None
    assert not AuditEvent.objects.filter(action="contract.inference_cap_set").exists()

    saved = buyer_client.post(url, {"inference_monthly_cap_minor": "0.15"})
    assert saved.status_code == 200  # 0.15 is below the minimum too
    saved = buyer_client.post(url, {"inference_monthly_cap_minor": "1.25"}, follow=True)
    contract.refresh_from_db()
    assert contract.inference_monthly_cap_minor == 125
    page = saved.content.decode()
    assert "Monthly inference cap set to 1.25 USD." in page
    # 0.12500123 of 1.25 = 10.0000984 % → 10 %.
    assert "0.13 USD of 1.25 USD (10 %)" in page
    assert list(
        AuditEvent.objects.filter(action="contract.inference_cap_set").values_list(
            "data", flat=True
        )
    ) == [{"before_minor": None, "after_minor": 125}]

    cleared = buyer_client.post(url, {"inference_monthly_cap_minor": ""}, follow=True)
    assert "No monthly inference cap." in cleared.content.decode()
    contract.refresh_from_db()
    assert contract.inference_monthly_cap_minor is None


def test_contract_cap_through_the_api(buyer_owner, line, usage):
    client = api(buyer_owner)
    url = reverse("api_contract_inference_budget", args=[line.contract.pk])
    refused = client.patch(url, {"inference_monthly_cap_minor": 99}, format="json")
    assert refused.status_code == 400
    assert refused.json() == {
        "inference_monthly_cap_minor": [
            "A monthly cap is between 1.00 and 10,000,000.00 USD; leave it empty for no cap."
        ]
    }
    assert Contract.objects.get(pk=line.contract.pk).inference_monthly_cap_minor is None
    saved = client.patch(url, {"inference_monthly_cap_minor": 100}, format="json")
    assert saved.status_code == 200
    assert saved.json() == {
        "currency": "USD",
        "spent_minor": 13,
        "spent": "0.13",
        "cap_minor": 100,
        "cap": "1.00",
        "percent": 12,
    }
    assert client.get(url).json()["cap_minor"] == 100


def test_key_limits_through_the_page_with_bounds(buyer_client, line, link, usage):
    url = reverse("contracts:line_api_key_detail", args=[line.contract.pk, link.pk])
    refused = buyer_client.post(
        url, {"monthly_cap_minor": "", "requests_per_minute": "0", "tokens_per_minute": "999"}
    )
    content = refused.content.decode()
    assert (
        "Between 1 and 100,000 requests per minute; leave it empty for the platform&#x27;s default."
        in content
    )
    assert (
        "Between 1,000 and 100,000,000 tokens per minute; leave it empty for the platform&#x27;s default."
        in content
    )
    link.refresh_from_db()
    assert (link.monthly_cap_minor, link.requests_per_minute, link.tokens_per_minute) == (
        None,
        None,
        None,
    )
    saved = buyer_client.post(
        url,
        {"monthly_cap_minor": "2.50", "requests_per_minute": "60", "tokens_per_minute": "50000"},
        follow=True,
    )
    link.refresh_from_db()
    assert (link.monthly_cap_minor, link.requests_per_minute, link.tokens_per_minute) == (
        250,
        60,
        50_000,
    )
    page = saved.content.decode()
    assert "Limits of key “chatbot” saved." in page
    # 0.125 of 2.50 = 5 %.
    assert "0.13 USD of 2.50 USD (5 %)" in page
    assert "60 requests and 50000 tokens per minute" in page


def test_key_limits_through_the_api(buyer_owner, line, link, usage):
    client = api(buyer_owner)
    url = reverse("api_contract_key", args=[line.contract.pk, link.api_key_id])
    refused = client.patch(url, {"tokens_per_minute": 5}, format="json")
    assert refused.status_code == 400
    assert refused.json() == {
        "tokens_per_minute": [
            "Between 1,000 and 100,000,000 tokens per minute; leave it empty for the platform's default."
        ]
    }
    saved = client.patch(url, {"monthly_cap_minor": 10, "requests_per_minute": 5}, format="json")
    assert saved.status_code == 400  # 0.10 is below the 1.00 minimum
    saved = client.patch(url, {"monthly_cap_minor": 500, "requests_per_minute": 5}, format="json")
    assert saved.status_code == 200
    assert saved.json() == {
        "api_key": link.api_key_id,
        "name": "chatbot",
        "prefix": link.api_key.prefix,
        "is_active": True,
        "line": line.pk,
        "inference_product": "llama-3.1-8b-instruct",
        "base_url": f"{GATEWAY}/v1",
        "monthly_cap_minor": 500,
        "requests_per_minute": 5,
        "tokens_per_minute": None,
        "spend": {
            "currency": "USD",
            "spent_minor": 13,
            "spent": "0.13",
            "cap_minor": 500,
            "cap": "5.00",
            "percent": 2,
        },
    }
    listing = client.get(reverse("api_contract_keys", args=[line.contract.pk])).json()
    assert [(row["name"], row["spend"]["spent_minor"]) for row in listing] == [
        ("chatbot", 13),
        ("batch", 1),  # 123 micros, rounded up
    ]


def test_viewers_read_but_cannot_set_limits(buyer_org, line, link):
    viewer = MembershipFactory(organization=buyer_org, role=Role.VIEWER).user
    client = client_for(viewer)
    url = reverse("contracts:line_api_key_detail", args=[line.contract.pk, link.pk])
    assert client.get(url).status_code == 200
    assert client.post(url, {"requests_per_minute": "5"}).status_code == 403
    assert (
        client.post(reverse("contracts:inference_cap", args=[line.contract.pk])).status_code == 403
    )
    link.refresh_from_db()
    assert link.requests_per_minute is None


def test_other_tenants_get_404(other_client, other_owner, line, link):
    for url in (
        reverse("contracts:line_api_key_detail", args=[line.contract.pk, link.pk]),
        reverse("contracts:inference_cap", args=[line.contract.pk]),
    ):
        assert other_client.get(url).status_code == 404
    client = api(other_owner)
    assert (
        client.patch(
            reverse("api_contract_key", args=[line.contract.pk, link.api_key_id]),
            {"requests_per_minute": 5},
            format="json",
        ).status_code
        == 404
    )
    assert (
        client.get(reverse("api_contract_inference_budget", args=[line.contract.pk])).status_code
        == 404
    )


CURL = (
    f"curl -N {GATEWAY}/v1/chat/completions \\\n"
    '  -H "Authorization: Bearer $HASHGRID_API_KEY" \\\n'
    '  -H "Content-Type: application/json" \\\n'
    """  -d '{"model": "llama-3.1-8b-instruct", "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello in one sentence."}]}'"""
)


def test_snippets_render_with_the_base_url(buyer_client, line, link):
    from django.utils.html import escape

    page = buyer_client.get(
        reverse("contracts:line_api_key_detail", args=[line.contract.pk, link.pk])
    ).content.decode()
    assert f"<code data-base-url>{GATEWAY}/v1</code>" in page
    assert escape(CURL) in page
    assert (
        escape(f'client = OpenAI(base_url="{GATEWAY}/v1", api_key=os.environ["HASHGRID_API_KEY"])')
        in page
    )
    detail = buyer_client.get(reverse("contracts:detail", args=[line.contract.pk])).content.decode()
    assert escape(CURL) in detail
    assert "chatbot" in detail


def test_the_new_key_page_puts_the_key_in_the_snippets(buyer_client, line):
    from django.utils.html import escape

    response = buyer_client.post(
        reverse("contracts:line_api_key", args=[line.contract.pk, line.pk]), {"name": "sdk"}
    )
    secret = response.context["secret"]
    page = response.content.decode()
    assert escape(f'-H "Authorization: Bearer {secret}"') in page
    assert escape(f'client = OpenAI(base_url="{GATEWAY}/v1", api_key="{secret}")') in page


def test_the_keys_page_says_what_each_key_serves(buyer_client, line, link):
    page = buyer_client.get(reverse("api_keys")).content.decode()
    reference = line.contract.reference
    assert (
        f'<td data-label="Serves" data-serves>On-demand inference: Llama 3.1 8B Instruct'
        f" on {reference}</td>"
    ) in page


def test_inference_docs_page_and_schema_link(client):
    page = client.get(reverse("inference_api_docs")).content.decode()
    assert "/v1/chat/completions" in page
    assert "insufficient_quota" in page
    assert f"{GATEWAY}/v1" in page
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/json")
    assert "[inference API reference](/docs/inference-api/)" in schema.content.decode()
