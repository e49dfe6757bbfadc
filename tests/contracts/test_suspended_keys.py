"""A suspended contract's API keys stop working until the contract is resumed."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from contracts import lifecycle, on_demand
from contracts.models import ContractState, InferenceProduct


@pytest.fixture
def keyed_line(buyer_org, buyer_owner, settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    line = on_demand.on_demand_enable(
        buyer=buyer_org,
        actor=buyer_owner,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
    )
    _api_key, secret = on_demand.line_api_key_create(line=line, name="gateway", actor=buyer_owner)
    return line, secret


def _me(secret: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.get("/api/v1/me")


def test_suspension_refuses_the_contracts_keys_and_resuming_restores_them(keyed_line, buyer_owner):
    line, secret = keyed_line
    contract = line.contract
    assert contract.state == ContractState.ACTIVE
    assert _me(secret).status_code == 200

    lifecycle.contract_suspend(
        contract=contract, actor=None, reason="invoice HG-2026-000001 unpaid"
    )
    refused = _me(secret)
    assert refused.status_code == 401
    assert refused.json() == {
        "detail": "This API key's contract is suspended until its overdue invoice is paid."
    }

    contract.refresh_from_db()
    lifecycle.contract_resume(contract=contract, actor=None)
    assert _me(secret).status_code == 200
