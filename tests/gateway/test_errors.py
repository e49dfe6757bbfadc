"""Every refusal over raw HTTP: OpenAI's error body, the status, the headers."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import Role
from capacity.metering.models import InferenceRequest
from contracts.models import ContractState
from tests.factories import ApiKeyFactory, MembershipFactory
from tests.gateway.conftest import PRODUCT, logged_rows

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHAT = {"model": PRODUCT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(
    gateway, key: str | None, body: object = CHAT, headers: dict[str, str] | None = None
) -> httpx.Response:
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", content=content, headers=headers, timeout=30
    )


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert len(response.headers["x-request-id"]) == 32
    return body["error"]


def test_unknown_missing_and_revoked_keys_are_401(world, start_gateway):
    world.line_key.api_key.__class__.objects.filter(pk=world.key_id).update(
        revoked_at=timezone.now()
    )
    gateway = start_gateway()
    for key in (None, "hg_not-a-key", world.key):
        response = post(gateway, key)
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"
        assert error_of(response)["type"] == "invalid_request_error"


def test_key_without_line_or_spending_rights_and_suspended_contract_are_403(world, start_gateway):
    buyer = world.contract.buyer
    unlinked = ApiKeyFactory(organization=buyer, created_by=world.line_key.api_key.created_by)
    viewer = MembershipFactory(organization=buyer, role=Role.VIEWER).user
    viewer_key = ApiKeyFactory(organization=buyer, created_by=viewer)
    gateway = start_gateway()
    for key in (unlinked.key, viewer_key.key):
        response = post(gateway, key)
        assert response.status_code == 403
        assert error_of(response)["code"] == "permission_denied"
    assert post(gateway, world.key).status_code == 200
    world.contract.__class__.objects.filter(pk=world.contract.pk).update(
        state=ContractState.SUSPENDED
    )
    response = _wait_for_status(gateway, world.key, 403)
    assert error_of(response) == {
        "message": "The contract of this API key is not active.",
        "type": "permission_error",
        "param": None,
        "code": "permission_denied",
    }


def _wait_for_status(gateway, key, status: int, timeout_s: float = 5.0) -> httpx.Response:
    """The first answer with ``status``, which must come within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = post(gateway, key)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_unknown_model_is_404(gateway, world):
    response = post(gateway, world.key, {**CHAT, "model": "llama-3.1-70b-instruct"})
    assert response.status_code == 404
    assert error_of(response) == {
        "message": "The model 'llama-3.1-70b-instruct' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": PRODUCT}, "messages"),
        ({"model": PRODUCT, "messages": ["hi"]}, "messages[0]"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_tokens": 40_000}, "max_tokens"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "n": 2}, "n"),
    ],
)
def test_invalid_bodies_are_400_with_param(gateway, world, body, param):
    response = post(gateway, world.key, body)
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request_error",
        param,
    )


def test_body_over_one_mebibyte_is_413(gateway, world):
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    response = post(gateway, world.key, huge)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_requests_per_minute_are_429_with_retry_after(world, start_gateway):
    world.line_key.requests_per_minute = 2
    world.line_key.save()
    gateway = start_gateway()
    statuses = [post(gateway, world.key).status_code for _ in range(2)]
    refused = post(gateway, world.key)
    # Two could straddle a minute boundary; then the third passes and a fourth is needed.
    if refused.status_code == 200:
        refused = post(gateway, world.key)
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_tokens_per_minute_count_the_worst_case(world, start_gateway):
    # Worst case of CHAT: ("user" + "hi" = 6 bytes + 16 + 64) in + 2 out = 88 tokens.
    world.line_key.tokens_per_minute = 87
    world.line_key.save()
    gateway = start_gateway()
    refused = post(gateway, world.key)
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in error_of(refused)["message"]


def test_a_spend_cap_too_small_for_the_worst_case_is_429_insufficient_quota(world, start_gateway):
    world.line_key.monthly_cap_minor = 0
    world.line_key.save()
    gateway = start_gateway()
    refused = post(gateway, world.key)
    assert refused.status_code == 429
    assert error_of(refused) == {
        "message": "This request could exceed the API key's monthly spend cap.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert int(refused.headers["retry-after"]) >= 1
    assert not InferenceRequest.objects.exists()


def test_no_node_serving_the_product_is_503(world, start_gateway):
    world.product.nodes.clear()
    gateway = start_gateway()
    response = post(gateway, world.key)
    assert response.status_code == 503
    assert error_of(response)["code"] == "no_healthy_node"


def test_every_node_stalling_is_504_after_trying_each(world, agents, start_gateway):
    gateway = start_gateway(HASHGRID_GATEWAY_READ_TIMEOUT_MS="700")
    for agent in agents:
        agent.inject("engine_stall", delay_ms=3000)
    response = post(gateway, world.key)
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"
    rows = logged_rows(count=3)
    assert sorted(row.node_id for row in rows) == sorted(node.pk for node in world.nodes)
    assert {(row.gateway_status, row.gateway_output_tokens) for row in rows} == {(504, 0)}


def test_cors_for_the_playground(gateway, world):
    origin = settings.SITE_URL.rstrip("/")
    preflight = httpx.options(
        f"{gateway.url}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = post(gateway, world.key, headers={"Origin": origin})
    assert answer.headers["access-control-allow-origin"] == origin
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    stranger = post(gateway, world.key, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers


def test_an_unreachable_store_refuses_in_openais_shape_and_forwards_nothing(world, start_gateway):
    gateway = start_gateway(HASHGRID_GATEWAY_STORE_URL="redis://127.0.0.1:1/0")
    response = post(gateway, world.key)
    assert response.status_code == 500
    assert error_of(response) == {
        "message": "The gateway failed to handle this request; retry shortly.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    time.sleep(0.7)  # a log batch would have landed
    assert not InferenceRequest.objects.exists()
