"""Revenue-share settlement: what partners earn of paid invoices, and paying it out.

- ``agreements``: each partner's share per kind of revenue, effective-dated;
- ``attribution``: every paid invoice line split over the nodes that earned it, each
  part split into the partner's share and the platform's fee; credit notes on attributed
  invoices become negative adjustments;
- ``statements``: one statement per partner, month and currency; drafting, approval;
- ``payouts``: Stripe Connect onboarding and the transfer of a statement's balance;
- ``selectors`` and ``views``: the partner's earnings pages.

The month's proof that ledger, invoices, payments, statements, payouts and Stripe agree
is ``billing.reconcile``: it reconciles all of billing, not settlement alone.
"""
