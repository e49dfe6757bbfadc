"""Celery tasks of the contracts app: thin wrappers around its services."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from contracts.cap_alerts import inference_cap_alerts_send
from contracts.lifecycle import contracts_roll_over
from contracts.workloads import instances_never_taken_fail, workloads_end_with_lines


@shared_task(name="contracts.tasks.roll_over", ignore_result=True)
def roll_over() -> dict[str, int]:
    """Renew, expire or cancel every contract whose term has ended, then stop the
    workloads of lines that ended (a reservation's end, an amendment); idempotent."""
    counts = contracts_roll_over()
    counts["workloads_stopped"] = workloads_end_with_lines(now=timezone.now())
    return counts


@shared_task(name="contracts.tasks.instances_never_taken", ignore_result=True)
def instances_never_taken() -> int:
    """Beat, every 5 minutes: fail, unbilled, the instances no node took within
    ``UNACCEPTED_AFTER`` (``contracts.workloads.instances_never_taken_fail``)."""
    return instances_never_taken_fail(now=timezone.now())


@shared_task(name="contracts.tasks.inference_cap_alerts", ignore_result=True)
def inference_cap_alerts() -> int:
    """Email buyers whose inference spend reached 80 % or 100 % of a cap (once each)."""
    return inference_cap_alerts_send(now=timezone.now())
