"""Contract lifecycle: draft → active → (suspended ↔ active) → cancelled | expired.

Every transition is one conditional ``UPDATE … WHERE state IN (expected)``: two people (or
a person and the period task) acting at once cannot both win, and an illegal transition
changes nothing and says why. Each one writes an audit event.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.audit import audit_event, record
from accounts.models import AuditEvent, User
from contracts import selectors
from contracts.allocations import CapacityUnavailable, allocate_gpus, release_from
from contracts.models import (
    OPEN_STATES,
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    LineKind,
)
from contracts.money import reserved_charge, round_money
from contracts.selectors import buyer_has_payment_method
from contracts.terms import add_months
from contracts.workloads import line_workloads_end, workloads_end_with_lines

# An amendment "effective now" submitted a few minutes later is still accepted.
AMENDMENT_GRACE = timedelta(minutes=15)


class IllegalTransition(ValidationError):
    """The contract is not in a state this action starts from."""


def _labels(states: Iterable[str]) -> str:
    return " or ".join(ContractState(state).label.lower() for state in states)


def _transition(
    *,
    contract: Contract,
    from_states: tuple[str, ...],
    to_state: str,
    verb: str,
    extra_filter: dict[str, object] | None = None,
    **changes: object,
) -> Contract:
    """Move ``contract`` to ``to_state`` if it is in one of ``from_states``; else refuse."""
    updated = Contract.objects.filter(
        pk=contract.pk, state__in=from_states, **(extra_filter or {})
    ).update(state=to_state, **changes)
    if not updated:
        current = Contract.objects.filter(pk=contract.pk).values_list("state", flat=True).first()
        current_label = ContractState(current).label.lower() if current else "deleted"
        raise IllegalTransition(
            f"Cannot {verb} contract {contract.reference}: it is {current_label} "
            f"(this needs a contract that is {_labels(from_states)}).",
            code="illegal_transition",
        )
    contract.refresh_from_db()
    return contract


def _event(action: str, *, contract: Contract, actor: User | None, **data: object) -> AuditEvent:
    return audit_event(
        action=f"contract.{action}",
        actor=actor,
        organization=contract.buyer,
        target=contract,
        reference=contract.reference,
        **data,
    )


def _audit(action: str, *, contract: Contract, actor: User | None, **data: object) -> None:
    record(_event(action, contract=contract, actor=actor, **data))


@transaction.atomic
def contract_activate(
    *, contract: Contract, actor: User | None, now: datetime | None = None
) -> Contract:
    """Draft → active: the buyer signed. Needs a line and a saved payment method."""
    now = now or timezone.now()
    if not contract.lines.exists():
        raise ValidationError("A contract needs at least one line to be activated.", code="empty")
    if not buyer_has_payment_method(contract.buyer):
        raise ValidationError("Add a payment method first.", code="no_payment_method")
    contract = _transition(
        contract=contract,
        from_states=(ContractState.DRAFT,),
        to_state=ContractState.ACTIVE,
        verb="activate",
        activated_at=now,
    )
    _audit("activated", contract=contract, actor=actor)
    return contract


def signed_activation_event(*, contract: Contract, actor: User | None) -> AuditEvent:
    """The unsaved ``contract.activated`` record of a contract born active: checkout inserts
    the contract it signs as active (its first line and the payment check are in the same
    transaction, so no one ever sees it as a draft) and writes this with its own records."""
    return _event("activated", contract=contract, actor=actor)


@transaction.atomic
def contract_suspend(*, contract: Contract, actor: User | None, reason: str) -> Contract:
    """Active → suspended (unpaid invoices at the end of dunning; staff action).

    API keys of its on-demand lines stop being honoured and attributed; reservations stay
    held and are flagged on the buyer's pages until the contract is resumed. Its on-demand
    instances stop now (billed per second held, they would go on costing what the buyer
    is not paying, and hold the partner's GPUs); the buyer starts new ones once resumed.
    """
    now = timezone.now()
    contract = _transition(
        contract=contract,
        from_states=(ContractState.ACTIVE,),
        to_state=ContractState.SUSPENDED,
        verb="suspend",
        suspended_at=now,
        suspension_reason=reason[:200],
    )
    _audit("suspended", contract=contract, actor=actor, reason=reason)
    line_workloads_end(
        line_ids=contract.lines.filter(kind=LineKind.ON_DEMAND_GPU).values_list("pk", flat=True),
        at=now,
        reason="The contract was suspended.",
    )
    return contract


@transaction.atomic
def contract_resume(*, contract: Contract, actor: User | None) -> Contract:
    """Suspended → active (the overdue invoice was paid)."""
    contract = _transition(
        contract=contract,
        from_states=(ContractState.SUSPENDED,),
        to_state=ContractState.ACTIVE,
        verb="resume",
        suspended_at=None,
        suspension_reason="",
    )
    _audit("resumed", contract=contract, actor=actor)
    return contract


def _current_reserved_lines(contract: Contract) -> list[ContractLine]:
    return list(
        ContractLine.objects.select_for_update()
        .filter(contract=contract, kind=LineKind.RESERVED, ended_at__isnull=True)
        .order_by("pk")
    )


def early_termination_fee(*, contract: Contract, at: datetime) -> tuple[int, Decimal]:
    """Fee for ending ``contract`` at ``at``: ``early_termination_fee_percent`` of the reserved
    charge left after ``at`` (GPUs held x hours left x rate). Returns (fee in minor units,
    the exact remaining charge it is a percentage of)."""
    remaining = Decimal(0)
    lines = contract.lines.filter(kind=LineKind.RESERVED, ended_at__isnull=True)
    for line in lines:
        assert line.ends_at is not None and line.price_per_gpu_hour is not None
        start = max(at, line.starts_at)
        if line.ends_at > start:
            remaining += reserved_charge(
                gpu_count=line.gpu_count,
                start=start,
                end=line.ends_at,
                rate=line.price_per_gpu_hour,
            )
    fee = remaining * contract.early_termination_fee_percent / Decimal(100)
    return round_money(fee), remaining


def _end_lines(*, contract: Contract, at: datetime) -> int:
    """End every current line at ``at`` and release its GPUs from then on."""
    allocations = list(
        Allocation.objects.select_for_update().filter(line__contract=contract).order_by("pk")
    )
    released = release_from(allocations=allocations, moment=at)
    ending = list(
        ContractLine.objects.filter(contract=contract, ended_at__isnull=True).values_list(
            "pk", flat=True
        )
    )
    ContractLine.objects.filter(pk__in=ending).update(ended_at=at)
    line_workloads_end(line_ids=ending, at=at)
    return released


@transaction.atomic
def contract_cancel(
    *,
    contract: Contract,
    actor: User | None,
    at_term_end: bool,
    now: datetime | None = None,
) -> Contract:
    """Cancel at the end of the current term (no renewal) or now, with the early fee.

    At term end: the contract stays active until ``term_ends_at``; the period task then
    cancels it. Early: the contract is cancelled now, its reservations end now (the GPUs
    become free), and the fee the contract defines is recorded for billing to invoice.
    A draft has no fee.
    """
    now = now or timezone.now()
    if at_term_end:
        scheduled = Contract.objects.filter(
            pk=contract.pk,
            state__in=(ContractState.ACTIVE, ContractState.SUSPENDED),
            cancel_at_term_end=False,
        ).update(cancel_at_term_end=True, auto_renew=False)
        contract.refresh_from_db()
        if not scheduled:
            reason = (
                "its cancellation is already scheduled"
                if contract.cancel_at_term_end
                else f"it is {contract.get_state_display().lower()}"
            )
            raise IllegalTransition(
                f"Cannot cancel contract {contract.reference} at term end: {reason}.",
                code="illegal_transition",
            )
        _audit(
            "cancellation_scheduled",
            contract=contract,
            actor=actor,
            effective_at=contract.term_ends_at.isoformat(),
        )
        return contract
    locked = Contract.objects.select_for_update().get(pk=contract.pk)
    fee_minor = 0
    remaining = Decimal(0)
    if locked.state != ContractState.DRAFT:
        fee_minor, remaining = early_termination_fee(contract=locked, at=now)
    contract = _transition(
        contract=locked,
        from_states=OPEN_STATES,
        to_state=ContractState.CANCELLED,
        verb="cancel",
        ended_at=now,
        early_termination_fee_minor=fee_minor,
        auto_renew=False,
    )
    released = _end_lines(contract=contract, at=now)
    _audit(
        "cancelled",
        contract=contract,
        actor=actor,
        early=True,
        early_termination_fee_minor=fee_minor,
        remaining_reserved_charge=str(remaining),
        released_gpus=released,
    )
    return contract


@transaction.atomic
def contract_renew(*, contract: Contract, actor: User | None) -> Contract:
    """Add one term: the contract and its reserved lines that end with the term continue
    on the same GPUs until the new term end.

    Refused when a cancellation is scheduled, when the contract is not active, or when one
    of the GPUs is booked by someone else in the next term (nothing changes then).
    """
    locked = Contract.objects.select_for_update().get(pk=contract.pk)
    old_end = locked.term_ends_at
    new_end = add_months(old_end, locked.term_months)
    if locked.cancel_at_term_end:
        raise IllegalTransition(
            f"Contract {locked.reference} is set to end at its term end; it cannot be renewed.",
            code="illegal_transition",
        )
    renewed = _transition(
        contract=locked,
        from_states=(ContractState.ACTIVE,),
        to_state=ContractState.ACTIVE,
        verb="renew",
        extra_filter={"term_ends_at": old_end, "cancel_at_term_end": False},
        term_ends_at=new_end,
        renewal_count=locked.renewal_count + 1,
    )
    extended_gpus = 0
    for line in _current_reserved_lines(renewed):
        if line.ends_at != old_end:
            continue
        devices = list(
            Allocation.objects.filter(line=line, period__endswith=old_end).values_list(
                "gpu_device_id", flat=True
            )
        )
        try:
            with transaction.atomic():
                Allocation.objects.bulk_create(
                    [
                        Allocation(
                            line=line, gpu_device_id=pk, period=selectors.window(old_end, new_end)
                        )
                        for pk in devices
                    ]
                )
        except IntegrityError:
            raise ValidationError(
                f"Contract {renewed.reference} cannot be renewed: some of its GPUs are reserved "
                "by another buyer for the next term.",
                code="renewal_conflict",
            ) from None
        line.ends_at = new_end
        line.save(update_fields=["ends_at"])
        extended_gpus += len(devices)
    _audit(
        "renewed",
        contract=renewed,
        actor=actor,
        previous_term_end=old_end.isoformat(),
        term_ends_at=new_end.isoformat(),
        extended_gpus=extended_gpus,
    )
    return renewed


@transaction.atomic
def contract_end_term(
    *, contract: Contract, actor: User | None = None, now: datetime | None = None
) -> Contract:
    """At term end: cancelled if the buyer asked for it, renewed if auto-renew is on, else
    expired. Refused before the term has ended. Idempotent per term: the second call sees
    the new state (or the new term end) and refuses."""
    now = now or timezone.now()
    locked = Contract.objects.select_for_update().get(pk=contract.pk)
    if locked.term_ends_at > now:
        raise ValidationError(
            f"The term of contract {locked.reference} ends on {locked.term_ends_at:%Y-%m-%d}.",
            code="term_not_ended",
        )
    if locked.state == ContractState.ACTIVE and locked.auto_renew and not locked.cancel_at_term_end:
        try:
            return contract_renew(contract=locked, actor=actor)
        except IllegalTransition:
            raise
        except ValidationError:
            pass  # GPUs taken for the next term: the contract expires instead.
    end_state = ContractState.CANCELLED if locked.cancel_at_term_end else ContractState.EXPIRED
    ended = _transition(
        contract=locked,
        from_states=(ContractState.ACTIVE, ContractState.SUSPENDED),
        to_state=end_state,
        verb="expire" if end_state == ContractState.EXPIRED else "cancel",
        ended_at=locked.term_ends_at,
    )
    _end_lines(contract=ended, at=ended.term_ends_at)
    _audit(
        "expired" if end_state == ContractState.EXPIRED else "cancelled",
        contract=ended,
        actor=actor,
        at_term_end=True,
    )
    return ended


def contracts_roll_over(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic task's body: end the term of every open contract whose term is over.

    One transaction per contract, so one refusal does not hold back the others.
    """
    now = now or timezone.now()
    counts = {"renewed": 0, "expired": 0, "cancelled": 0, "refused": 0}
    due = Contract.objects.filter(
        state__in=(ContractState.ACTIVE, ContractState.SUSPENDED), term_ends_at__lte=now
    ).values_list("pk", flat=True)
    for pk in list(due):
        contract = Contract.objects.get(pk=pk)
        previous_end = contract.term_ends_at
        try:
            ended = contract_end_term(contract=contract, now=now)
        except ValidationError:
            counts["refused"] += 1
            continue
        if ended.state == ContractState.ACTIVE and ended.term_ends_at > previous_end:
            counts["renewed"] += 1
        else:
            counts[ended.state] += 1
    return counts


@transaction.atomic
def contract_amend(
    *,
    contract: Contract,
    actor: User | None,
    effective_at: datetime,
    line: ContractLine | None = None,
    add_gpus: int = 0,
    remove_gpus: int = 0,
    monthly_commitment_minor: int | None = None,
    now: datetime | None = None,
) -> Contract:
    """Change an active contract from ``effective_at`` on: add or remove reserved GPUs of
    ``line`` (same offer, same rate, until the line's end), or change the monthly
    commitment. Never retroactive."""
    now = now or timezone.now()
    locked = Contract.objects.select_for_update().get(pk=contract.pk)
    if locked.state != ContractState.ACTIVE:
        raise IllegalTransition(
            f"Only an active contract can be amended; {locked.reference} is "
            f"{locked.get_state_display().lower()}.",
            code="illegal_transition",
        )
    if effective_at < now - AMENDMENT_GRACE:
        raise ValidationError({"effective_at": "An amendment cannot take effect in the past."})
    if add_gpus < 0 or remove_gpus < 0 or (add_gpus and remove_gpus):
        raise ValidationError("Add or remove GPUs, not both, and in positive numbers.")
    changes: dict[str, object] = {"effective_at": effective_at.isoformat()}
    if add_gpus or remove_gpus:
        if line is None or line.contract_id != locked.pk or line.kind != LineKind.RESERVED:
            raise ValidationError({"line": "Choose a reserved line of this contract."})
        line = ContractLine.objects.select_for_update().get(pk=line.pk)
        assert line.ends_at is not None and line.offer is not None
        if line.ended_at is not None or effective_at >= line.ends_at:
            raise ValidationError({"effective_at": "This line has ended by then."})
        start = max(effective_at, line.starts_at)
        if add_gpus:
            try:
                allocate_gpus(
                    line=line, offer=line.offer, gpu_count=add_gpus, start=start, end=line.ends_at
                )
            except CapacityUnavailable as error:
                raise ValidationError({"add_gpus": error.messages}) from None
            line.gpu_count += add_gpus
        else:
            if remove_gpus >= line.gpu_count:
                raise ValidationError(
                    {"remove_gpus": "To remove every GPU, cancel the contract instead."}
                )
            holding = list(
                Allocation.objects.select_for_update()
                .filter(line=line, period__contains=start)
                .order_by("-gpu_device__node_id", "-gpu_device__index")[:remove_gpus]
            )
            later = list(
                Allocation.objects.select_for_update().filter(
                    line=line,
                    gpu_device__in=[a.gpu_device_id for a in holding],
                    period__startswith__gte=start,
                )
            )
            release_from(allocations=holding + later, moment=start)
            line.gpu_count -= remove_gpus
            if start <= now:
                # What ran on the GPUs given back stops now, not at beat's next roll-over.
                workloads_end_with_lines(now=now)
        line.save(update_fields=["gpu_count"])
        changes.update(
            line_id=line.pk, add_gpus=add_gpus, remove_gpus=remove_gpus, gpu_count=line.gpu_count
        )
    if monthly_commitment_minor is not None:
        if monthly_commitment_minor < 0:
            raise ValidationError({"monthly_commitment_minor": "A commitment cannot be negative."})
        changes["previous_commitment_minor"] = locked.monthly_commitment_minor
        changes["monthly_commitment_minor"] = monthly_commitment_minor
        Contract.objects.filter(pk=locked.pk).update(
            monthly_commitment_minor=monthly_commitment_minor
        )
    if len(changes) == 1:
        raise ValidationError("Nothing to amend.", code="no_change")
    locked.refresh_from_db()
    _audit("amended", contract=locked, actor=actor, **changes)
    return locked
