"""Monthly settlement statements: one per partner, month and currency.

``draft_statements(month)`` runs after the period close (``billing.closing``): it
attributes the invoices paid so far, turns credit notes on attributed invoices into
adjustments, and gathers every attribution and adjustment not yet settled onto the
partner's statement for the month (a conditional update from ``statement IS NULL``, so
each is settled exactly once). Invoices paid later land on a later month's statement.
A draft is recomputed on every run until finance approves it; an approved statement is
frozen and its settlement is posted to the ledger.

Balance: ``earnings + adjustments + carried_in``. A positive balance is paid out in full;
a negative one is never paid: it is carried into the next statement, which is drafted
even for a month with nothing else on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.audit import audit
from accounts.models import User
from billing import ledger
from billing.models import (
    Attribution,
    SettlementStatement,
    StatementAdjustment,
    StatementStatus,
)
from billing.settlement.attribution import adjust_for_credit_notes, attribute_paid_invoices


@dataclass
class DraftResult:
    invoices_attributed: int = 0
    credit_notes_adjusted: int = 0
    created: int = 0
    updated: int = 0
    frozen: int = 0  # the month's statement was already approved: items wait for the next


def _partners_with_business(month: date) -> set[tuple[int, str]]:
    """(partner, currency) pairs with something to state for ``month``."""
    pending = set(
        Attribution.objects.filter(
            statement__isnull=True, partner__isnull=False, invoice__month__lte=month
        )
        .values_list("partner_id", "currency")
        .distinct()
    )
    pending |= set(
        StatementAdjustment.objects.filter(statement__isnull=True, partner__isnull=False)
        .values_list("partner_id", "currency")
        .distinct()
    )
    # A negative balance is carried into the following month even when nothing else is.
    latest_before = (
        SettlementStatement.objects.filter(month__lt=month)
        .order_by("partner_id", "currency", "-month")
        .distinct("partner_id", "currency")
    )
    pending |= {
        (statement.partner_id, statement.currency)
        for statement in latest_before
        if statement.carried_out_minor < 0
    }
    # Drafts of the month are recomputed (the carried balance may have changed).
    pending |= set(
        SettlementStatement.objects.filter(month=month, status=StatementStatus.DRAFT).values_list(
            "partner_id", "currency"
        )
    )
    return pending


def previous_statement(
    *, partner_id: int, currency: str, month: date
) -> SettlementStatement | None:
    return (
        SettlementStatement.objects.filter(
            partner_id=partner_id, currency=currency, month__lt=month
        )
        .order_by("-month")
        .first()
    )


def draft_statements(*, month: date, now: datetime | None = None) -> DraftResult:
    """Draft (or recompute the drafts of) every partner's statement for ``month``."""
    now = now or timezone.now()
    result = DraftResult()
    result.invoices_attributed = attribute_paid_invoices(up_to_month=month, now=now)
    result.credit_notes_adjusted = adjust_for_credit_notes(now=now)
    for partner_id, currency in sorted(_partners_with_business(month)):
        outcome = _draft_one(partner_id=partner_id, currency=currency, month=month, now=now)
        setattr(result, outcome, getattr(result, outcome) + 1)
    return result


@transaction.atomic
def _draft_one(*, partner_id: int, currency: str, month: date, now: datetime) -> str:
    statement, created = SettlementStatement.objects.get_or_create(
        partner_id=partner_id, month=month, currency=currency, defaults={"drafted_at": now}
    )
    statement = SettlementStatement.objects.select_for_update().get(pk=statement.pk)
    if statement.status != StatementStatus.DRAFT:
        return "frozen"
    Attribution.objects.filter(
        partner_id=partner_id,
        currency=currency,
        statement__isnull=True,
        invoice__month__lte=month,
    ).update(statement=statement)
    StatementAdjustment.objects.filter(
        partner_id=partner_id, currency=currency, statement__isnull=True
    ).update(statement=statement)
    changed = _recompute(statement)
    if changed or created:
        statement.drafted_at = now
        statement.save()
    if created:
        audit(
            action="billing.statement_drafted",
            actor=None,
            organization=statement.partner,
            target=statement,
            month=f"{month:%Y-%m}",
            balance_minor=statement.balance_minor,
        )
    return "created" if created else "updated"


def _recompute(statement: SettlementStatement) -> bool:
    """Set the statement's figures from what is settled on it; True if any changed."""
    before = (
        statement.earnings_minor,
        statement.adjustments_minor,
        statement.carried_in_minor,
    )
    statement.earnings_minor = int(
        Attribution.objects.filter(statement=statement).aggregate(total=Sum("partner_share_minor"))[
            "total"
        ]
        or 0
    )
    statement.adjustments_minor = int(
        StatementAdjustment.objects.filter(statement=statement).aggregate(
            total=Sum("partner_share_minor")
        )["total"]
        or 0
    )
    previous = previous_statement(
        partner_id=statement.partner_id, currency=statement.currency, month=statement.month
    )
    statement.carried_in_minor = previous.carried_out_minor if previous is not None else 0
    balance = statement.earnings_minor + statement.adjustments_minor + statement.carried_in_minor
    statement.balance_minor = balance
    statement.payout_minor = max(0, balance)
    statement.carried_out_minor = min(0, balance)
    return before != (
        statement.earnings_minor,
        statement.adjustments_minor,
        statement.carried_in_minor,
    )


@transaction.atomic
def statement_approve(
    *, statement: SettlementStatement, actor: User | None, now: datetime | None = None
) -> SettlementStatement:
    """Freeze a draft and post its settlement to the ledger. Earlier statements of the
    partner must be approved first (their carried balance is this one's)."""
    now = now or timezone.now()
    locked = SettlementStatement.objects.select_for_update().get(pk=statement.pk)
    if locked.status != StatementStatus.DRAFT:
        raise ValidationError(
            f"Statement {locked.reference} is already {locked.get_status_display().lower()}.",
            code="not_draft",
        )
    if SettlementStatement.objects.filter(
        Q(partner_id=locked.partner_id, currency=locked.currency, month__lt=locked.month),
        status=StatementStatus.DRAFT,
    ).exists():
        raise ValidationError(
            "Approve the partner's earlier statements first.", code="earlier_draft"
        )
    _recompute(locked)
    locked.status = StatementStatus.APPROVED
    locked.approved_at = now
    locked.approved_by = actor if actor is not None and actor.is_authenticated else None
    locked.save()
    ledger.record_settlement(
        statement_id=locked.pk,
        partner_id=locked.partner_id,
        currency=locked.currency,
        net_minor=locked.net_minor,
        memo=f"Settlement {locked.reference} for {locked.partner}",
        occurred_at=now,
    )
    audit(
        action="billing.statement_approved",
        actor=actor,
        organization=locked.partner,
        target=locked,
        earnings_minor=locked.earnings_minor,
        adjustments_minor=locked.adjustments_minor,
        carried_in_minor=locked.carried_in_minor,
        payout_minor=locked.payout_minor,
    )
    return locked
