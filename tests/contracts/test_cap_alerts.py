"""Cap alerts: the buyer's owners, admins and finance get one email at 80 % and one at
100 % of each cap per month, whatever the number of runs."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import time_machine

from accounts.models import Role
from contracts import on_demand
from contracts.models import InferenceCapAlert, LineApiKey
from contracts.tasks import inference_cap_alerts
from tests.contracts.inference_builders import billed_request, inference_line
from tests.factories import MembershipFactory, NodeFactory, UserFactory

NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def people(buyer_org, buyer_owner):
    finance = UserFactory(email="finance@acme.test")
    MembershipFactory(organization=buyer_org, user=finance, role=Role.FINANCE)
    MembershipFactory(
        organization=buyer_org, user=UserFactory(email="dev@acme.test"), role=Role.MEMBER
    )
    buyer_owner.email = "owner@acme.test"
    buyer_owner.save(update_fields=["email"])
    return ["finance@acme.test", "owner@acme.test"]


@pytest.fixture
def line(buyer_org, buyer_owner):
    line = inference_line(buyer=buyer_org, actor=buyer_owner)  # 0.05 / 0.08 per M tokens
    line.contract.inference_monthly_cap_minor = 1000  # 10.00 USD
    line.contract.save(update_fields=["inference_monthly_cap_minor"])
    return line


@pytest.fixture
def link(line, buyer_owner):
    api_key, _ = on_demand.line_api_key_create(line=line, name="chatbot", actor=buyer_owner)
    link = LineApiKey.objects.get(api_key=api_key)
    link.monthly_cap_minor = 500  # 5.00 USD
    link.save(update_fields=["monthly_cap_minor"])
    return link


@pytest.fixture
def node(partner_org):
    return NodeFactory(site__organization=partner_org)


def spend(node, line, link, *, output_tokens: int, day: int = 10):
    """Output tokens at 0.08 per million: 50,000,000 tokens = 4.00 USD."""
    billed_request(
        node=node,
        line=line,
        api_key_id=link.api_key_id,
        issued_at=datetime(2026, 12, day, tzinfo=UTC),
        input_tokens=0,
        output_tokens=output_tokens,
    )


def run(capture):
    with capture(execute=True):
        return inference_cap_alerts()


def test_80_and_100_percent_once_each(
    people, line, link, node, mailoutbox, django_capture_on_commit_callbacks
):
    spend(node, line, link, output_tokens=49_999_999)  # 3.99999992 of 5.00: 79 %
    assert run(django_capture_on_commit_callbacks) == 0
    assert mailoutbox == []

    spend(node, line, link, output_tokens=1)  # 4.00 of 5.00: 80 % of the key's cap
    assert run(django_capture_on_commit_callbacks) == 1
    assert [(m.to, m.subject) for m in mailoutbox] == [
        (
            ["finance@acme.test"],
            "[Hashgrid] API key “chatbot” reached 80 % of its monthly inference cap",
        ),
        (
            ["owner@acme.test"],
            "[Hashgrid] API key “chatbot” reached 80 % of its monthly inference cap",
        ),
    ]
    assert (
        "has spent 4.00 USD on inference this month: 80 % of its cap of 5.00 USD."
        in mailoutbox[0].body
    )
    assert run(django_capture_on_commit_callbacks) == 0
    assert len(mailoutbox) == 2

    # 100,000,000 more output tokens: 12.00 in all. Key: 240 % (100 % is new); contract:
    # 120 % of 10.00, both thresholds reached at once, one email (100 %).
    spend(node, line, link, output_tokens=100_000_000)
    assert run(django_capture_on_commit_callbacks) == 2
    assert sorted({m.subject for m in mailoutbox[2:]}) == [
        "[Hashgrid] API key “chatbot” reached 100 % of its monthly inference cap",
        f"[Hashgrid] Contract {line.contract.reference} reached 100 % of its monthly inference cap",
    ]
    assert len(mailoutbox) == 6
    assert run(django_capture_on_commit_callbacks) == 0
    assert len(mailoutbox) == 6
    rows = InferenceCapAlert.objects.order_by("line_api_key_id", "threshold_percent")
    assert [(r.line_api_key_id, r.threshold_percent, r.cap_minor, r.spent_minor) for r in rows] == [
        (link.pk, 80, 500, 400),
        (link.pk, 100, 500, 1200),
        (None, 80, 1000, 1200),
        (None, 100, 1000, 1200),
    ]  # NULL (the contract's cap) sorts last


def test_a_new_month_alerts_again(
    people, line, link, node, mailoutbox, django_capture_on_commit_callbacks, frozen
):
    spend(node, line, link, output_tokens=50_000_000)
    assert run(django_capture_on_commit_callbacks) == 1
    frozen.move_to(datetime(2027, 1, 3, tzinfo=UTC))
    spend(node, line, link, output_tokens=50_000_000, day=1)  # issued 2026-12-01: last month
    assert run(django_capture_on_commit_callbacks) == 0
    from capacity.metering.models import InferenceRequest

    InferenceRequest.objects.filter(issued_at__gte=datetime(2026, 12, 1, tzinfo=UTC)).update(
        issued_at=datetime(2027, 1, 2, tzinfo=UTC)
    )
    # January: 8.00 of 5.00 (160 %) for the key, 80 % of the contract's 10.00.
    assert run(django_capture_on_commit_callbacks) == 2
    assert InferenceCapAlert.objects.filter(month=date(2027, 1, 1)).count() == 3


def test_a_request_the_node_has_not_reported_counts_as_the_gateway_relayed_it(
    people, line, link, node, mailoutbox, django_capture_on_commit_callbacks
):
    """The alerts count by the gateway's rule (``contracts.inference_spend``): the larger
    of billed and relayed tokens, so the 80 % email does not wait for the node's poll."""
    from capacity.metering.models import InferenceRequest

    spend(node, line, link, output_tokens=0)
    # The gateway relayed 50,000,000 output tokens (4.00 USD); nothing billed yet.
    InferenceRequest.objects.update(max_output_tokens=50_000_000, gateway_output_tokens=50_000_000)
    assert run(django_capture_on_commit_callbacks) == 1
    alert = InferenceCapAlert.objects.get()
    assert (alert.line_api_key_id, alert.threshold_percent, alert.spent_minor) == (link.pk, 80, 400)
    assert "(Spend counts each request at the larger of the tokens billed" in mailoutbox[0].body
