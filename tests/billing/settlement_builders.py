"""Builders for settlement tests: a paid month, onboarded partners."""

from __future__ import annotations

from datetime import UTC, date, datetime

import time_machine

from billing.closing import close_period
from billing.settlement import payouts
from contracts.checkout import reservation_checkout

OCTOBER = date(2026, 10, 1)
NOVEMBER = date(2026, 11, 1)
CLOSE_OCTOBER_AT = datetime(2026, 11, 4, 1, tzinfo=UTC)


def reserve_eight_gpus(*, buyer, offer):
    """8 GPUs at $2.10 per GPU-hour from 2026-10-15 for a month: October's line is
    8 x 408 h x 2.10 = $6,854.40."""
    with time_machine.travel(datetime(2026, 10, 1, 9, tzinfo=UTC), tick=False):
        return reservation_checkout(
            buyer=buyer,
            offer=offer,
            gpu_count=8,
            starts_at=datetime(2026, 10, 15, tzinfo=UTC),
            term_months=1,
            actor=None,
        ).line


def close_october(*, charge: bool = True):
    with time_machine.travel(CLOSE_OCTOBER_AT, tick=False):
        return close_period(month=OCTOBER, charge=charge)


def onboard(partner, connect_fake):
    """A Connect account for ``partner`` that finished onboarding at Stripe."""
    account = payouts.connect_account_ensure(partner=partner, actor=None)
    connect_fake.complete_onboarding(account.stripe_account_id)
    return payouts.connect_account_sync(partner=partner, actor=None)


FULL_DAY = "1" * 1440


def observe_available(devices, *, since: date, until: date, down: dict | None = None) -> None:
    """Every GPU available every minute of [since, until), except ``down``:
    {device: (day, first minute, minutes)}."""
    from datetime import timedelta

    from django.apps import apps

    availability = apps.get_model("metering", "GpuAvailabilityDay")
    rows = []
    day = since
    while day < until:
        for device in devices:
            bits = FULL_DAY
            if down and device in down and down[device][0] == day:
                _, first, minutes = down[device]
                bits = bits[:first] + "0" * minutes + bits[first + minutes :]
            rows.append(availability(gpu=device, day=day, minutes=bits))
        day += timedelta(days=1)
    availability.objects.bulk_create(rows)


def ensure_finance_group():
    """The Finance group as billing's reference data makes it after every migrate (a
    transactional test elsewhere in the run may have flushed the data migrations wrote)."""
    from django.contrib.auth.models import Group, Permission

    from billing.reference_data import GROUP
    from billing.reference_data import ensure_finance_group as ensure

    if not Group.objects.filter(name=GROUP).exists():
        ensure(group_model=Group, permission_model=Permission)
    return Group.objects.get(name=GROUP)
