"""The dashboard: a partner's fleet at a glance, scoped to its own organization."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.asserts import assertInHTML

from accounts.models import Role
from capacity.models import NodeStatus
from marketplace.views import DASHBOARD_NODE_ROWS
from tests.factories import (
    MembershipFactory,
    NodeFactory,
    OfferFactory,
    SiteFactory,
    catalog_gpu,
)
from tests.fixtures import client_for

pytestmark = [pytest.mark.django_db, pytest.mark.calendar]

TIMES = "\N{MULTIPLICATION SIGN}"  # between GPU count and model


def _dashboard(client) -> str:
    response = client.get("/dashboard/")
    assert response.status_code == 200
    return response.content.decode()


def _stat(key: str, label: str, value: int, meta: str | None = None) -> str:
    meta_html = f'<div class="stat-meta">{meta}</div>' if meta else ""
    return (
        f'<div class="stat" data-stat="{key}"><div class="stat-label">{label}</div>'
        f'<div class="stat-value">{value}</div>{meta_html}</div>'
    )


def _node_table(html: str) -> str:
    match = re.search(r"<table[^>]*data-partner-nodes>.*?</table>", html, re.S)
    assert match, "no node table on the dashboard"
    return match.group(0)


def _listed_nodes(html: str) -> list[str]:
    return re.findall(r'<a href="/partner/nodes/\d+/">([^<]+)</a>', _node_table(html))


@pytest.fixture
def fleet(partner_org, other_org):
    """Two sites of the partner, four nodes (one retired), offers; another tenant's node."""
    permian = SiteFactory(organization=partner_org, name="Permian Flare 1")
    oman = SiteFactory(organization=partner_org, name="Duqm Solar")
    polled = timezone.now() - timedelta(minutes=3)
    NodeFactory(
        site=permian,
        name="pf1-n01",
        gpu_count=8,
        status=NodeStatus.ONLINE,
        last_successful_poll_at=polled,
        gpu_utilization_pct=57,
    )
    NodeFactory(
        site=permian,
        name="pf1-n02",
        gpu_count=8,
        status=NodeStatus.DEGRADED,
        last_successful_poll_at=polled,
        gpu_utilization_pct=12,
    )
    NodeFactory(
        site=oman,
        name="duqm-n01",
        gpu_model=catalog_gpu("L40S 48GB"),
        gpu_count=4,
        status=NodeStatus.PENDING,
    )
    NodeFactory(site=oman, name="duqm-old", gpu_count=2, status=NodeStatus.RETIRED)
    OfferFactory(site=permian, gpu_count=8)
    OfferFactory(site=permian, gpu_count=4, is_active=False)

    foreign = SiteFactory(organization=other_org, name="Foreign Site")
    NodeFactory(site=foreign, name="foreign-n01", gpu_count=8, status=NodeStatus.ONLINE)
    NodeFactory(site=foreign, name="foreign-n02", gpu_count=8, status=NodeStatus.PENDING)
    OfferFactory(site=foreign, gpu_count=8)


def test_partner_dashboard_counts_its_own_fleet(fleet, partner_client):
    html = _dashboard(partner_client)

    assert 'data-section="partner"' in html
    assertInHTML(_stat("sites", "Sites", 2), html)
    assertInHTML(_stat("nodes", "Nodes", 3, "1 online"), html)
    assertInHTML(_stat("gpus", "GPUs", 20, "on active nodes"), html)
    assertInHTML(_stat("offers", "Offers", 1, "active"), html)
    statuses = re.findall(r'data-status="(\w+)">([^<]+)</span>', html)
    assert statuses == [
        ("pending", "Pending: 1"),
        ("online", "Online: 1"),
        ("degraded", "Degraded: 1"),
        ("retired", "Retired: 1"),
    ]


