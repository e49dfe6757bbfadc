"""Every lifecycle transition, and every refused one changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict

from accounts.models import AuditEvent
from contracts import lifecycle
from contracts.checkout import reservation_checkout
from contracts.models import Allocation, Contract, ContractLine, ContractState
from contracts.selectors import window
from tests.factories import ContractFactory, OfferFactory

NOW = datetime(2025, 3, 1, tzinfo=UTC)
TERM_END = datetime(2025, 4, 1, tzinfo=UTC)


@pytest.fixture
def offer_march(site, devices):
    return OfferFactory(
        site=site,
        gpu_count=8,
        available_from=datetime(2025, 1, 1, tzinfo=UTC),
        reserved_price_1m_per_gpu_hour=Decimal("2.0000"),
    )


@pytest.fixture
def contract(offer_march, buyer_org, buyer_owner):
    return reservation_checkout(
        buyer=buyer_org,
        offer=offer_march,
        gpu_count=2,
        starts_at=NOW,
        term_months=1,
        actor=buyer_owner,
        now=NOW,
    ).contract


def snapshot():
    return (
        [model_to_dict(c) for c in Contract.objects.order_by("pk")],
        [model_to_dict(line) for line in ContractLine.objects.order_by("pk")],
        sorted((a.gpu_device_id, a.period.lower, a.period.upper) for a in Allocation.objects.all()),
        AuditEvent.objects.count(),
    )


def refused(call, match):
    before = snapshot()
    with pytest.raises(ValidationError, match=match):
        call()
    assert snapshot() == before


def last_action():
    return AuditEvent.objects.order_by("-pk").values_list("action", flat=True).first()


class TestActivate:
    def test_draft_to_active(self, buyer_org, buyer_owner, offer_march):
        draft = ContractFactory(buyer=buyer_org, state=ContractState.DRAFT)
        ContractLine.objects.create(
            contract=draft,
            kind="on_demand_gpu",
            offer=offer_march,
            price_per_gpu_hour=Decimal("2.4"),
            starts_at=NOW,
        )
        activated = lifecycle.contract_activate(contract=draft, actor=buyer_owner, now=NOW)
        assert (activated.state, activated.activated_at) == (ContractState.ACTIVE, NOW)
        assert last_action() == "contract.activated"

    def test_refused_when_already_active(self, contract, buyer_owner):
        refused(
            lambda: lifecycle.contract_activate(contract=contract, actor=buyer_owner),
            "it is active",
        )

    def test_refused_without_lines(self, buyer_org, buyer_owner):
        draft = ContractFactory(buyer=buyer_org, state=ContractState.DRAFT)
        refused(lambda: lifecycle.contract_activate(contract=draft, actor=buyer_owner), "line")

    def test_refused_without_payment_method(self, settings, buyer_org, buyer_owner, offer_march):
        draft = ContractFactory(buyer=buyer_org, state=ContractState.DRAFT)
        ContractLine.objects.create(
            contract=draft,
            kind="on_demand_gpu",
            offer=offer_march,
            price_per_gpu_hour=Decimal("2.4"),
            starts_at=NOW,
        )
        settings.CONTRACTS_ASSUME_PAYMENT_METHOD = False
        refused(
            lambda: lifecycle.contract_activate(contract=draft, actor=buyer_owner),
            "payment method",
        )


class TestSuspendResume:
    def test_suspend_then_resume(self, contract, buyer_owner):
        suspended = lifecycle.contract_suspend(
            contract=contract, actor=None, reason="Invoice HG-2025-0001 unpaid"
        )
        assert suspended.state == ContractState.SUSPENDED
        assert suspended.suspension_reason == "Invoice HG-2025-0001 unpaid"
        assert last_action() == "contract.suspended"
        resumed = lifecycle.contract_resume(contract=suspended, actor=None)
        assert (resumed.state, resumed.suspended_at, resumed.suspension_reason) == (
            ContractState.ACTIVE,
            None,
            "",
        )
        assert last_action() == "contract.resumed"

    def test_suspend_refused_when_suspended(self, contract):
        lifecycle.contract_suspend(contract=contract, actor=None, reason="unpaid")
        refused(
            lambda: lifecycle.contract_suspend(contract=contract, actor=None, reason="again"),
            "it is suspended",
        )

    def test_resume_refused_when_active(self, contract):
        refused(lambda: lifecycle.contract_resume(contract=contract, actor=None), "it is active")

    def test_suspend_refused_when_cancelled(self, contract):
        lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=False, now=NOW)
        refused(
            lambda: lifecycle.contract_suspend(contract=contract, actor=None, reason="x"),
            "it is cancelled",
        )

    def test_stale_object_cannot_win(self, contract):
        """Two actors load the contract; the second one's transition is refused."""
        stale = Contract.objects.get(pk=contract.pk)
        lifecycle.contract_suspend(contract=contract, actor=None, reason="first")
        refused(
            lambda: lifecycle.contract_suspend(contract=stale, actor=None, reason="second"),
            "it is suspended",
        )


