"""SLA: availability of a reserved line over a period and the credit tier it falls in.

Availability = available GPU-minutes of the line's allocations / reserved GPU-minutes,
excluding maintenance announced at least 7 days ahead, up to an allowance per GPU and
calendar month (``SLA_MAINTENANCE_ALLOWANCE_HOURS``, default 8; beyond it maintenance is
downtime: the rule in ``capacity.metering.availability``). The minutes are billable usage,
counted by ``contracts.billable_usage.sla_minutes`` (settlement reads the same figures per
node); metering owns the per-minute observations and the maintenance rule.
Tiers are compared on the exact ratio, never on a rounded percentage: 99.4999 % is below
99.5 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from capacity.metering.availability import NOTHING
from contracts.billable_usage import UsageKey, sla_minutes
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


def line_slas(
    *, lines: Iterable[ContractLine], since: datetime, until: datetime
) -> dict[int, LineSla]:
    """SLA of reserved lines over ``[since, until)`` (e.g. a billing month), by line id,
    from the minutes ``contracts.billable_usage.sla_minutes`` counts (each allocation from
    its own start to its own end). Lines need ``contract__sla_policy`` loaded."""
    lines = list(lines)
    figures = sla_minutes(start=since, end=until, line_ids=[line.pk for line in lines])
    tiers: dict[int | None, tuple[tuple[Decimal, Decimal], ...]] = {}
    slas: dict[int, LineSla] = {}
    for line in lines:
        policy = line.contract.sla_policy
        if policy is None:
            target, line_tiers = DEFAULT_TIERS[0][0], DEFAULT_TIERS
        else:
            if policy.pk not in tiers:
                tiers[policy.pk] = policy_tiers(policy)
            target, line_tiers = policy.target_percent, tiers[policy.pk]
        figure = figures.get(UsageKey(line.pk), NOTHING)
        slas[line.pk] = LineSla(
            available_minutes=figure.available_minutes,
            counted_minutes=figure.counted_minutes,
            target_percent=target,
            credit_percent=credit_percent(
                available_minutes=figure.available_minutes,
                counted_minutes=figure.counted_minutes,
                tiers=line_tiers,
            ),
        )
    return slas


def line_sla(*, line: ContractLine, since: datetime, until: datetime) -> LineSla:
    """SLA of one reserved line over ``[since, until)`` (``line_slas`` for one line)."""
    return line_slas(lines=[line], since=since, until=until)[line.pk]
