"""Finance's overview (the first page of the admin for the Finance group): where each
month stands, what is unpaid and how far dunning has gone, what waits for finance's
approval, payouts not yet transferred, the inference disagreements, and the last
reconciliations.

A fixed number of queries whatever the number of rows (aggregates and ``select_related``;
the lists are capped), so the page stays fast on a year of invoices.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing.dunning_schedule import retry_days
from billing.models import (
    OUTSTANDING_STATUSES,
    Invoice,
    InvoiceStatus,
    PaymentStatus,
    Payout,
    PayoutStatus,
    ReconcileRun,
    SettlementStatement,
    StatementStatus,
)
from billing.money import format_money
from billing.periods import month_bounds, month_of, previous_month
from capacity.metering.selectors import inference_disagreements

MONTHS_SHOWN = 6  # the current month and the five before it
LIST_LIMIT = 50  # rows per list; the counts say how many there are in all
RUNS_SHOWN = 10


class MonthState:
    OPEN = "open"  # not ended, or ended with nothing drafted yet
    DRAFTED = "drafted"  # invoices drafted, some not finalized (grace window)
    FINALIZED = "finalized"  # all finalized, some not charged yet
    CHARGED = "charged"  # all finalized and every one that owes money charged


@dataclass
class MonthRow:
    month: date
    state: str
    invoices: int = 0
    drafts: int = 0
    finalized: int = 0
    not_charged: int = 0  # finalized, owing money, never charged
    paid: int = 0
    outstanding: int = 0  # finalized and still waiting for money (dunning included)
    # Per currency: what the finalized invoices total, formatted ("$1,234.00").
    totals: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.month:%Y-%m}"


@dataclass(frozen=True)
class UnpaidRow:
    invoice: Invoice
    amount_due: str
    stage: str  # where the invoice is in dunning, in words


@dataclass
class Overview:
    months: list[MonthRow]
    unpaid: list[UnpaidRow]
    unpaid_count: int
    awaiting_approval: list[SettlementStatement]
    awaiting_approval_count: int
    payouts: list[Payout]  # pending or failed
    payouts_count: int
    disagreements: int  # node-hours where the gateway and the agents disagree
    runs: list[ReconcileRun]


def dunning_stage(invoice: Invoice) -> str:
    """Where an unpaid invoice stands, as finance reads it."""
    retries = len(retry_days())
    status = invoice.payment_status
    if status == PaymentStatus.UNPAID:
        return "Not charged yet"
    if status == PaymentStatus.PROCESSING:
        return "Payment processing"
    if status == PaymentStatus.OVERDUE:
        since = invoice.dunning_exhausted_at
        suffix = f" since {since:%Y-%m-%d} UTC" if since else ""
        return f"Dunning exhausted: contract suspended{suffix}"
    failures = invoice.payment_attempt_count
    what = "Needs authentication" if status == PaymentStatus.REQUIRES_ACTION else "Failed"
    stage = f"{what}: attempt {failures} of {retries + 1}"
    if invoice.next_payment_attempt_at is not None:
        stage += f", next retry {invoice.next_payment_attempt_at:%Y-%m-%d %H:%M} UTC"
    return stage


def _month_state(row: MonthRow, *, ended: bool) -> str:
    if not ended or row.invoices == 0:
        return MonthState.OPEN
    if row.drafts:
        return MonthState.DRAFTED
    if row.not_charged:
        return MonthState.FINALIZED
    return MonthState.CHARGED


def _months(*, now: datetime) -> list[MonthRow]:
    current = month_of(now)
    months = [current]
    while len(months) < MONTHS_SHOWN:
        months.append(previous_month(months[-1]))
    rows = {month: MonthRow(month=month, state=MonthState.OPEN) for month in months}
    finalized = Q(status=InvoiceStatus.FINALIZED)
    figures = (
        Invoice.objects.filter(month__in=months)
        .values("month", "currency")
        .annotate(
            invoices=Count("pk"),
            drafts=Count("pk", filter=Q(status=InvoiceStatus.DRAFT)),
            finalized=Count("pk", filter=finalized),
            not_charged=Count(
                "pk",
                filter=finalized
                & Q(
                    payment_status=PaymentStatus.UNPAID, payment_attempt_count=0, total_minor__gt=0
                ),
            ),
            paid=Count("pk", filter=finalized & Q(payment_status=PaymentStatus.PAID)),
            outstanding=Count("pk", filter=finalized & Q(payment_status__in=OUTSTANDING_STATUSES)),
            total=Sum("total_minor", filter=finalized),
        )
        .order_by("month", "currency")
    )
    totals: dict[date, list[str]] = defaultdict(list)
    for figure in figures:
        row = rows[figure["month"]]
        for name in ("invoices", "drafts", "finalized", "not_charged", "paid", "outstanding"):
            setattr(row, name, getattr(row, name) + figure[name])
        if figure["finalized"]:
            totals[row.month].append(format_money(figure["total"] or 0, figure["currency"]))
    for month, row in rows.items():
        row.totals = totals[month]
        row.state = _month_state(row, ended=now >= month_bounds(month)[1])
    return [rows[month] for month in months]


def finance_overview(*, now: datetime | None = None) -> Overview:
    """Everything the overview page shows, in a fixed number of queries."""
    now = now or timezone.now()
    unpaid = Invoice.objects.filter(
        status=InvoiceStatus.FINALIZED, payment_status__in=OUTSTANDING_STATUSES
    )
    awaiting = SettlementStatement.objects.filter(status=StatementStatus.DRAFT)
    payouts = Payout.objects.filter(status__in=(PayoutStatus.PENDING, PayoutStatus.FAILED))
    return Overview(
        months=_months(now=now),
        unpaid=[
            UnpaidRow(
                invoice=invoice,
                amount_due=format_money(invoice.amount_due_minor, invoice.currency),
                stage=dunning_stage(invoice),
            )
            for invoice in unpaid.select_related("buyer").order_by("month", "pk")[:LIST_LIMIT]
        ],
        unpaid_count=unpaid.count(),
        awaiting_approval=list(
            awaiting.select_related("partner").order_by("month", "pk")[:LIST_LIMIT]
        ),
        awaiting_approval_count=awaiting.count(),
        payouts=list(
            payouts.select_related("partner", "statement").order_by("created_at", "pk")[:LIST_LIMIT]
        ),
        payouts_count=payouts.count(),
        disagreements=inference_disagreements().count(),
        runs=list(ReconcileRun.objects.select_related("requested_by")[:RUNS_SHOWN]),
    )