class TestCancel:
    def test_at_term_end_keeps_it_running_then_cancels(self, contract, buyer_owner):
        scheduled = lifecycle.contract_cancel(
            contract=contract, actor=buyer_owner, at_term_end=True
        )
        assert (scheduled.state, scheduled.cancel_at_term_end, scheduled.auto_renew) == (
            ContractState.ACTIVE,
            True,
            False,
        )
        assert last_action() == "contract.cancellation_scheduled"
        assert Allocation.objects.count() == 2
        counts = lifecycle.contracts_roll_over(now=TERM_END)
        assert counts["cancelled"] == 1
        contract.refresh_from_db()
        assert (contract.state, contract.ended_at) == (ContractState.CANCELLED, TERM_END)
        assert contract.early_termination_fee_minor == 0

    def test_at_term_end_twice_is_refused(self, contract):
        lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=True)
        refused(
            lambda: lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=True),
            "already scheduled",
        )

    def test_early_charges_the_fee_and_frees_the_gpus(self, contract, buyer_owner):
        cancel_at = datetime(2025, 3, 11, tzinfo=UTC)
        cancelled = lifecycle.contract_cancel(
            contract=contract, actor=buyer_owner, at_term_end=False, now=cancel_at
        )
        # Remaining: 2 GPUs x 21 days x 24 h x 2.00 = 2016.00; 25 % fee = 504.00.
        assert cancelled.state == ContractState.CANCELLED
        assert cancelled.early_termination_fee_minor == 50400
        periods = {a.period for a in Allocation.objects.all()}
        assert periods == {window(NOW, cancel_at)}
        assert ContractLine.objects.filter(ended_at=cancel_at).count() == 1
        event = AuditEvent.objects.get(action="contract.cancelled")
        assert event.data["early_termination_fee_minor"] == 50400
        assert event.data["released_gpus"] == 2

    def test_early_before_start_deletes_allocations(self, contract):
        lifecycle.contract_cancel(
            contract=contract, actor=None, at_term_end=False, now=datetime(2025, 2, 1, tzinfo=UTC)
        )
        assert not Allocation.objects.exists()

    def test_cancel_refused_when_cancelled(self, contract):
        lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=False, now=NOW)
        refused(
            lambda: lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=False),
            "it is cancelled",
        )

    def test_draft_cancels_without_fee(self, buyer_org):
        draft = ContractFactory(buyer=buyer_org, state=ContractState.DRAFT)
        cancelled = lifecycle.contract_cancel(
            contract=draft, actor=None, at_term_end=False, now=NOW
        )
        assert (cancelled.state, cancelled.early_termination_fee_minor) == (
            ContractState.CANCELLED,
            0,
        )


