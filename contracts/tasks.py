"""Celery tasks of the contracts app: thin wrappers around the lifecycle services."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from contracts.lifecycle import contracts_roll_over
from contracts.spend_alerts import send_spend_alerts


@shared_task(name="contracts.tasks.roll_over", ignore_result=True)
def roll_over() -> dict[str, int]:
    """Renew, expire or cancel every contract whose term has ended (idempotent)."""
    return contracts_roll_over()


@shared_task(name="contracts.tasks.spend_alerts", ignore_result=True)
def spend_alerts() -> int:
    """Email inference spend at 80 % and 100 % of monthly caps (each once a month)."""
    return send_spend_alerts(now=timezone.now())
