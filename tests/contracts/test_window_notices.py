"""Buyers are told of maintenance and curtailment over their reserved GPUs (issue 13,
item 6): an email to the buyer's members once per window, and the contract page, each
stating what the SLA excludes and what counts as downtime, never naming another buyer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from accounts.models import Role
from capacity import services as capacity_services
from capacity.models import WindowKind
from contracts.checkout import reservation_checkout
from contracts.models import WindowNotice
from contracts.window_notices import contract_windows, notify_buyers_of_window
from tests.factories import MembershipFactory, OfferFactory, OrganizationFactory, SiteFactory
from tests.factories import gpu_pool as make_pool

pytestmark = pytest.mark.django_db

NOW = datetime(2027, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def pool(partner_org):
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    devices = make_pool(site=site, gpus=8, per_node=4)
    return OfferFactory(site=site, gpu_count=8, available_from=NOW), devices


def _reserve(offer, buyer, gpus):
    return reservation_checkout(
        buyer=buyer,
        offer=offer,
        gpu_count=gpus,
        starts_at=NOW + timedelta(minutes=5),
        term_months=1,
        actor=None,
    )


def _schedule(node, kind, start, end, reason="PSU swap"):
    return capacity_services.window_schedule(
        node=node, actor=None, kind=kind, start=start, end=end, reason=reason
    )


def test_each_buyer_under_a_window_is_mailed_once_about_its_own_gpus(
    pool,
    buyer_org,
    buyer_owner,
    other_org,
    django_capture_on_commit_callbacks,
    mailoutbox,
    settings,
):
    settings.SITE_URL = "https://hashgrid.example"
    offer, devices = pool
    node = devices[0].node
    viewer = MembershipFactory(organization=buyer_org, role=Role.VIEWER).user
    other_member = MembershipFactory(organization=other_org, role=Role.OWNER).user
    mine = _reserve(offer, buyer_org, 2)
    theirs = _reserve(offer, other_org, 2)
    # A buyer whose GPUs are on the other node only is not told.
    elsewhere_org = OrganizationFactory(name="Elsewhere", is_buyer=True)
    MembershipFactory(organization=elsewhere_org, role=Role.OWNER)
    held = {a.gpu_device.node_id for a in mine.line.allocations.all()}
    held |= {a.gpu_device.node_id for a in theirs.line.allocations.all()}
    assert held == {node.pk}
    _reserve(offer, elsewhere_org, 4)

    # Announced 7.5 days ahead, 12 hours long: 8 h excluded, 4 h downtime per GPU.
    with django_capture_on_commit_callbacks(execute=True):
        window = _schedule(
            node,
            WindowKind.MAINTENANCE,
            datetime(2027, 3, 12, tzinfo=UTC),
            datetime(2027, 3, 12, 12, tzinfo=UTC),
        )

    by_recipient = {message.to[0]: message for message in mailoutbox}
    assert sorted(by_recipient) == sorted([buyer_owner.email, viewer.email, other_member.email])
    message = by_recipient[buyer_owner.email]
    assert message.subject == (
        "[Hashgrid] Maintenance scheduled on your reserved GPUs at Permian Flare 1: "
        "2027-03-12 00:00 UTC"
    )
    assert message.body == (
        "Hello,\n\n"
        f"The operator of Permian Flare 1 scheduled maintenance on node {node.name}, where you "
        "reserve GPUs.\n\n"
        "From:  2027-03-12 00:00 UTC\n"
        "Until: 2027-03-12 12:00 UTC\n"
        "Reason given: PSU swap\n\n"
        "Your reserved GPUs on this node during the window:\n"
        f"- contract {mine.contract.reference}: 2 GPUs "
        f"(https://hashgrid.example/contracts/{mine.contract.pk}/)\n"
        "  for its SLA, per GPU: 8 h excluded, 4 h counted as downtime unless the GPUs stay "
        "available\n\n"
        "Maintenance announced at least 7 days ahead is excluded up to 8 h per GPU per "
        "calendar month; beyond that it counts as downtime.\n\n"
        "The contract page lists every current and upcoming window over your GPUs.\n\n"
        "— Hashgrid\n"
    )
    # The other buyer reads of its own contract and GPU, never of this one.
    other_body = by_recipient[other_member.email].body
    assert f"- contract {theirs.contract.reference}: 2 GPUs (" in other_body
    assert mine.contract.reference not in other_body
    assert buyer_org.name not in other_body
    assert sorted(WindowNotice.objects.values_list("buyer__name", "event", "recipient_count")) == [
        ("Acme Vision", "scheduled", 2),
        ("Other Tenant", "scheduled", 1),
    ]

    # Once per window: told again, nobody is mailed twice.
    mailoutbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert notify_buyers_of_window(window_id=window.pk, event="scheduled") == 0
    assert mailoutbox == []

    # Cancelling it is news too, once.
    with django_capture_on_commit_callbacks(execute=True):
        capacity_services.window_cancel(window=window, actor=None)
    assert sorted(message.to[0] for message in mailoutbox) == sorted(
        [buyer_owner.email, viewer.email, other_member.email]
    )
    assert mailoutbox[0].subject.startswith("[Hashgrid] Maintenance cancelled on your reserved")
    assert "your GPUs are no longer affected by it" in mailoutbox[0].body


def test_a_late_curtailment_counts_entirely_as_downtime(
    pool, buyer_org, buyer_owner, django_capture_on_commit_callbacks, mailoutbox
):
    offer, devices = pool
    _reserve(offer, buyer_org, 1)
    with django_capture_on_commit_callbacks(execute=True):
        _schedule(
            devices[0].node,
            WindowKind.CURTAILMENT,
            datetime(2027, 3, 5, 18, tzinfo=UTC),
            datetime(2027, 3, 5, 20, 30, tzinfo=UTC),
            reason="",
        )
    (message,) = mailoutbox
    assert "Reason given" not in message.body
    assert (
        "  for its SLA, per GPU: 0 h excluded, 2 h 30 min counted as downtime unless the GPUs "
        "stay available\n\nPower curtailment is not excluded from the SLA.\n"
    ) in message.body


def test_the_contract_page_lists_windows_over_its_gpus_with_their_sla_split(
    pool, buyer_org, buyer_client, other_org
):
    offer, devices = pool
    mine = _reserve(offer, buyer_org, 2)
    _reserve(offer, other_org, 6)
    first, second = devices[0].node, devices[4].node
    # A legacy window from 2027 to 2099 (before windows were bounded): 8 h excluded this
    # month, and every hour beyond counts as downtime.
    long_window = _schedule(
        first,
        WindowKind.MAINTENANCE,
        datetime(2027, 3, 20, tzinfo=UTC),
        datetime(2027, 3, 21, tzinfo=UTC),
    )
    long_window.period = (datetime(2027, 3, 20, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC))
    long_window.save(update_fields=["period"])
    _schedule(
        first,
        WindowKind.CURTAILMENT,
        datetime(2027, 3, 6, tzinfo=UTC),
        datetime(2027, 3, 6, 1, tzinfo=UTC),
    )
    # Only the other buyer's GPUs are on the second node: not on this contract's page.
    _schedule(
        second,
        WindowKind.MAINTENANCE,
        datetime(2027, 3, 15, tzinfo=UTC),
        datetime(2027, 3, 15, 2, tzinfo=UTC),
    )

    impacts = contract_windows(contract=mine.contract, now=NOW)
    assert [
        (i.window.kind, i.window.node_id, i.gpu_count, i.excluded_text, i.downtime_text)
        for i in impacts
    ] == [
        ("curtailment", first.pk, 2, "0 h", "1 h"),
        # Of the window, the contract holds the GPUs from 2027-03-20 to its end, 2027-04-04
        # 12:05 (372 h 5 min): 8 h of March and 8 h of April are excluded, the rest is
        # downtime.
        ("maintenance", first.pk, 2, "16 h", "356 h 5 min"),
    ]
    page = buyer_client.get(f"/contracts/{mine.contract.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Maintenance and curtailment" in html
    assert '<td class="num">16 h</td><td class="num">356 h 5 min</td>' in html
    assert "up to 8 h per calendar month" in html
    assert other_org.name not in html
