"""Two tenants for the security tests: organization B owns one of everything, A probes it.

B's objects carry names no other fixture uses ("Zebra…"), so a test can search any
response body for them: if one shows up in A's answer, B's data leaked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Organization, Role, User
from billing.models import SettlementStatement
from capacity.models import NodeStatus
from tests.factories import (
    ApiKeyFactory,
    InvitationFactory,
    MembershipFactory,
    NodeWindowFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
    gpu_pool,
)

# Only organization B's fixtures use these: a hit in A's response is a leak.
B_PRIVATE_MARKERS = (
    "Zebra Holdings",
    "zebra-owner@example.com",
    "zebra-member@example.com",
    "zebra-invitee@example.com",
    "zebra-api-key",
    "zebra-line-key",
    "zebra-node",
    "Zebra firmware",
    "zebra/private-image",
    "zebra-ssh-key",
)
# Published on purpose: the storefront lists every partner's offers with their site.
B_PUBLISHED_MARKERS = ("Zebra Flare Site",)


@dataclass
class TenantB:
    """Organization B and one object of each kind it owns, by registry key."""

    organization: Organization
    owner: User
    objects: dict[str, object] = field(default_factory=dict)


@dataclass
class TenantA:
    organization: Organization
    owner: User
    api_key_secret: str  # the full "hg_…" key (only its hash is stored)

    def client(self) -> Client:
        client = Client()
        client.force_login(self.owner)
        return client

    def api_client(self) -> APIClient:
        client = APIClient()
        client.force_login(self.owner)
        return client

    def api_key_client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.api_key_secret}")
        return client


def build_tenant_b() -> TenantB:
    """Organization B (buyer and partner) with a member, an invitation, an API key, a site
    with an online node, a maintenance window, an offer, an active contract with an
    on-demand line and its key, an instance on it, a finalized invoice and a settlement statement."""
    from contracts.models import InferenceProduct
    from contracts.on_demand import line_api_key_create, on_demand_enable
    from contracts.workloads import instance_start
    from tests.billing.conftest import finalized_invoice_for
    from tests.capacity.metering.receipt_builders import meter_requests

    org = OrganizationFactory(name="Zebra Holdings", is_buyer=True, is_partner=True)
    owner = MembershipFactory(
        organization=org,
        role=Role.OWNER,
        user=UserFactory(email="zebra-owner@example.com"),
    ).user
    member = MembershipFactory(
        organization=org, role=Role.MEMBER, user=UserFactory(email="zebra-member@example.com")
    )
    invitation = InvitationFactory(organization=org, email="zebra-invitee@example.com")
    api_key = ApiKeyFactory(organization=org, created_by=owner, name="zebra-api-key")
    site = SiteFactory(organization=org, name="Zebra Flare Site")
    devices = gpu_pool(site=site, gpus=4, per_node=4, status=NodeStatus.ONLINE)
    node = devices[0].node
    node.name = "zebra-node-01"
    node.save(update_fields=["name"])
    window = NodeWindowFactory(node=node, reason="Zebra firmware")
    offer = OfferFactory(site=site, gpu_count=4, available_from=timezone.now() - timedelta(days=1))
    # One open contract per buyer: the invoiced contract also gets the on-demand line.
    invoice = finalized_invoice_for(org)
    line = on_demand_enable(buyer=org, actor=owner, offer=offer)
    line_key, _secret = line_api_key_create(line=line, name="zebra-line-key", actor=owner)
    # An inference request of B's inference line, metered from its receipt record.
    llm_line = on_demand_enable(
        buyer=org,
        actor=owner,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
    )
    llm_key, _secret = line_api_key_create(line=llm_line, name="zebra-line-key-llm", actor=owner)
    (inference_request,) = meter_requests(
        gpu=devices[0],
        line_id=llm_line.pk,
        key_id=llm_key.pk,
        product="llama-3.1-8b-instruct",
        at=timezone.now().replace(microsecond=0),
        input_tokens=11,
        output_tokens=7,
    )
    # B's instance on its on-demand GPU line (its image and SSH key are private).
    workload = instance_start(
        line=line,
        gpu_count=1,
        image="zebra/private-image:1",
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHplYnJh zebra-ssh-key",
        ports=[22],
        env={},
        actor=owner,
    )
    statement = SettlementStatement.objects.create(
        partner=org, month=date(2026, 10, 1), currency="USD"
    )
    return TenantB(
        organization=org,
        owner=owner,
        objects={
            "membership": member,
            "invitation": invitation,
            "api_key": api_key,
            "site": site,
            "node": node,
            "window": window,
            "offer": offer,
            "contract": line.contract,
            "contract_line": line,
            "line_api_key": line_key.contract_line_link,
            "line_key": line_key,
            # Products are the platform's: the node (B's) is what a foreign caller must
            # not reach; the product's pk stands in for its slug.
            "inference_product": InferenceProduct.objects.order_by("pk").first(),
            "invoice": invoice,
            "statement": statement,
            "inference_request": inference_request,
            "workload": workload,
        },
    )


@pytest.fixture
def tenant_b(db, settings) -> TenantB:
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    return build_tenant_b()


@pytest.fixture
def tenant_a(db) -> TenantA:
    """Organization A: buyer and partner, probed by its owner, so no kind or role check
    answers before the object lookup does."""
    org = OrganizationFactory(name="Aardvark Compute", is_buyer=True, is_partner=True)
    owner = MembershipFactory(organization=org, role=Role.OWNER).user
    api_key = ApiKeyFactory(organization=org, created_by=owner, name="aardvark-key")
    SiteFactory(organization=org, name="Aardvark Site")
    return TenantA(organization=org, owner=owner, api_key_secret=api_key.key)
