"""Reconciliation from the overview, run by a real Celery worker (Redis broker), its
report kept on the run."""

from __future__ import annotations

import time

import pytest

from billing import enqueue
from billing.models import ReconcileRun, ReconcileRunStatus
from billing.reconcile_runs import reconcile_run_request
from tests.billing.conftest import finalized_invoice_for
from tests.capacity.metering.celery_worker import broker, worker  # noqa: F401 (fixtures)
from tests.factories import OrganizationFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_worker_runs_the_reconciliation_and_keeps_its_report(
    broker,  # noqa: F811
    worker,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    invoice = finalized_invoice_for(
        OrganizationFactory(is_buyer=True, is_partner=False), total_minor=5_000
    )
    with django_capture_on_commit_callbacks(execute=False):  # sent to the worker below
        run = reconcile_run_request(month=invoice.month, actor=None, include_stripe=False)
    broker.send_task(enqueue.RUN_RECONCILE, args=[run.pk])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_finished:
            break
        time.sleep(0.2)
    assert (run.status, run.steps_done, run.steps_total, run.difference_count) == (
        ReconcileRunStatus.CLEAN,
        9,
        9,
        0,
    )
    assert run.report.splitlines()[-1] == (
        "No differences: ledger = invoices = payments = statements = payouts."
    )
    assert ReconcileRun.objects.count() == 1
