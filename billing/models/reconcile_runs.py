"""Reconciliations finance starts from the admin's overview, and the reports they keep."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User


class ReconcileRunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  # waiting for a worker
    RUNNING = "running", "Running"
    CLEAN = "clean", "No differences"
    DIFFERENCES = "differences", "Differences found"
    FAILED = "failed", "Failed"  # the reconciliation itself raised (see the report)


FINISHED_STATUSES = (
    ReconcileRunStatus.CLEAN,
    ReconcileRunStatus.DIFFERENCES,
    ReconcileRunStatus.FAILED,
)


class ReconcileRun(models.Model):
    """One ``reconcile YYYY-MM`` run as a Celery task: its progress while it runs, its
    report once done. Kept: what finance proved about a month, and when, stays on record."""

    month = models.DateField()  # first day of the reconciled calendar month (UTC)
    include_stripe = models.BooleanField(default=True)  # compared with Stripe's records
    status = models.CharField(
        max_length=16, choices=ReconcileRunStatus.choices, default=ReconcileRunStatus.QUEUED
    )
    # Checks done out of the checks to do (reconcile.CHECK_COUNT), for the progress bar.
    steps_done = models.PositiveSmallIntegerField(default=0)
    steps_total = models.PositiveSmallIntegerField(default=0)
    difference_count = models.PositiveIntegerField(default=0)
    # The report as ``manage.py reconcile`` prints it (or the error when it failed).
    report = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(steps_done__lte=F("steps_total")),
                name="reconcilerun_steps_within_total",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[choice.value for choice in ReconcileRunStatus]),
                name="reconcilerun_status_known",
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(status__in=[status.value for status in FINISHED_STATUSES]),
                name="reconcilerun_finished_has_outcome",
            ),
        ]

    def __str__(self) -> str:
        return f"reconciliation of {self.month:%Y-%m} ({self.get_status_display()})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def percent(self) -> int:
        if self.is_finished:
            return 100
        return self.steps_done * 100 // self.steps_total if self.steps_total else 0
