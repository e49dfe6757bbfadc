"""Inference spend alerts at 80 % and 100 % of monthly caps: each once a month."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.core import mail

from accounts.models import Role
from capacity.metering.models import InferenceRequest
from contracts.models import LineApiKey, SpendAlert
from contracts.spend_alerts import send_spend_alerts
from tests.contracts.test_inference_spend import inference_line
from tests.factories import ApiKeyFactory, ContractFactory, MembershipFactory, NodeFactory

pytestmark = pytest.mark.django_db(transaction=True)  # emails go on commit

MOMENT = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
# 26,667 output tokens at 30.0000 per million = 0.80001 major: 81 cents (rounded up).
TOKENS_FOR_81_CENTS = 26_667


@pytest.fixture
def setup():
    contract = ContractFactory(inference_monthly_cap_minor=100)
    buyer = contract.buyer
    owner = MembershipFactory(organization=buyer, role=Role.OWNER, user__email="owner@acme.test")
    MembershipFactory(organization=buyer, role=Role.FINANCE, user__email="finance@acme.test")
    MembershipFactory(organization=buyer, role=Role.MEMBER, user__email="member@acme.test")
    line = inference_line(contract, input_price="10.0000", output_price="30.0000")
    key = ApiKeyFactory(organization=buyer, created_by=owner.user, name="prod", prefix="hg_abcdefg")
    link = LineApiKey.objects.create(line=line, api_key=key, monthly_cap_minor=1000)
    return contract, line, link, NodeFactory()


def spend(line, link, node, output_tokens: int) -> None:
    InferenceRequest.objects.create(
        request_id=uuid.uuid4(),
        node=node,
        api_key_id=link.api_key_id,
        line_id=line.pk,
        product_slug="llama-3.1-8b-instruct",
        max_input_tokens=100,
        max_output_tokens=output_tokens,
        issued_at=MOMENT,
        gateway_input_tokens=0,
        gateway_output_tokens=output_tokens,
    )


def test_80_then_100_percent_each_once(setup):
    contract, line, link, node = setup
    spend(line, link, node, TOKENS_FOR_81_CENTS)
    assert send_spend_alerts(now=MOMENT) == 1
    assert send_spend_alerts(now=MOMENT) == 0  # already told
    (first,) = mail.outbox
    assert first.to == ["finance@acme.test", "owner@acme.test"]
    assert first.subject.endswith("Inference spend at 80 % of the cap for your contract")
    assert (
        f"Inference spend this month for your contract on contract {contract.reference} is "
        "0.81 USD of its 1.00 USD monthly cap (80 %)."
    ) in first.body
    # Two requests: 160,002,000 micros, 161 cents (rounded up once, over the month).
    spend(line, link, node, TOKENS_FOR_81_CENTS)
    assert send_spend_alerts(now=MOMENT) == 1
    assert mail.outbox[1].subject.endswith("Inference spend cap reached for your contract")
    assert "1.61 USD of its 1.00 USD monthly cap (100 %)" in mail.outbox[1].body
    assert list(
        SpendAlert.objects.order_by("threshold_percent").values_list(
            "api_key_id", "threshold_percent", "spend_minor", "cap_minor"
        )
    ) == [(None, 80, 81, 100), (None, 100, 161, 100)]


def test_a_jump_past_both_thresholds_is_one_email_and_two_rows(setup):
    contract, line, link, node = setup
    contract.inference_monthly_cap_minor = None
    contract.save()
    link.monthly_cap_minor = 150
    link.save()
    spend(line, link, node, 2 * TOKENS_FOR_81_CENTS)
    assert send_spend_alerts(now=MOMENT) == 1
    (email,) = mail.outbox
    assert email.subject.endswith("Inference spend cap reached for API key prod (hg_abcdefg…)")
    assert sorted(SpendAlert.objects.values_list("threshold_percent", flat=True)) == [80, 100]
    # Next month starts from nothing.
    assert send_spend_alerts(now=datetime(2027, 1, 2, tzinfo=UTC)) == 0
