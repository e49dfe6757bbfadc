"""Per-GPU, per-minute availability: how polls set it and how 30-day figures read it.

A GPU-minute is *observed available* when a verified, valid usage record of that GPU
covers at least part of the minute: the agent was up, the GPU was seen by NVML and its
counters were read. Minutes are stored as one ``bit(1440)`` per GPU per UTC day
(``models.GpuAvailabilityDay``; why bits, there). Polls OR their minutes in, so storing
the same page twice changes nothing.

The rule every availability figure reads (search's pool figure, offer pages, node pages,
contracts and SLA credits), in one function, ``gpu_availability``: a minute counts when
it is inside the period (after the node's enrollment, the GPU's creation or the
reservation's start: the caller's ``counted_from``) and already measurable (before
``measured_until``: the last minute metering could have polled, ``measured_until``
below), less excluded maintenance; of those, the minutes observed available are
available and every other one is down. Both sides of the ratio count the same minutes, so
a figure is always between 0 and 100 %, and a period with nothing measurable yet has no
figure (``percent`` is None), neither 0 nor 100 %.

Excluded maintenance, the one rule (``excluded_maintenance``, read through
``capacity.metering.selectors.maintenance_exclusions`` by node figures, search, offer
pages, contracts' SLA and settlement's charge-backs alike): a node's maintenance windows
announced at least ``MAINTENANCE_NOTICE`` (7 days) ahead, and of those at most the
allowance per calendar month (UTC), the setting ``SLA_MAINTENANCE_ALLOWANCE_HOURS``
(``HASHGRID_SLA_MAINTENANCE_ALLOWANCE_HOURS``, default 8 hours). A node's windows apply to
each of its GPUs, so the allowance is per GPU. The allowance is used up in the order the
windows fall in the month (a window crossing a month's end draws on each month for its
part in it); maintenance beyond it, maintenance announced late, and curtailment count as
minutes like any other: down unless observed available. So a partner cannot announce a
window from 2026 to 2099 and owe nothing: all but 8 hours a month of it is downtime.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from capacity.metering.models import MINUTES_PER_DAY
from capacity.metering.validation import AcceptedRecord, to_unix_us

MAINTENANCE_NOTICE = timedelta(days=7)
_US_PER_MINUTE = 60_000_000
_FULL_DAY = (1 << MINUTES_PER_DAY) - 1
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class MinuteMask:
    """Minutes of one GPU's UTC day to set: ``bits`` as a 1440-char string of 0/1."""

    gpu_device_id: int
    day: date
    bits: str


def _bit(minute_of_day: int) -> int:
    """The mask bit of a minute: minute 0 is the leftmost bit (PostgreSQL's bit 0)."""
    return 1 << (MINUTES_PER_DAY - 1 - minute_of_day)


def _range_mask(first_minute: int, end_minute: int) -> int:
    """Mask of minutes ``[first_minute, end_minute)`` of one day (0..1440)."""
    if end_minute <= first_minute:
        return 0
    width = end_minute - first_minute
    return ((1 << width) - 1) << (MINUTES_PER_DAY - end_minute)


def minute_masks(records: Iterable[AcceptedRecord]) -> list[MinuteMask]:
    """The minutes ``records`` cover, one mask per (GPU, UTC day)."""
    masks: dict[tuple[int, int], int] = defaultdict(int)
    for record in records:
        first = to_unix_us(record.window_start) // _US_PER_MINUTE
        last = (to_unix_us(record.window_end) - 1) // _US_PER_MINUTE
        for minute in range(first, last + 1):
            day, minute_of_day = divmod(minute, MINUTES_PER_DAY)
            masks[(record.gpu_device_id, day)] |= _bit(minute_of_day)
    return [
        MinuteMask(gpu, _EPOCH_DAY + timedelta(days=day), format(bits, f"0{MINUTES_PER_DAY}b"))
        for (gpu, day), bits in masks.items()
    ]


@dataclass(frozen=True)
class AvailabilityFigure:
    """Available GPU-minutes out of the GPU-minutes that counted."""

    available_minutes: int
    counted_minutes: int

    @property
    def percent(self) -> Decimal | None:
        """Percentage with two decimals (half-up), None when nothing counted yet."""
        if self.counted_minutes == 0:
            return None
        ratio = Decimal(self.available_minutes * 100) / Decimal(self.counted_minutes)
        return ratio.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    def __add__(self, other: AvailabilityFigure) -> AvailabilityFigure:
        return AvailabilityFigure(
            self.available_minutes + other.available_minutes,
            self.counted_minutes + other.counted_minutes,
        )


