"""Queueing billing's Celery tasks from services, once their transaction commits.

The tasks (``billing.tasks``) call the services, so a service cannot import the tasks
back without making an import circle. It queues a task here instead, by the name
``billing.tasks`` registers it under: the names are these constants, which the task
decorators use too. ``BillingConfig.ready`` imports ``billing.tasks``, so the tasks are
registered in every process (a web process never autodiscovers them: Celery does that
when a worker starts); ``tests/billing/test_enqueue.py`` checks it in a fresh process.
"""

from __future__ import annotations

from functools import partial

from celery import current_app
from django.db import transaction

CHARGE_INVOICE = "billing.tasks.charge_invoice"
REFUND_CREDIT_NOTE = "billing.tasks.refund_credit_note"
RUN_RECONCILE = "billing.tasks.run_reconcile"


def charge_invoice_on_commit(invoice_id: int) -> None:
    """Charge the invoice in a worker after the current transaction commits."""
    transaction.on_commit(partial(_delay, CHARGE_INVOICE, invoice_id))


def refund_credit_note_on_commit(credit_note_id: int) -> None:
    """Refund the credit note in a worker after the current transaction commits."""
    transaction.on_commit(partial(_delay, REFUND_CREDIT_NOTE, credit_note_id))


def run_reconcile_on_commit(run_id: int) -> None:
    """Run the reconciliation in a worker after the current transaction commits."""
    transaction.on_commit(partial(_delay, RUN_RECONCILE, run_id))


def _delay(task_name: str, *args: int) -> None:
    # The registered task's own ``delay``: it honours ``task_always_eager`` and the
    # task's options exactly as calling ``billing.tasks.<task>.delay`` would.
    current_app.tasks[task_name].delay(*args)
