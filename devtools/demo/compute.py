"""Demo compute: GPUs the demo buyer can run things on from the browser (issue 15).

Idempotent. On the demo partner's first offer (the one the closed month reserved) the
demo buyer gets:

- a reservation of ``RESERVED_GPUS`` GPUs from now for a month, unless they hold
  reserved GPUs now: the contract page's "Deploy a model" puts a catalogue model on them
  (one fleet H100 holds any of them: ``contracts.workloads.gpus_memory_shortfall``), "Run
  a container" a container;
- an on-demand GPU line, unless one is current: **Instances → Start an instance** takes
  free GPUs of the offer, on its nodes the fleet plays (online from the first sweep).

What the buyer starts reaches running in seconds: the fleet's simulated runtime pulls and
starts in a second each (``devtools.devrun.fleet_command``), and beat's metering sweep,
which pushes assignments and reads workload states on its polls (docs/workloads.md),
runs every ``METERING_POLL_INTERVAL_SECONDS`` (``make run`` sets 5 s). The beat entry
takes the interval in force when the database was migrated, so ``sweep_in_step`` brings
the entry of a database migrated before in step with it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.models import Organization, Role, User
from capacity.metering.schedule import SWEEP_TASK_NAME
from capacity.models import Offer
from contracts import on_demand
from contracts.checkout import reservation_checkout
from contracts.models import ContractLine, LineKind

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

# Reserved for the demo: a model deployed on one, a container on the other.
RESERVED_GPUS = 2
RESERVATION_MONTHS = 1


def _owner(buyer: Organization) -> User:
    return buyer.memberships.filter(role=Role.OWNER).select_related("user").order_by("pk")[0].user


def _current_line(buyer: Organization, kind: str, offer: Offer) -> int | None:
    """The buyer's line of ``kind`` on ``offer`` in force now (its id), if any."""
    return (
        ContractLine.objects.current()
        .filter(contract__buyer=buyer, kind=kind, offer=offer)
        .exclude(ends_at__lte=timezone.now())
        .values_list("pk", flat=True)
        .first()
    )


def sweep_in_step() -> int:
    """Beat's metering sweep every ``METERING_POLL_INTERVAL_SECONDS``; the interval set."""
    seconds = int(settings.METERING_POLL_INTERVAL_SECONDS)
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=seconds, period=IntervalSchedule.SECONDS
    )
    # Saved one by one: django-celery-beat's signals tell a running beat of the change.
    for task in PeriodicTask.objects.filter(name=SWEEP_TASK_NAME).exclude(interval=interval):
        task.interval = interval
        task.expire_seconds = seconds
        task.save(update_fields=["interval", "expire_seconds"])
    return seconds


def seed_compute(
    *,
    buyer: Organization,
    partner: Organization,
    out: SupportsWrite[str] = sys.stdout,
) -> dict[str, int | None]:
    """Give ``buyer`` reserved GPUs and an on-demand GPU line on ``partner``'s first offer;
    returns the ids of the current reserved and on-demand GPU lines (None: none)."""
    offer = (
        Offer.objects.active()
        .filter(site__organization=partner, gpu_count__gte=RESERVED_GPUS)
        .order_by("pk")
        .first()
    )
    if offer is None:
        out.write("compute: the demo partner has no offer; no reservation or GPU line seeded\n")
        return {"reserved_line": None, "on_demand_line": None}
    owner = _owner(buyer)
    # A card is saved when the books were seeded against Stripe's emulation; without
    # Stripe these two calls go ahead as if it were (the development switch, for them only).
    with override_settings(CONTRACTS_ASSUME_PAYMENT_METHOD=True):
        if _current_line(buyer, LineKind.RESERVED, offer) is None:
            try:
                reservation_checkout(
                    buyer=buyer,
                    offer=offer,
                    gpu_count=RESERVED_GPUS,
                    starts_at=timezone.now(),
                    term_months=RESERVATION_MONTHS,
                    actor=owner,
                )
            except ValidationError as error:
                out.write(f"compute: no reservation on {offer}: {'; '.join(error.messages)}\n")
        if _current_line(buyer, LineKind.ON_DEMAND_GPU, offer) is None:
            on_demand.on_demand_enable(buyer=buyer, actor=owner, offer=offer)
    return {
        "reserved_line": _current_line(buyer, LineKind.RESERVED, offer),
        "on_demand_line": _current_line(buyer, LineKind.ON_DEMAND_GPU, offer),
    }
