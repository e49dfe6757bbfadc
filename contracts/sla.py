"""SLA: availability of a reserved line over a period and the credit tier it falls in.

Availability = available GPU-minutes of the line's allocations / reserved GPU-minutes,
excluding maintenance announced at least 7 days ahead (metering owns both the per-minute
observations and that rule: ``capacity.metering.selectors.maintenance_exclusions``).
Tiers are compared on the exact ratio, never on a rounded percentage: 99.4999 % is below
99.5 %.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.apps import apps

from contracts.models import ContractLine, SlaCreditTier, SlaPolicy

DEFAULT_TIERS: tuple[tuple[Decimal, Decimal], ...] = (
    # (availability at least, credit percent), highest threshold first
    (Decimal("99.5"), Decimal("0")),
    (Decimal("99.0"), Decimal("10")),
    (Decimal("95.0"), Decimal("25")),
    (Decimal("0"), Decimal("50")),
)


def policy_tiers(policy: SlaPolicy | None) -> tuple[tuple[Decimal, Decimal], ...]:
    """A policy's tiers, highest threshold first (the default tiers without a policy)."""
    if policy is None:
        return DEFAULT_TIERS
    rows = SlaCreditTier.objects.filter(policy=policy).order_by("-min_availability_percent")
    tiers = tuple((row.min_availability_percent, row.credit_percent) for row in rows)
    return tiers or DEFAULT_TIERS


def credit_percent(
    *,
    available_minutes: int,
    counted_minutes: int,
    tiers: Sequence[tuple[Decimal, Decimal]] = DEFAULT_TIERS,
) -> Decimal:
    """Credit percent for an availability of ``available / counted``: the first tier (from
    the top) whose threshold the exact ratio reaches. Nothing counted → no credit."""
    if counted_minutes <= 0:
        return Decimal(0)
    for threshold, credit in tiers:
        # available / counted >= threshold / 100, in integers and exact Decimals.
        if Decimal(available_minutes) * 100 >= threshold * counted_minutes:
            return credit
    return tiers[-1][1]


@dataclass(frozen=True)
class LineSla:
    """A reserved line's SLA over ``[since, until)``."""

    available_minutes: int
    counted_minutes: int
    target_percent: Decimal
    credit_percent: Decimal

    @property
    def availability_percent(self) -> Decimal | None:
        if self.counted_minutes == 0:
            return None
        ratio = Decimal(self.available_minutes * 100) / Decimal(self.counted_minutes)
        return ratio.quantize(Decimal("0.001"))

    @property
    def target_met(self) -> bool:
        return Decimal(self.available_minutes) * 100 >= self.target_percent * self.counted_minutes


def line_sla(*, line: ContractLine, since: datetime, until: datetime) -> LineSla:
    """SLA of a reserved line over ``[since, until)`` (e.g. a billing month) from metering's
    per-minute availability. Each allocation counts from its own start to its own end."""
    from capacity.metering.availability import NOTHING, gpu_availability
    from capacity.metering.selectors import maintenance_exclusions

    policy = line.contract.sla_policy
    target = policy.target_percent if policy is not None else DEFAULT_TIERS[0][0]
    allocations = list(
        line.allocations.filter(period__overlap=(since, until)).select_related("gpu_device")
    )
    figure = NOTHING
    if allocations:
        GpuAvailabilityDay = apps.get_model("metering", "GpuAvailabilityDay")
        bitmaps: dict[int, dict] = defaultdict(dict)
        for gpu_id, day, minutes in GpuAvailabilityDay.objects.filter(
            gpu_id__in={a.gpu_device_id for a in allocations},
            day__gte=since.date(),
            day__lte=until.date(),
        ).values_list("gpu_id", "day", "minutes"):
            bitmaps[gpu_id][day] = minutes
        excluded = maintenance_exclusions(
            node_ids={a.gpu_device.node_id for a in allocations}, since=since, until=until
        )
        for allocation in allocations:
            figure += gpu_availability(
                bitmaps=bitmaps[allocation.gpu_device_id],
                counted_from=max(since, allocation.period.lower),
                until=min(until, allocation.period.upper),
                excluded=excluded.get(allocation.gpu_device.node_id, ()),
            )
    return LineSla(
        available_minutes=figure.available_minutes,
        counted_minutes=figure.counted_minutes,
        target_percent=target,
        credit_percent=credit_percent(
            available_minutes=figure.available_minutes,
            counted_minutes=figure.counted_minutes,
            tiers=policy_tiers(policy),
        ),
    )
