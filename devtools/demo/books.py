"""A closed past month for the demo (issue 16, point 13): finance, buyers and partners
find books to work with the moment ``make run`` is up.

Everything goes through the services the product uses, against the Stripe emulation
``make run`` starts (localstripe, and the Connect emulation when one answers):

1. three buyers save a card the way the card page does (a SetupIntent confirmed at
   localstripe, then ``card_setup_complete``): the demo buyer and Cobalt Robotics a card
   that pays, Borealis Labs one that is declined (4000 0000 0000 0341);
2. each reserves GPUs for the whole month (``reservation_checkout`` dated before it) on
   the partners' offers, whose availability is moved back to that month's start; the
   month's availability is what metering would have stored had it polled the GPUs then
   (every minute up, as ``bench_close`` writes it), so no SLA credit is due;
3. ``close_period`` drafts, finalizes and charges the month: two invoices paid, one in
   dunning (a retry scheduled, its email sent), and drafts the partners' statements;
4. finance approves the statements; the demo partner's statement is paid out through
   Connect when the emulation answers (otherwise it stays approved and the seeder says so);
5. before approving, finance issues one credit note on the demo buyer's invoice (its
   refund is queued) and the close runs again (as the daily beat would), adjusting the
   demo partner's draft statement, so the month reconciles clean.

The month is the latest one whose grace window is over. Idempotent: nothing is done
when that month already has invoices.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from django.conf import settings
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Organization, Role, User
from billing import credit_notes, customers, stripe_gateway
from billing.closing import close_period
from billing.models import Invoice, PaymentStatus, SettlementStatement, StatementStatus
from billing.periods import finalizable_at, month_bounds, month_of, previous_month
from billing.reference_data import GROUP as FINANCE_GROUP
from billing.settlement.payouts import connect_account_sync, onboarding_link, statement_pay
from billing.settlement.statements import statement_approve
from capacity import services as capacity_services
from capacity.metering.models import GpuAvailabilityDay
from capacity.models import GpuDevice, Offer
from contracts.checkout import reservation_checkout
from contracts.models import Contract
from devtools.demo import DEMO_PASSWORD

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

PAYING_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # attaches, then every charge is declined
CREDIT_NOTE_MINOR = 25_000  # $250.00 of goodwill on the demo buyer's invoice
FINANCE_EMAIL = "finance@hashgrid.test"
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class DemoBuyer:
    slug: str
    name: str
    owner_email: str
    card: str
    gpus: int  # reserved for the whole month
    offer: int  # which of the offers (0: the demo partner's)


OTHER_BUYERS = (
    DemoBuyer("borealis-labs", "Borealis Labs", "ops@borealis.test", DECLINED_CARD, 2, 0),
    # Paid, on the second partner's offer: both partners have a statement.
    DemoBuyer("cobalt-robotics", "Cobalt Robotics", "ap@cobalt.test", PAYING_CARD, 4, -1),
)
DEMO_BUYER_GPUS = 4


def closed_month(now: datetime) -> datetime:
    """Start of the latest month whose invoices can be final at ``now``."""
    month = previous_month(month_of(now))
    while finalizable_at(month) > now:
        month = previous_month(month)
    return month_bounds(month)[0]


def finance_user_in_group() -> User | None:
    """The demo finance admin works as the Finance group does: staff with the group's
    permissions, not a superuser (so Celery beat's and MFA's tables stay out of sight)."""
    user = User.objects.filter(email=FINANCE_EMAIL).first()
    if user is None:
        return None
    if user.is_superuser:
        user.is_superuser = False
        user.save(update_fields=["is_superuser"])
    user.groups.add(Group.objects.get(name=FINANCE_GROUP))
    return user


def _owner(email: str, organization: Organization) -> User:
    user, created = User.objects.get_or_create(
        email=email, defaults={"username": email.replace("@", "-").replace(".", "-")}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
    Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": Role.OWNER}
    )
    return user


def _save_card(*, organization: Organization, card: str, actor: User) -> None:
    """What the card page does: a SetupIntent, confirmed by (localstripe's) Stripe.js."""
    intent = customers.card_setup_start(organization=organization)
    response = httpx.post(
        f"{settings.STRIPE_API_BASE.rstrip('/')}/v1/setup_intents/{intent.id}/confirm",
        json={
            "key": settings.STRIPE_PUBLISHABLE_KEY,
            "client_secret": intent.client_secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": card, "exp_month": "12", "exp_year": "2034", "cvc": "123"},
            },
        },
        timeout=10,
    )
    response.raise_for_status()
    customers.card_setup_complete(organization=organization, setup_intent_id=intent.id, actor=actor)


def _observed_up(*, offers: Sequence[Offer], month_start: datetime) -> None:
    """Every GPU of the offers' sites available every minute of the month (metering's
    per-day bitmaps; the fleet simulator has no history to poll for a past month)."""
    first, end = month_start.date(), month_bounds(month_start.date())[1].date()
    days = [first + timedelta(days=offset) for offset in range((end - first).days)]
    gpus = GpuDevice.objects.filter(node__site_id__in={offer.site_id for offer in offers})
    GpuAvailabilityDay.objects.bulk_create(
        [
            GpuAvailabilityDay(gpu_id=gpu_id, day=day, minutes="1" * MINUTES_PER_DAY)
            for gpu_id in gpus.values_list("pk", flat=True)
            for day in days
        ],
        ignore_conflicts=True,
    )


