"""Celery tasks of the contracts app: thin wrappers around the lifecycle services."""

from __future__ import annotations

from celery import shared_task

from contracts.lifecycle import contracts_roll_over


@shared_task(name="contracts.tasks.roll_over", ignore_result=True)
def roll_over() -> dict[str, int]:
    """Renew, expire or cancel every contract whose term has ended (idempotent)."""
    return contracts_roll_over()
