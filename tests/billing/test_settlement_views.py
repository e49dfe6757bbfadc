"""Partner pages: earnings with charts, a statement by site/node/contract with buyers
anonymized, CSV export, Connect onboarding; another partner gets 404."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import httpx
import pytest
from django.urls import reverse

from accounts.models import Role
from billing.models import ConnectAccount, SettlementStatement
from billing.settlement.selectors import buyer_alias
from tests.billing.conftest import save_card
from tests.billing.settlement_builders import close_october, observe_available, reserve_eight_gpus
from tests.factories import MembershipFactory
from tests.fixtures import client_for
from tests.tenancy import assert_hidden_from

pytestmark = pytest.mark.django_db


@pytest.fixture
def statement(buyer_org, partner_org, offer, devices, localstripe):
    line = reserve_eight_gpus(buyer=buyer_org, offer=offer)
    observe_available(
        [a.gpu_device for a in line.allocations.all()],
        since=date(2026, 10, 15),
        until=date(2026, 11, 1),
    )
    save_card(buyer_org, localstripe)
    close_october()
    return SettlementStatement.objects.get()


def test_earnings_page_with_charts_and_statements(partner_client, statement):
    page = partner_client.get(reverse("billing:earnings")).content.decode()
    assert 'data-chart="months"' in page and 'data-chart="sites"' in page
    assert "<title>Oct 2026: $5,483.52</title>" in page
    assert "Permian Flare 1 · $5,483.52" in page
    assert statement.reference in page
    assert "Set up payouts with Stripe" in page


def test_statement_detail_names_no_buyer(partner_client, statement, buyer_org, partner_org):
    page = partner_client.get(reverse("billing:statement_detail", args=[statement.pk]))
    content = page.content.decode()
    alias = buyer_alias(partner_id=partner_org.pk, buyer_id=buyer_org.pk)
    assert alias.startswith("Buyer #") and alias in content
    assert buyer_org.name not in content
    assert content.count("$2,741.76") == 2  # each node's share (half of $5,483.52)


def test_statement_csv(partner_client, statement, buyer_org, partner_org):
    response = partner_client.get(reverse("billing:statement_csv", args=[statement.pk]))
    assert response["Content-Type"].startswith("text/csv")
    rows = response.content.decode().splitlines()
    alias = buyer_alias(partner_id=partner_org.pk, buyer_id=buyer_org.pk)
    assert rows[0] == (
        "statement,month,site,node,contract,buyer,kind,basis,amount,partner_share,"
        "platform_fee,currency"
    )
    assert len(rows) == 3
    for row in rows[1:]:
        fields = row.split(",")
        assert fields[0] == statement.reference and fields[1] == "2026-10"
        assert fields[2] == "Permian Flare 1" and fields[5] == alias
        assert fields[6:] == [
            "Reserved GPUs",
            "5875200 GPU-seconds",
            "3427.20",
            "2741.76",
            "685.44",
            "USD",
        ]


def test_another_partner_gets_404(other_client, statement):
    for name in ("billing:statement_detail", "billing:statement_csv"):
        assert_hidden_from(other_client, reverse(name, args=[statement.pk]))
    page = other_client.get(reverse("billing:earnings")).content.decode()
    assert statement.reference not in page


def test_buyers_and_non_finance_members_are_refused(buyer_client, partner_org, statement):
    assert buyer_client.get(reverse("billing:earnings")).status_code == 404
    viewer = MembershipFactory(organization=partner_org, role=Role.VIEWER).user
    assert client_for(viewer).get(reverse("billing:earnings")).status_code == 403


def test_connect_onboarding_through_account_links(partner_client, partner_org, connect_fake):
    response = partner_client.post(reverse("billing:payouts_setup"))
    assert response.status_code == 302
    link = response.url
    assert link.startswith(connect_fake.url + "/connect/onboarding/")
    account = ConnectAccount.objects.get(partner=partner_org)
    assert not account.can_receive_payouts
    # The partner fills in Stripe's form; Stripe sends them back to the return URL.
    at_stripe = httpx.get(link, follow_redirects=False)
    assert at_stripe.status_code == 302
    assert at_stripe.headers["location"] == "http://testserver" + reverse("billing:payouts_return")
    # The link is single-use: a second visit goes to the refresh URL.
    again = httpx.get(link, follow_redirects=False)
    assert again.headers["location"] == "http://testserver" + reverse("billing:payouts_refresh")
    back = partner_client.get(reverse("billing:payouts_return"), follow=True)
    assert "Your payout account is ready" in back.content.decode()
    account.refresh_from_db()
    assert account.can_receive_payouts
    refreshed = partner_client.get(reverse("billing:payouts_refresh"))
    assert refreshed.url.startswith(connect_fake.url + "/connect/onboarding/")
    assert ConnectAccount.objects.count() == 1 and len(connect_fake.state.accounts) == 1


def test_a_stripe_without_connect_is_reported_as_a_refusal_not_an_outage(
    partner_client, partner_org, connect_settings
):
    """localstripe alone answers 404 on /v1/accounts: the partner is told Stripe refused
    the request and why, not that Stripe cannot be reached."""
    connect_settings.STRIPE_CONNECT_API_BASE = ""
    response = partner_client.post(reverse("billing:payouts_setup"), follow=True)
    content = response.content.decode()
    assert "Stripe refused the request (404)" in content
    assert "cannot be reached" not in content
    assert ConnectAccount.objects.filter(partner=partner_org).count() == 0


def test_an_unreachable_stripe_is_reported_as_an_outage(partner_client, connect_settings):
    connect_settings.STRIPE_CONNECT_API_BASE = "http://127.0.0.1:9761"  # nothing listens
    connect_settings.STRIPE_MAX_NETWORK_RETRIES = 0
    response = partner_client.post(reverse("billing:payouts_setup"), follow=True)
    assert "Stripe cannot be reached right now; try again shortly." in response.content.decode()


def test_earnings_per_day_node_and_site(partner_client, statement, partner_org):
    """Eight GPUs (two nodes of four) reserved from 15 October: each node's share,
    $2,741.76, spread over the 17 reserved days by reserved GPU-seconds, $161.28 a day."""
    from billing.settlement.daily import month_earnings

    earned = month_earnings(partner=partner_org, currency="USD", month=date(2026, 10, 1))
    assert earned.total_minor == 548_352
    assert earned.per_day == [(date(2026, 10, day), 32_256) for day in range(15, 32)]
    assert [
        (n.site, n.gpu_count, n.partner_share_minor, n.per_gpu_minor) for n in earned.per_node
    ] == [
        ("Permian Flare 1", 4, 274_176, 68_544),
        ("Permian Flare 1", 4, 274_176, 68_544),
    ]
    assert earned.per_site == [("Permian Flare 1", 548_352)]
    assert len(earned.rows) == 34 and {row.partner_share_minor for row in earned.rows} == {16_128}
    assert earned.day_chart["labels"][0] == "2026-10-15"
    assert earned.day_chart["series"][0]["values"][0] == "322.56"

    page = partner_client.get(reverse("billing:earnings_daily")).content.decode()
    assert "Earnings per day, October 2026" in page
    assert '<tr><td>2026-10-15</td><td class="num">$322.56</td></tr>' in page
    assert '<td class="num">$2,741.76</td><td class="num">$685.44</td>' in page
    assert 'canvas data-chart="earnings-per-day"' in page
    earnings = partner_client.get(reverse("billing:earnings")).content.decode()
    assert reverse("billing:earnings_daily") + "?currency=USD" in earnings


def test_earnings_per_day_csv(partner_client, statement):
    response = partner_client.get(
        reverse("billing:earnings_daily_csv") + "?month=2026-10&currency=USD"
    )
    assert response["Content-Disposition"] == (
        'attachment; filename="earnings-2026-10-USD-per-day.csv"'
    )
    rows = response.content.decode().splitlines()
    assert rows[0] == "day_utc,site,node,gpus,your_share_usd,your_share_per_gpu_usd"
    assert len(rows) == 1 + 34
    assert rows[1].startswith("2026-10-15,Permian Flare 1,")
    assert rows[1].endswith(",4,161.28,40.32")
    assert rows[-1].startswith("2026-10-31,Permian Flare 1,")
    total = sum(Decimal(row.split(",")[4]) for row in rows[1:])
    assert total == Decimal("5483.52")


def test_daily_earnings_are_the_partners_own(other_client, buyer_client, statement):
    page = other_client.get(reverse("billing:earnings_daily")).content.decode()
    assert "No earnings yet" in page and "Permian Flare 1" not in page
    csv_rows = other_client.get(reverse("billing:earnings_daily_csv")).content.decode().splitlines()
    assert csv_rows == ["day_utc,site,node,gpus,your_share_usd,your_share_per_gpu_usd"]
    assert buyer_client.get(reverse("billing:earnings_daily")).status_code == 404