NOTHING = AvailabilityFigure(0, 0)


def _minute_index(moment: datetime) -> int:
    return to_unix_us(moment.astimezone(UTC)) // _US_PER_MINUTE


def _intervals_to_day_masks(intervals: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Minute intervals ``[a, b)`` (absolute minute indexes) as masks per absolute day."""
    masks: dict[int, int] = defaultdict(int)
    for first, end in intervals:
        day = first // MINUTES_PER_DAY
        while first < end:
            day_start = day * MINUTES_PER_DAY
            day_end = min(end, day_start + MINUTES_PER_DAY)
            masks[day] |= _range_mask(first - day_start, day_end - day_start)
            first, day = day_end, day + 1
    return masks


def month_start(moment: datetime) -> datetime:
    """Midnight UTC of the first day of ``moment``'s calendar month."""
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


def excluded_maintenance(
    windows: Iterable[tuple[datetime, datetime]],
    *,
    since: datetime,
    until: datetime,
    allowance: timedelta,
) -> list[tuple[datetime, datetime]]:
    """The parts of one node's maintenance ``windows`` (announced in time, not
    overlapping) excluded from availability, clipped to ``[since, until)``: in each UTC
    calendar month, the first ``allowance`` of maintenance in the month, in time order
    (the rule in the module docstring). ``windows`` must hold every such window of the
    months ``[since, until)`` touches, also those before ``since``: they use the
    allowance first."""
    excluded: list[tuple[datetime, datetime]] = []
    used: dict[datetime, timedelta] = defaultdict(timedelta)
    first_month = month_start(since)
    for start, end in sorted(windows):
        month = max(month_start(start), first_month)
        while month < until and month < end:
            next_month = _next_month(month)
            piece_start, piece_end = max(start, month), min(end, next_month)
            take = min(piece_end - piece_start, allowance - used[month])
            if take > timedelta(0):
                used[month] += take
                lower, upper = max(piece_start, since), min(piece_start + take, until)
                if lower < upper:
                    excluded.append((lower, upper))
            month = next_month
    return excluded


def measured_until(
    *, now: datetime, last_poll_at: datetime | None, poll_interval: timedelta
) -> datetime:
    """The end of what metering could have measured of a node at ``now``: its last poll
    (a failed poll measures its minutes as down), and at least everything older than one
    poll interval (a node metering should have polled but did not is down, not
    unmeasured). Minutes from here on are neither available nor down yet."""
    bound = now - poll_interval
    if last_poll_at is not None and last_poll_at > bound:
        bound = last_poll_at
    return min(bound, now)


def gpu_availability(
    *,
    bitmaps: Mapping[date, str],
    counted_from: datetime,
    until: datetime,
    measured_until: datetime,
    excluded: Sequence[tuple[datetime, datetime]] = (),
    down: Sequence[tuple[datetime, datetime]] = (),
) -> AvailabilityFigure:
    """One GPU's figure over ``[counted_from, min(until, measured_until))`` from its day
    bitmaps (the rule in the module docstring). The minute ``measured_until`` falls in is
    still being measured and does not count; the minute ``counted_from`` falls in does.

    ``down``: spans the caller knows the GPU was down whatever the bitmaps say (the SLA's
    node-fault failures, ``contracts.billable_usage.sla_minutes``); their minutes count
    (unless excluded) and are never available. Minutes are taken as ``excluded`` are:
    from the minute a span starts in up to, not including, the minute it ends in."""
    first = _minute_index(counted_from)
    end = min(_minute_index(until), _minute_index(measured_until))
    if end <= first:
        return NOTHING
    counted = _intervals_to_day_masks([(first, end)])
    for day, mask in _intervals_to_day_masks(
        (_minute_index(start), _minute_index(stop)) for start, stop in excluded
    ).items():
        if day in counted:
            counted[day] &= ~mask & _FULL_DAY
    known_down = _intervals_to_day_masks(
        (_minute_index(start), _minute_index(stop)) for start, stop in down
    )
    available = counted_total = 0
    for day, mask in counted.items():
        counted_total += mask.bit_count()
        bits = bitmaps.get(_EPOCH_DAY + timedelta(days=day))
        if bits:
            available += (int(bits, 2) & mask & ~known_down.get(day, 0)).bit_count()
    return AvailabilityFigure(available, counted_total)