class TestRenewAndExpire:
    def test_auto_renew_extends_term_and_allocations(self, contract):
        counts = lifecycle.contracts_roll_over(now=TERM_END)
        assert counts["renewed"] == 1
        contract.refresh_from_db()
        new_end = datetime(2025, 5, 1, tzinfo=UTC)
        assert (contract.state, contract.term_ends_at, contract.renewal_count) == (
            ContractState.ACTIVE,
            new_end,
            1,
        )
        assert sorted(a.period for a in Allocation.objects.all()) == sorted(
            [window(NOW, TERM_END)] * 2 + [window(TERM_END, new_end)] * 2
        )
        assert ContractLine.objects.get().ends_at == new_end
        assert last_action() == "contract.renewed"

    def test_roll_over_twice_changes_nothing_more(self, contract):
        lifecycle.contracts_roll_over(now=TERM_END)
        before = snapshot()
        assert lifecycle.contracts_roll_over(now=TERM_END) == {
            "renewed": 0,
            "expired": 0,
            "cancelled": 0,
            "refused": 0,
        }
        assert snapshot() == before

    def test_without_auto_renew_it_expires(self, contract):
        Contract.objects.filter(pk=contract.pk).update(auto_renew=False)
        lifecycle.contracts_roll_over(now=TERM_END)
        contract.refresh_from_db()
        assert (contract.state, contract.ended_at) == (ContractState.EXPIRED, TERM_END)
        assert last_action() == "contract.expired"

    def test_end_term_refused_before_term_end(self, contract):
        refused(lambda: lifecycle.contract_end_term(contract=contract, now=NOW), "term of contract")

    def test_renew_refused_when_cancellation_scheduled(self, contract):
        lifecycle.contract_cancel(contract=contract, actor=None, at_term_end=True)
        refused(
            lambda: lifecycle.contract_renew(contract=contract, actor=None), "cannot be renewed"
        )

    def test_renew_refused_when_suspended(self, contract):
        lifecycle.contract_suspend(contract=contract, actor=None, reason="unpaid")
        refused(lambda: lifecycle.contract_renew(contract=contract, actor=None), "it is suspended")

    def test_renew_refused_when_gpus_booked_next_term(self, contract, offer_march, other_org):
        held = set(Allocation.objects.values_list("gpu_device_id", flat=True))
        # Someone else books all 8 GPUs from term end: our 2 are among them only if free,
        # so book the other 6 plus ours by reserving everything after the term.
        reservation_checkout(
            buyer=other_org,
            offer=offer_march,
            gpu_count=6,
            starts_at=NOW,
            term_months=1,
            actor=None,
            now=NOW,
        )
        reservation_checkout(
            buyer=other_org,
            offer=offer_march,
            gpu_count=8,
            starts_at=TERM_END,
            term_months=1,
            actor=None,
            now=NOW,
        )
        assert held <= set(
            Allocation.objects.filter(period__startswith=TERM_END).values_list(
                "gpu_device_id", flat=True
            )
        )
        refused(
            lambda: lifecycle.contract_renew(contract=contract, actor=None),
            "reserved by another buyer",
        )
        # At term end it therefore expires instead of renewing.
        lifecycle.contract_end_term(contract=contract, now=TERM_END)
        contract.refresh_from_db()
        assert contract.state == ContractState.EXPIRED


class TestAmend:
    def test_add_gpus_from_a_date(self, contract):
        line = contract.lines.get()
        effective = datetime(2025, 3, 15, tzinfo=UTC)
        lifecycle.contract_amend(
            contract=contract, actor=None, line=line, add_gpus=2, effective_at=effective, now=NOW
        )
        line.refresh_from_db()
        assert line.gpu_count == 4
        assert Allocation.objects.filter(period=window(effective, TERM_END)).count() == 2
        assert last_action() == "contract.amended"

    def test_remove_gpus_from_a_date(self, contract):
        line = contract.lines.get()
        effective = datetime(2025, 3, 15, tzinfo=UTC)
        lifecycle.contract_amend(
            contract=contract, actor=None, line=line, remove_gpus=1, effective_at=effective, now=NOW
        )
        line.refresh_from_db()
        assert line.gpu_count == 1
        assert sorted(a.period for a in Allocation.objects.all()) == sorted(
            [window(NOW, TERM_END), window(NOW, effective)]
        )

    def test_change_commitment(self, contract):
        amended = lifecycle.contract_amend(
            contract=contract,
            actor=None,
            monthly_commitment_minor=500000,
            effective_at=NOW,
            now=NOW,
        )
        assert amended.monthly_commitment_minor == 500000
        event = AuditEvent.objects.get(action="contract.amended")
        assert event.data["previous_commitment_minor"] == 0

    def test_refused_when_not_enough_free_gpus(self, contract):
        line = contract.lines.get()
        refused(
            lambda: lifecycle.contract_amend(
                contract=contract, actor=None, line=line, add_gpus=7, effective_at=NOW, now=NOW
            ),
            "Only 6 GPUs",
        )

    def test_refused_in_the_past(self, contract):
        refused(
            lambda: lifecycle.contract_amend(
                contract=contract,
                actor=None,
                monthly_commitment_minor=1,
                effective_at=datetime(2025, 2, 1, tzinfo=UTC),
                now=NOW,
            ),
            "past",
        )

    def test_refused_removing_every_gpu(self, contract):
        line = contract.lines.get()
        refused(
            lambda: lifecycle.contract_amend(
                contract=contract, actor=None, line=line, remove_gpus=2, effective_at=NOW, now=NOW
            ),
            "cancel the contract",
        )

    def test_refused_when_suspended(self, contract):
        lifecycle.contract_suspend(contract=contract, actor=None, reason="unpaid")
        refused(
            lambda: lifecycle.contract_amend(
                contract=contract, actor=None, monthly_commitment_minor=1, effective_at=NOW, now=NOW
            ),
            "Only an active contract",
        )
