"""Checkout: quote arithmetic to the cent, one transaction, the exclusion constraint."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import AuditEvent
from capacity import services as capacity_services
from capacity.models import Offer
from contracts.checkout import QuoteChanged, QuotedPrice, reservation_checkout, reservation_quote
from contracts.models import Allocation, Contract, ContractLine, ContractState
from contracts.money import round_money
from contracts.selectors import window
from tests.factories import OfferFactory, SiteFactory, gpu_pool

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def offer_now(site, devices):
    return OfferFactory(
        site=site,
        gpu_count=8,
        available_from=datetime(2025, 1, 1, tzinfo=UTC),
        reserved_price_1m_per_gpu_hour=Decimal("2.0417"),
        reserved_price_3m_per_gpu_hour=Decimal("1.9000"),
    )


class TestRoundMoney:
    def test_half_up_once(self):
        assert round_money(Decimal("1.005")) == 101
        assert round_money(Decimal("1.0049999")) == 100
        assert round_money(Decimal("-1.005")) == -101
        assert round_money(Decimal("0")) == 0

    def test_refuses_float(self):
        with pytest.raises(TypeError):
            round_money(1.5)  # type: ignore[arg-type]


class TestQuote:
    def test_one_month_exact_cents(self, offer_now):
        # 10 Mar 12:00 → 10 Apr 12:00 = 31 days = 744 h; 3 GPUs x 744 h x 2.0417 = 4557.0744
        quote = reservation_quote(
            offer=offer_now, gpu_count=3, starts_at=NOW, term_months=1, now=NOW
        )
        assert quote.ends_at == datetime(2025, 4, 10, 12, 0, tzinfo=UTC)
        assert quote.hours_per_gpu == Decimal(744)
        assert quote.total_minor == 455707
        assert quote.monthly_average_minor == 455707
        assert quote.price_per_gpu_hour == Decimal("2.0417")
        assert quote.free_gpus == 8

    def test_partial_hours_round_once(self, offer_now):
        start = datetime(2025, 3, 10, 12, 0, 30, tzinfo=UTC)
        # Three months: 10 Mar 12:00:30 → 10 Jun 12:00:30 = 92 days = 2208 h exactly.
        quote = reservation_quote(
            offer=offer_now, gpu_count=1, starts_at=start, term_months=3, now=NOW
        )
        assert quote.hours_per_gpu == Decimal(2208)
        assert quote.total_minor == 419520  # 2208 x 1.9000 = 4195.20
        # 4195.20 / 3 = 1398.40
        assert quote.monthly_average_minor == 139840

    def test_month_end_clamps(self, offer_now):
        start = datetime(2025, 1, 31, tzinfo=UTC)
        quote = reservation_quote(
            offer=offer_now, gpu_count=1, starts_at=start, term_months=1, now=start
        )
        assert quote.ends_at == datetime(2025, 2, 28, tzinfo=UTC)
        # 28 days = 672 h x 2.0417 = 1372.0224 → 1372.02
        assert quote.total_minor == 137202

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"term_months": 2}, "term_months"),
            ({"gpu_count": 0}, "gpu_count"),
            ({"gpu_count": 9}, "gpu_count"),
            ({"starts_at": datetime(2025, 3, 9, tzinfo=UTC)}, "starts_at"),
        ],
    )
    def test_refuses_impossible_requests(self, offer_now, changes, field):
        request = {"gpu_count": 1, "starts_at": NOW, "term_months": 1, **changes}
        with pytest.raises(ValidationError) as error:
            reservation_quote(offer=offer_now, now=NOW, **request)
        assert field in error.value.message_dict


class TestCheckout:
    def test_creates_active_contract_line_and_allocations(self, offer_now, buyer_org, buyer_owner):
        result = reservation_checkout(
            buyer=buyer_org,
            offer=offer_now,
            gpu_count=3,
            starts_at=NOW,
            term_months=1,
            actor=buyer_owner,
            now=NOW,
        )
        contract = Contract.objects.get()
        assert result.contract == contract
        assert contract.state == ContractState.ACTIVE
        assert contract.term_ends_at == datetime(2025, 4, 10, 12, tzinfo=UTC)
        line = ContractLine.objects.get()
        assert (line.gpu_count, line.price_per_gpu_hour) == (3, Decimal("2.0417"))
        periods = set(Allocation.objects.values_list("period", flat=True))
        assert periods == {window(NOW, datetime(2025, 4, 10, 12, tzinfo=UTC))}
        assert Allocation.objects.values("gpu_device").distinct().count() == 3
        assert result.quote.total_minor == 455707
        actions = list(AuditEvent.objects.order_by("pk").values_list("action", flat=True))
        assert actions == ["reservation.created", "contract.activated"]

    def test_second_checkout_adds_a_line_to_the_open_contract(
        self, offer_now, buyer_org, buyer_owner
    ):
        for term in (1, 3):
            reservation_checkout(
                buyer=buyer_org,
                offer=offer_now,
                gpu_count=2,
                starts_at=NOW,
                term_months=term,
                actor=buyer_owner,
                now=NOW,
            )
        contract = Contract.objects.get()
        assert contract.lines.count() == 2
        assert contract.term_ends_at == datetime(2025, 6, 10, 12, tzinfo=UTC)
        assert Allocation.objects.values("gpu_device").distinct().count() == 4

    def test_not_enough_free_gpus_changes_nothing(
        self, offer_now, buyer_org, other_org, buyer_owner
    ):
        reservation_checkout(
            buyer=other_org,
            offer=offer_now,
            gpu_count=6,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        before = (
            Contract.objects.count(),
            ContractLine.objects.count(),
            Allocation.objects.count(),
        )
        with pytest.raises(ValidationError, match="Only 2 GPUs of this offer are free"):
            reservation_checkout(
                buyer=buyer_org,
                offer=offer_now,
                gpu_count=3,
                starts_at=NOW,
                term_months=1,
                actor=buyer_owner,
                now=NOW,
            )
        after = (Contract.objects.count(), ContractLine.objects.count(), Allocation.objects.count())
        assert after == before
        assert not Contract.objects.filter(buyer=buyer_org).exists()

    def test_requires_a_payment_method(self, settings, offer_now, buyer_org, buyer_owner):
        settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
        with pytest.raises(ValidationError, match="payment method"):
            reservation_checkout(
                buyer=buyer_org,
                offer=offer_now,
                gpu_count=1,
                starts_at=NOW,
                term_months=1,
                actor=buyer_owner,
                now=NOW,
            )
        assert not Contract.objects.exists()

    def test_retired_nodes_are_never_allocated(self, offer_now, devices, buyer_org):
        node = devices[0].node
        node.status = "retired"
        node.save()
        result = reservation_checkout(
            buyer=buyer_org,
            offer=offer_now,
            gpu_count=4,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        assert {a.gpu_device.node_id for a in result.allocations} == {devices[4].node_id}

    def test_later_window_reuses_gpus(self, offer_now, buyer_org, other_org):
        reservation_checkout(
            buyer=other_org,
            offer=offer_now,
            gpu_count=8,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        # [10 Apr 12:00, …) touches but does not overlap [10 Mar 12:00, 10 Apr 12:00).
        result = reservation_checkout(
            buyer=buyer_org,
            offer=offer_now,
            gpu_count=8,
            starts_at=datetime(2025, 4, 10, 12, tzinfo=UTC),
            term_months=1,
            actor=None,
            now=NOW,
        )
        assert len(result.allocations) == 8


class TestTiedToTheQuote:
    """Issue 13 #5: checkout prices the offer row it locks and refuses a changed price."""

    def _checkout(self, offer, buyer, quoted):
        return reservation_checkout(
            buyer=buyer,
            offer=offer,
            gpu_count=3,
            starts_at=NOW,
            term_months=1,
            actor=None,
            quoted=quoted,
            now=NOW,
        )

    def test_the_quote_confirms(self, offer_now, buyer_org):
        quote = reservation_quote(
            offer=offer_now, gpu_count=3, starts_at=NOW, term_months=1, now=NOW
        )
        quoted = QuotedPrice(
            price_per_gpu_hour=quote.price_per_gpu_hour,
            currency=quote.currency,
            total_minor=quote.total_minor,
        )
        assert (quoted.price_per_gpu_hour, quoted.total_minor) == (Decimal("2.0417"), 455707)
        result = self._checkout(offer_now, buyer_org, quoted)
        assert result.line.price_per_gpu_hour == Decimal("2.0417")

    def test_the_callers_stale_copy_of_the_offer_is_not_what_is_sold(self, offer_now, buyer_org):
        stale = Offer.objects.get(pk=offer_now.pk)  # read before the partner's change
        capacity_services.offer_update(
            offer=offer_now,
            actor=None,
            data={
                "on_demand_price_per_gpu_hour": Decimal("9.9000"),
                "reserved_price_1m_per_gpu_hour": Decimal("9.5000"),
            },
        )
        with pytest.raises(QuoteChanged) as refused:
            self._checkout(stale, buyer_org, QuotedPrice(price_per_gpu_hour=Decimal("2.0417")))
        assert refused.value.code == "quote_changed"
        assert (refused.value.quote.price_per_gpu_hour, refused.value.quote.free_gpus) == (
            Decimal("9.5000"),
            8,
        )
        assert not ContractLine.objects.exists() and not Contract.objects.exists()
        # Without a quote (an old API client) the price sold is the row's, never the copy's.
        assert self._checkout(stale, buyer_org, None).line.price_per_gpu_hour == Decimal("9.5000")

    def test_a_currency_change_refuses(self, offer_now, buyer_org):
        capacity_services.offer_update(offer=offer_now, actor=None, data={"currency": "EUR"})
        with pytest.raises(QuoteChanged) as refused:
            self._checkout(
                offer_now,
                buyer_org,
                QuotedPrice(price_per_gpu_hour=Decimal("2.0417"), currency="USD"),
            )
        assert refused.value.messages == [
            "The price changed since your quote: it was 2.0417 USD per GPU-hour, it is now "
            "2.0417 EUR per GPU-hour, 4557.07 EUR for the term. Nothing was reserved; check the "
            "new price and confirm again."
        ]
        assert not Contract.objects.exists()


class TestExclusionConstraint:
    def test_database_refuses_overlapping_allocation(self, offer_now, buyer_org):
        result = reservation_checkout(
            buyer=buyer_org,
            offer=offer_now,
            gpu_count=1,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        allocation = result.allocations[0]
        with pytest.raises(IntegrityError), transaction.atomic():
            Allocation.objects.create(
                line=result.line,
                gpu_device_id=allocation.gpu_device_id,
                period=window(
                    datetime(2025, 4, 10, 11, 59, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC)
                ),
            )

    def test_other_site_pool_is_separate(self, offer_now, buyer_org, partner_org):
        other_site = SiteFactory(organization=partner_org, name="Oman 1")
        gpu_pool(site=other_site, gpus=2)
        other_offer = OfferFactory(
            site=other_site, gpu_count=2, available_from=datetime(2025, 1, 1, tzinfo=UTC)
        )
        result = reservation_checkout(
            buyer=buyer_org,
            offer=other_offer,
            gpu_count=2,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        assert {a.gpu_device.node.site_id for a in result.allocations} == {other_site.pk}
