"""Revenue-share settlement: what partners earn of paid invoices, and paying it out.

- ``agreements``: each partner's share per kind of revenue, effective-dated;
- ``attribution``: every paid invoice line split over the nodes that earned it, each
  part split into the partner's share and the platform's fee; credit notes on attributed
  invoices become negative adjustments;
- ``statements``: one statement per partner, month and currency; drafting, approval;
- ``payouts``: Stripe Connect onboarding and the transfer of a statement's balance;
- ``reconcile``: the month's proof that ledger, invoices, payments, statements, payouts
  and Stripe agree;
- ``selectors`` and ``views``: the partner's earnings pages.
"""