def _pay_out(
    statement: SettlementStatement, *, finance: User | None, out: SupportsWrite[str]
) -> bool:
    """Onboard the partner at the Connect emulation (visiting the onboarding link is what
    the partner's browser does) and pay the statement; False when Connect does not answer."""
    partner = statement.partner
    site = settings.SITE_URL.rstrip("/")
    try:
        link = onboarding_link(
            partner=partner,
            actor=finance,
            return_url=site + reverse("billing:payouts_return"),
            refresh_url=site + reverse("billing:payouts_refresh"),
        )
        httpx.get(link, follow_redirects=False, timeout=10)
        connect_account_sync(partner=partner, actor=finance)
        payout = statement_pay(statement=statement, actor=finance)
    except (stripe_gateway.StripeGatewayError, httpx.HTTPError) as error:
        out.write(
            f"books: no payout for {partner.name}: Stripe Connect did not answer ({error}); "
            "localstripe has no Connect, so the statement stays approved\n"
        )
        return False
    return payout is not None and payout.status == "paid"


def seed_closed_month(
    *,
    buyer: Organization,
    buyer_owner: User,
    offers: Sequence[Offer],
    now: datetime | None = None,
    out: SupportsWrite[str] = sys.stdout,
) -> dict[str, object] | None:
    """Close a past month with paid invoices, one in dunning, approved statements, a
    payout and a credit note. ``offers``: one per partner, the first the demo partner's.
    None when Stripe is not configured or the month was seeded before."""
    now = now or timezone.now()
    finance = finance_user_in_group()
    if not stripe_gateway.is_configured():
        out.write("books: Stripe is not configured; no closed month seeded\n")
        return None
    month_start = closed_month(now)
    month = month_start.date()
    if Invoice.objects.filter(month=month).exists():
        return None
    later = Contract.objects.filter(buyer=buyer).open().filter(starts_at__gt=month_start)
    if later.exists():  # a demo seeded before this module: its checkout would join it
        out.write(
            f"books: the demo buyer's contract begins after {month:%Y-%m}; no closed month "
            "seeded (`make clean` starts a fresh demo)\n"
        )
        return None
    bought_at = month_start - timedelta(hours=1)
    reservations = [(buyer, buyer_owner, PAYING_CARD, DEMO_BUYER_GPUS, offers[0])]
    for spec in OTHER_BUYERS:
        organization, _ = Organization.objects.get_or_create(
            slug=spec.slug, defaults={"name": spec.name, "is_buyer": True, "is_partner": False}
        )
        owner = _owner(spec.owner_email, organization)
        reservations.append((organization, owner, spec.card, spec.gpus, offers[spec.offer]))
    for offer in offers:  # sold since before the month
        if offer.available_from > month_start:
            capacity_services.offer_update(
                offer=offer, actor=None, data={"available_from": month_start}
            )
    for organization, owner, card, gpus, offer in reservations:
        _save_card(organization=organization, card=card, actor=owner)
        reservation_checkout(
            buyer=organization,
            offer=Offer.objects.get(pk=offer.pk),
            gpu_count=gpus,
            starts_at=month_start,
            term_months=1,
            actor=owner,
            now=bought_at,
        )
    _observed_up(offers=offers, month_start=month_start)
    result = close_period(month=month, now=now)
    demo_invoice = Invoice.objects.get(buyer=buyer, month=month)
    note = None
    if demo_invoice.payment_status == PaymentStatus.PAID:
        note = credit_notes.credit_note_issue(
            invoice=demo_invoice,
            amount_minor=CREDIT_NOTE_MINOR,
            reason="Goodwill: a node was slow to come back after maintenance",
            actor=finance,
            now=now,
        )
    # The daily close runs again: the credit note is adjusted on the draft statement.
    close_period(month=month, now=now)
    statements = list(
        SettlementStatement.objects.filter(month=month, status=StatementStatus.DRAFT)
        .select_related("partner")
        .order_by("pk")
    )
    for statement in statements:
        statement_approve(statement=statement, actor=finance, now=now)
    demo_partner_id = offers[0].site.organization_id
    paid_out = [
        statement
        for statement in statements
        if statement.partner_id == demo_partner_id
        and _pay_out(SettlementStatement.objects.get(pk=statement.pk), finance=finance, out=out)
    ]
    summary = {
        "month": f"{month:%Y-%m}",
        "invoices": Invoice.objects.filter(month=month).count(),
        "charged": result.charged,
        "in_dunning": result.charge_failures,
        "statements_approved": len(statements),
        "payouts_paid": len(paid_out),
        "credit_note": note.number if note else None,
    }
    out.write(
        f"books: {summary['month']} closed: {summary['invoices']} invoices, "
        f"{summary['charged']} paid, {summary['in_dunning']} in dunning, "
        f"{summary['statements_approved']} statements approved, "
        f"{summary['payouts_paid']} payout(s), credit note {summary['credit_note']}\n"
    )
    return summary


def seed_demo_books(
    *,
    organizations: dict[str, Organization],
    partners: Sequence[Organization],
    out: SupportsWrite[str],
) -> dict[str, object] | None:
    """``seed_demo``'s entry: the closed month on each partner's first offer."""
    offers = [
        Offer.objects.filter(site__organization=partner, gpu_count__gte=DEMO_BUYER_GPUS)
        .select_related("site")
        .order_by("pk")
        .first()
        for partner in partners
    ]
    if any(offer is None for offer in offers):
        finance_user_in_group()
        out.write("books: a demo partner has no offer; no closed month seeded\n")
        return None
    return seed_closed_month(
        buyer=organizations["buyer"],
        buyer_owner=User.objects.get(email="buyer@hashgrid.test"),
        offers=[offer for offer in offers if offer is not None],
        out=out,
    )
