"""The demo's closed month (issue 16, point 13), seeded through the real services against
localstripe and the Connect emulation the billing tests run."""

from __future__ import annotations

from datetime import UTC, date, datetime
from io import StringIO

import pytest
from django.utils import timezone

from accounts.models import User
from billing.models import (
    CreditNote,
    Invoice,
    PaymentStatus,
    Payout,
    PayoutStatus,
    SettlementStatement,
    StatementStatus,
)
from billing.overview import finance_overview
from billing.reconcile import reconcile_month
from contracts.models import Contract
from devtools.demo import books, compute, fleet, inference, people
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    localstripe,
    stripe_proxy,
    stripe_settings,
)
from tests.devtools.test_demo import fleet_url  # noqa: F401 (the real fleet simulator)
from tests.factories import ContractFactory, OfferFactory, SiteFactory, gpu_pool

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 4, 17, tzinfo=UTC)  # November's grace window is over


@pytest.fixture
def demo(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    organizations = people.seed_people()
    partners = [organizations["partner"], fleet.second_partner()]
    offers = []
    for partner in partners:
        site = SiteFactory(organization=partner)
        gpu_pool(site=site, gpus=8, per_node=8)
        offers.append(
            OfferFactory(site=site, gpu_count=8, available_from=datetime(2026, 12, 1, tzinfo=UTC))
        )
    return organizations, offers


def test_the_closed_month_through_the_real_services(demo, django_capture_on_commit_callbacks):
    organizations, offers = demo
    buyer = organizations["buyer"]
    owner = User.objects.get(email="buyer@hashgrid.test")
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        summary = books.seed_closed_month(
            buyer=buyer, buyer_owner=owner, offers=offers, now=NOW, out=out
        )
    november = date(2026, 11, 1)
    assert summary == {
        "month": "2026-11",
        "invoices": 3,
        "charged": 2,
        "in_dunning": 1,
        "statements_approved": 2,
        "payouts_paid": 1,
        "credit_note": CreditNote.objects.get().number,
    }
    invoices = {
        invoice.buyer.name: (invoice.status, invoice.payment_status, invoice.total_minor)
        for invoice in Invoice.objects.filter(month=november).select_related("buyer")
    }
    assert invoices == {
        # 4 GPUs x 720 h x $2.10; Borealis 2 GPUs, its card declined (dunning).
        "Acme Vision": ("finalized", PaymentStatus.PAID, 604_800),
        "Borealis Labs": ("finalized", PaymentStatus.FAILED, 302_400),
        "Cobalt Robotics": ("finalized", PaymentStatus.PAID, 604_800),
    }
    statements = list(
        SettlementStatement.objects.filter(month=november)
        .order_by("partner__name")
        .values_list("partner__name", "status", "balance_minor")
    )
    # 80 % of each paid invoice (Andes less 80 % of the $250.00 credit note); the demo
    # partner's is paid out through Connect.
    assert statements == [
        ("Andes Hash", StatementStatus.PAID, 463_840),
        ("Rift Valley Hash", StatementStatus.APPROVED, 483_840),
    ]
    payout = Payout.objects.get()
    assert (payout.partner.name, payout.status, payout.amount_minor) == (
        "Andes Hash",
        PayoutStatus.PAID,
        463_840,
    )
    note = CreditNote.objects.select_related("invoice__buyer").get()
    assert (note.invoice.buyer.name, note.amount_minor) == ("Acme Vision", 25_000)
    finance = User.objects.get(email="finance@hashgrid.test")
    assert (finance.is_staff, finance.is_superuser) == (True, False)
    assert finance.groups.filter(name="Finance").exists()
    overview = finance_overview(now=NOW)
    november_row = overview.months[1]
    assert (november_row.label, november_row.state, november_row.paid) == ("2026-11", "charged", 2)
    assert [(row.invoice.buyer.name, row.stage) for row in overview.unpaid] == [
        ("Borealis Labs", "Failed: attempt 1 of 4, next retry 2026-12-07 17:00 UTC")
    ]
    assert (overview.awaiting_approval_count, overview.payouts_count) == (0, 0)
    assert "payout(s), credit note" in out.getvalue()
    report = reconcile_month(month=november)
    assert report.differences == [], report.lines()
    assert report.stripe_skipped == ""
    # Seeding again changes nothing.
    assert books.seed_closed_month(buyer=buyer, buyer_owner=owner, offers=offers, now=NOW) is None
    assert Invoice.objects.filter(month=november).count() == 3


def test_seed_demo_books_closes_a_month_on_the_demo_fleets_offers(
    fleet_url,  # noqa: F811
    settings,
    tmp_path,
    django_capture_on_commit_callbacks,
):
    """What ``seed_demo`` runs after the fleet: the latest closable month, on each demo
    partner's first offer of the real fleet (on the real clock)."""
    settings.FLEET_URL = fleet_url
    organizations = people.seed_people()
    partners = [organizations["partner"], fleet.second_partner()]
    fleet.seed_fleet(partners, node_count=4, out=StringIO())
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        summary = books.seed_demo_books(organizations=organizations, partners=partners, out=out)
    month = books.closed_month(timezone.now()).date()
    assert summary is not None
    assert {key: value for key, value in summary.items() if key != "credit_note"} == {
        "month": f"{month:%Y-%m}",
        "invoices": 3,
        "charged": 2,
        "in_dunning": 1,
        "statements_approved": 2,
        "payouts_paid": 1,
    }
    assert sorted(
        Invoice.objects.filter(month=month).values_list("buyer__name", "payment_status")
    ) == [
        ("Acme Vision", PaymentStatus.PAID),
        ("Borealis Labs", PaymentStatus.FAILED),
        ("Cobalt Robotics", PaymentStatus.PAID),
    ]
    assert sorted(
        SettlementStatement.objects.filter(month=month).values_list("partner__name", "status")
    ) == [("Andes Hash", StatementStatus.PAID), ("Rift Valley Hash", StatementStatus.APPROVED)]
    assert Payout.objects.get().status == PayoutStatus.PAID
    assert CreditNote.objects.get().invoice.buyer.name == "Acme Vision"
    assert reconcile_month(month=month).differences == []
    # seed_demo's next step: the inference line joins the demo buyer's contract.
    inference.seed_inference(
        buyer=organizations["buyer"],
        partners=partners,
        key_file=tmp_path / "demo_api_key",
        out=StringIO(),
    )
    contract = Contract.objects.get(buyer=organizations["buyer"])
    assert sorted(contract.lines.values_list("kind", flat=True)) == ["inference", "reserved"]
    # And the compute demo's: GPUs reserved from now (the month's have ended) and an
    # on-demand GPU line, on the same contract, paid with the card the books saved.
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
    compute.seed_compute(buyer=organizations["buyer"], partner=partners[0], out=StringIO())
    assert sorted(contract.lines.values_list("kind", "gpu_count")) == [
        ("inference", 0),
        ("on_demand_gpu", 0),
        ("reserved", compute.RESERVED_GPUS),  # 2
        ("reserved", books.DEMO_BUYER_GPUS),  # 4
    ]
    # Seeding again (a second `make run`) changes nothing.
    assert (
        books.seed_demo_books(organizations=organizations, partners=partners, out=StringIO())
        is None
    )
    assert Invoice.objects.count() == 3


def test_a_demo_seeded_before_the_books_is_left_alone(demo):
    organizations, offers = demo
    buyer = organizations["buyer"]
    ContractFactory(buyer=buyer, starts_at=NOW)
    out = StringIO()
    assert (
        books.seed_closed_month(
            buyer=buyer,
            buyer_owner=User.objects.get(email="buyer@hashgrid.test"),
            offers=offers,
            now=NOW,
            out=out,
        )
        is None
    )
    assert out.getvalue() == (
        "books: the demo buyer's contract begins after 2026-11; no closed month seeded "
        "(`make clean` starts a fresh demo)\n"
    )
    assert Invoice.objects.count() == 0


def test_without_stripe_no_month_is_seeded_but_finance_is_in_its_group(settings):
    settings.STRIPE_SECRET_KEY = ""
    organizations = people.seed_people()
    out = StringIO()
    assert (
        books.seed_closed_month(
            buyer=organizations["buyer"],
            buyer_owner=User.objects.get(email="buyer@hashgrid.test"),
            offers=[],
            out=out,
        )
        is None
    )
    assert out.getvalue() == "books: Stripe is not configured; no closed month seeded\n"
    assert Invoice.objects.count() == 0
    finance = User.objects.get(email="finance@hashgrid.test")
    assert (finance.is_superuser, list(finance.groups.values_list("name", flat=True))) == (
        False,
        ["Finance"],
    )


def test_without_connect_the_statements_stay_approved_and_the_seeder_says_why(
    demo, settings, django_capture_on_commit_callbacks
):
    """``make run`` with localstripe alone: Connect answers 404, so nothing is paid out."""
    settings.STRIPE_CONNECT_API_BASE = ""
    organizations, offers = demo
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        summary = books.seed_closed_month(
            buyer=organizations["buyer"],
            buyer_owner=User.objects.get(email="buyer@hashgrid.test"),
            offers=offers,
            now=NOW,
            out=out,
        )
    assert summary is not None
    assert (summary["statements_approved"], summary["payouts_paid"]) == (2, 0)
    assert Payout.objects.count() == 0
    assert sorted(
        SettlementStatement.objects.values_list("partner__name", "status", "balance_minor")
    ) == [
        ("Andes Hash", StatementStatus.APPROVED, 463_840),
        ("Rift Valley Hash", StatementStatus.APPROVED, 483_840),
    ]
    assert out.getvalue().startswith(
        "books: no payout for Andes Hash: Stripe Connect did not answer ("
    )
