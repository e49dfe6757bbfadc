"""Finance sees, per node and hour, where the gateway's and the agents' token counts
differ, with both figures (docs/gateway.md point 9)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.urls import reverse

from capacity.metering.selectors import inference_disagreements
from tests.billing.test_finance_admin import finance_user
from tests.capacity.metering.receipt_builders import (
    gateway_logged,
    meter_requests,
    receipt_for,
)
from tests.factories import SiteFactory, UserFactory, gpu_pool
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db
HOUR = datetime(2026, 10, 20, 10, tzinfo=UTC)
LINE, KEY = 71, 81


@pytest.fixture
def nodes(partner_org):
    """Node A: one request the buyer cut (gateway 10/4, agent 10/9) and one both agree on;
    an hour later one only the gateway logged (12/0). Node B: all agree."""
    devices = gpu_pool(site=SiteFactory(organization=partner_org), gpus=2, per_node=1)
    common = {"line_id": LINE, "key_id": KEY, "product": "llama"}
    meter_requests(
        gpu=devices[0], at=HOUR, input_tokens=10, output_tokens=9, gateway=(10, 4), **common
    )
    meter_requests(
        gpu=devices[0], at=HOUR, input_tokens=5, output_tokens=5, gateway=(5, 5), **common
    )
    gateway_logged(
        receipt_for(
            devices[0].node, rid="e" * 32, line_id=LINE, key_id=KEY, issued_at=HOUR.replace(hour=11)
        ),
        input_tokens=12,
        output_tokens=0,
    )
    meter_requests(
        gpu=devices[1], at=HOUR, input_tokens=3, output_tokens=3, gateway=(3, 3), **common
    )
    return [device.node for device in devices]


def test_the_selector_lists_only_node_hours_that_differ_with_both_figures(nodes):
    rows = [
        (
            row.node_id,
            row.hour,
            row.requests,
            row.gateway_input_tokens,
            row.agent_input_tokens,
            row.gateway_output_tokens,
            row.agent_output_tokens,
            row.billed_input_tokens,
            row.billed_output_tokens,
            row.gateway_only_requests,
            row.agent_only_requests,
        )
        for row in inference_disagreements()
    ]
    assert rows == [
        (nodes[0].pk, HOUR.replace(hour=11), 1, 12, 0, 0, 0, 0, 0, 1, 0),
        (nodes[0].pk, HOUR, 2, 15, 15, 9, 14, 15, 9, 0, 0),
    ]
    assert list(inference_disagreements(node_ids=[nodes[1].pk])) == []


def test_finance_reads_them_in_the_admin_and_others_cannot(nodes):
    url = reverse("admin:metering_inferencedisagreementhour_changelist")
    page = client_for(finance_user()).get(url)
    assert page.status_code == 200
    shown = [
        (row.node_id, row.gateway_output_tokens, row.agent_output_tokens)
        for row in page.context["cl"].result_list
    ]
    assert shown == [(nodes[0].pk, 0, 0), (nodes[0].pk, 9, 14)]
    assert nodes[0].site.organization.name in page.content.decode()
    # Read-only: nothing to add, change or delete.
    assert client_for(finance_user()).get(url + "add/").status_code == 403
    staff = UserFactory(is_staff=True)
    TOTP.activate(staff, generate_totp_secret())
    assert client_for(staff).get(url).status_code == 403


def test_the_requests_and_billed_hours_admins_render_for_a_superuser(nodes):
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    TOTP.activate(admin_user, generate_totp_secret())
    client = client_for(admin_user)
    for model in ("inferencerequest", "inferenceusagehour", "inferencedisagreementhour"):
        page = client.get(reverse(f"admin:metering_{model}_changelist"))
        assert page.status_code == 200, model
    requests = client.get(reverse("admin:metering_inferencerequest_changelist"))
    assert len(requests.context["cl"].result_list) == 4
