"""Billing's tables, one module per subdomain; every model is importable from here.

- ``invoices``: invoices, their lines, the document number series, credit notes.
- ``payments``: the buyer's Stripe customer and card, payment attempts, Stripe events.
- ``ledger``: the double-entry journal.
- ``settlement``: partner agreements, statements, attributions, credit-note adjustments.
- ``payouts``: partners' Stripe Connect accounts and payouts.
- ``reconcile_runs``: reconciliations run from the admin, with their reports.

Money is integer minor units (cents) with a currency code; unit prices are ``Decimal``.
What must hold whatever the application does is enforced by PostgreSQL (migration
``0002_database_rules``): a finalized invoice, its lines and a credit note refuse every
change but their payment fields, and refuse deletion; journal rows are append-only and
every journal entry balances to zero per currency (a deferred constraint trigger).
"""

from billing.models.invoices import (
    INVOICE_PAYMENT_FIELDS,
    OUTSTANDING_STATUSES,
    CreditNote,
    CreditNoteQuerySet,
    DocumentCounter,
    DraftFailure,
    Invoice,
    InvoiceLine,
    InvoiceQuerySet,
    InvoiceStatus,
    LineKind,
    Meter,
    PaymentStatus,
    RefundStatus,
)
from billing.models.ledger import Account, EntryKind, JournalEntry, JournalLine
from billing.models.payments import (
    AttemptStatus,
    BillingCustomer,
    PaymentAttempt,
    PaymentAttemptQuerySet,
    StripeEvent,
)
from billing.models.payouts import (
    ConnectAccount,
    ConnectAccountQuerySet,
    Payout,
    PayoutQuerySet,
    PayoutStatus,
)
from billing.models.reconcile_runs import ReconcileRun, ReconcileRunStatus
from billing.models.settlement import (
    Attribution,
    AttributionQuerySet,
    PartnerAgreement,
    PartnerAgreementQuerySet,
    RevenueKind,
    SettlementStatement,
    SettlementStatementQuerySet,
    StatementAdjustment,
    StatementAdjustmentQuerySet,
    StatementStatus,
)

__all__ = [
    "INVOICE_PAYMENT_FIELDS",
    "OUTSTANDING_STATUSES",
    "Account",
    "AttemptStatus",
    "Attribution",
    "AttributionQuerySet",
    "BillingCustomer",
    "ConnectAccount",
    "ConnectAccountQuerySet",
    "CreditNote",
    "CreditNoteQuerySet",
    "DocumentCounter",
    "DraftFailure",
    "EntryKind",
    "Invoice",
    "InvoiceLine",
    "InvoiceQuerySet",
    "InvoiceStatus",
    "JournalEntry",
    "JournalLine",
    "LineKind",
    "Meter",
    "PartnerAgreement",
    "PartnerAgreementQuerySet",
    "PaymentAttempt",
    "PaymentAttemptQuerySet",
    "PaymentStatus",
    "Payout",
    "PayoutQuerySet",
    "PayoutStatus",
    "ReconcileRun",
    "ReconcileRunStatus",
    "RefundStatus",
    "RevenueKind",
    "SettlementStatement",
    "SettlementStatementQuerySet",
    "StatementAdjustment",
    "StatementAdjustmentQuerySet",
    "StatementStatus",
    "StripeEvent",
]
