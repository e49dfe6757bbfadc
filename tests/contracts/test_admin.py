"""Finance can suspend and resume contracts from the admin, through the lifecycle service."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditEvent
from contracts import on_demand
from contracts.models import ContractState, InferenceProduct


@pytest.fixture
def contract(buyer_org, buyer_owner):
    line = on_demand.on_demand_enable(
        buyer=buyer_org,
        actor=buyer_owner,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
    )
    return line.contract


@pytest.mark.parametrize(
    "model", ["contract", "contractline", "allocation", "slapolicy", "inferenceproduct"]
)
def test_changelists_render(staff_client, contract, model):
    assert staff_client.get(reverse(f"admin:contracts_{model}_changelist")).status_code == 200


def test_suspend_then_resume_actions_go_through_the_lifecycle(staff_client, contract):
    url = reverse("admin:contracts_contract_changelist")

    staff_client.post(url, {"action": "suspend_selected", "_selected_action": [contract.pk]})
    contract.refresh_from_db()
    assert contract.state == ContractState.SUSPENDED
    assert contract.suspension_reason == "Suspended by finance"

    staff_client.post(url, {"action": "resume_selected", "_selected_action": [contract.pk]})
    contract.refresh_from_db()
    assert contract.state == ContractState.ACTIVE
    actions = list(
        AuditEvent.objects.filter(target_id=str(contract.pk), action__startswith="contract.")
        .order_by("created_at", "pk")
        .values_list("action", flat=True)
    )
    assert actions[-2:] == ["contract.suspended", "contract.resumed"]


def test_resuming_an_active_contract_is_refused_and_changes_nothing(staff_client, contract):
    response = staff_client.post(
        reverse("admin:contracts_contract_changelist"),
        {"action": "resume_selected", "_selected_action": [contract.pk]},
        follow=True,
    )
    contract.refresh_from_db()
    assert contract.state == ContractState.ACTIVE
    assert any(contract.reference in str(message) for message in response.context["messages"])
