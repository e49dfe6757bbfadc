"""Reconciliation from the admin: finance asks for a month, a worker runs the same checks
as ``manage.py reconcile`` with its progress on the row, and the report is kept.

``reconcile_run_request`` records the run and queues ``billing.tasks.run_reconcile`` once
the transaction commits; the task calls ``reconcile_run_execute``, which claims the run
with a conditional update (a duplicated delivery finds it claimed and does nothing).
"""

from __future__ import annotations

import logging
from datetime import date, datetime

from django.db import transaction
from django.utils import timezone

from accounts.audit import audit
from accounts.models import User
from billing import enqueue
from billing.models import ReconcileRun, ReconcileRunStatus
from billing.reconcile import CHECK_COUNT, reconcile_month

logger = logging.getLogger(__name__)


@transaction.atomic
def reconcile_run_request(
    *, month: date, actor: User | None, include_stripe: bool = True, now: datetime | None = None
) -> ReconcileRun:
    """Record a reconciliation of ``month`` and queue it for a worker."""
    run = ReconcileRun.objects.create(
        month=month.replace(day=1),
        include_stripe=include_stripe,
        steps_total=CHECK_COUNT,
        requested_by=actor,
        created_at=now or timezone.now(),
    )
    audit(
        action="billing.reconcile_requested",
        actor=actor,
        target=run,
        month=f"{run.month:%Y-%m}",
        include_stripe=include_stripe,
    )
    enqueue.run_reconcile_on_commit(run.pk)
    return run


def reconcile_run_execute(*, run_id: int, now: datetime | None = None) -> ReconcileRun | None:
    """Run a queued reconciliation and keep its report; None when another delivery of
    the task already claimed it."""
    claimed = ReconcileRun.objects.filter(pk=run_id, status=ReconcileRunStatus.QUEUED).update(
        status=ReconcileRunStatus.RUNNING, started_at=now or timezone.now()
    )
    if not claimed:
        return None
    run = ReconcileRun.objects.get(pk=run_id)

    def progress(done: int, total: int) -> None:
        ReconcileRun.objects.filter(pk=run_id).update(steps_done=done, steps_total=total)

    try:
        report = reconcile_month(
            month=run.month, include_stripe=run.include_stripe, progress=progress
        )
    except Exception as error:  # kept on the run for finance; the worker logs the trace
        logger.exception("reconciliation %s failed", run_id)
        ReconcileRun.objects.filter(pk=run_id).update(
            status=ReconcileRunStatus.FAILED,
            report=f"The reconciliation stopped: {type(error).__name__}: {error}",
            finished_at=timezone.now(),
        )
    else:
        ReconcileRun.objects.filter(pk=run_id).update(
            status=(
                ReconcileRunStatus.CLEAN if report.is_clean else ReconcileRunStatus.DIFFERENCES
            ),
            difference_count=len(report.differences),
            report="\n".join(report.lines()),
            finished_at=timezone.now(),
        )
    run.refresh_from_db()
    return run