def test_partner_dashboard_lists_its_nodes_not_another_tenants(fleet, partner_client):
    html = _dashboard(partner_client)

    # Ordered by site then name; the retired node and the other tenant's are left out.
    assert _listed_nodes(html) == ["duqm-n01", "pf1-n01", "pf1-n02"]
    assert "foreign" not in html
    assert "Foreign Site" not in html
    table = _node_table(html)
    assertInHTML(f'<td class="nowrap">4 {TIMES} L40S 48GB</td>', table)
    assertInHTML('<span class="badge badge-success">Online</span>', table)
    assertInHTML('<span class="badge badge-warning">Degraded</span>', table)
    assertInHTML('<span class="badge badge-neutral">Pending</span>', table)
    assertInHTML('<td class="num">57 %</td>', table)
    assertInHTML('<td class="num">12 %</td>', table)
    assert table.count("3\xa0minutes ago") == 2
    assertInHTML('<td><span class="muted">never</span></td>', table)
    assert "3 nodes, by site;" in html
    assert 'data-callout="no-offers"' not in html


def test_the_other_tenant_sees_only_its_nodes(fleet, other_client):
    html = _dashboard(other_client)

    assert _listed_nodes(html) == ["foreign-n01", "foreign-n02"]
    assertInHTML(_stat("sites", "Sites", 1), html)
    assertInHTML(_stat("nodes", "Nodes", 2, "1 online"), html)
    assertInHTML(_stat("gpus", "GPUs", 16, "on active nodes"), html)
    assertInHTML(_stat("offers", "Offers", 1, "active"), html)


def test_dashboard_shows_at_most_ten_nodes_in_constant_queries(partner_org, partner_client):
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    NodeFactory(site=site, name="n-00", status=NodeStatus.ONLINE)
    _dashboard(partner_client)  # the first request of a session also writes the session
    with CaptureQueriesContext(connection) as one_node:
        _dashboard(partner_client)

    for index in range(1, 13):
        NodeFactory(site=site, name=f"n-{index:02d}", status=NodeStatus.ONLINE)
    with CaptureQueriesContext(connection) as many_nodes:
        html = _dashboard(partner_client)

    assert len(many_nodes.captured_queries) == len(one_node.captured_queries)
    assert _listed_nodes(html) == [f"n-{index:02d}" for index in range(DASHBOARD_NODE_ROWS)]
    assert f"The first {DASHBOARD_NODE_ROWS} of 13 nodes, by site;" in html
    assert 'href="/partner/nodes/"' in html
    assertInHTML(_stat("nodes", "Nodes", 13, "13 online"), html)
    assertInHTML(_stat("gpus", "GPUs", 104, "on active nodes"), html)


def test_partner_without_sites_is_guided_to_register_one(partner_client):
    html = _dashboard(partner_client)

    assert "Register your first site" in html
    assert '<a class="btn btn-primary" href="/partner/sites/new/">Register a site</a>' in html
    assert 'data-stat="sites"' not in html
    assert "data-partner-nodes" not in html


def test_partner_with_a_site_but_no_node_is_guided_to_add_one(partner_org, partner_client):
    SiteFactory(organization=partner_org)

    html = _dashboard(partner_client)

    assertInHTML(_stat("sites", "Sites", 1), html)
    assertInHTML(_stat("nodes", "Nodes", 0, "0 online"), html)
    assert "Add your first node" in html
    assert '<a class="btn btn-primary" href="/partner/nodes/new/">Add a node</a>' in html
    assert "data-partner-nodes" not in html
    assert 'data-callout="no-offers"' not in html


def test_partner_with_nodes_but_no_offer_is_guided_to_list_one(partner_org, partner_client):
    NodeFactory(site=SiteFactory(organization=partner_org), status=NodeStatus.ONLINE)

    html = _dashboard(partner_client)

    assert 'data-callout="no-offers"' in html
    assert '<a href="/partner/offers/new/">List an offer</a>' in html


def test_a_viewer_sees_the_fleet_without_actions(partner_org):
    NodeFactory(site=SiteFactory(organization=partner_org), name="pf1-n01")
    viewer = MembershipFactory(organization=partner_org, role=Role.VIEWER).user

    html = _dashboard(client_for(viewer))

    assert _listed_nodes(html) == ["pf1-n01"]
    assert 'href="/partner/nodes/new/"' not in html
    assert 'href="/partner/sites/new/"' not in html
    assert 'href="/partner/offers/new/"' not in html


def test_buyer_dashboard_has_no_partner_section(fleet, buyer_client):
    response = buyer_client.get("/dashboard/")

    html = response.content.decode()
    assert 'data-section="buyer"' in html
    assert 'data-section="partner"' not in html
    assert "data-partner-overview" not in html
    assert "partner_overview" not in response.context
    assert "pf1-n01" not in html
