"""SLA tiers at their exact boundaries, and the selector over metering's availability."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.apps import apps
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from contracts.assignments import reported_fault
from contracts.billable_usage import UsageKey, down_minutes
from contracts.checkout import reservation_checkout
from contracts.models import SlaPolicy, Workload, WorkloadFault, WorkloadState
from contracts.sla import DEFAULT_TIERS, credit_percent, line_sla, policy_tiers
from contracts.workloads import container_create, workload_stop
from tests.contracts.workload_builders import PYTORCH, SSH_KEY, agent_reports
from tests.factories import NodeWindowFactory, OfferFactory

D = Decimal


@pytest.mark.parametrize(
    ("available", "counted", "credit"),
    [
        (100_000, 100_000, D(0)),
        (99_500, 100_000, D(0)),  # exactly 99.5 %: no credit
        (99_499, 100_000, D(10)),  # just below 99.5 %
        (199_999, 201_006, D(10)),  # 99.49996… %: rounds to 99.50 but is below it
        (99_000, 100_000, D(10)),  # exactly 99.0 %
        (98_999, 100_000, D(25)),
        (95_000, 100_000, D(25)),  # exactly 95 %
        (94_999, 100_000, D(50)),
        (0, 100_000, D(50)),
        (0, 0, D(0)),  # nothing counted yet: no credit
    ],
)
def test_default_tier_boundaries(available, counted, credit):
    assert credit_percent(available_minutes=available, counted_minutes=counted) == credit


@pytest.mark.django_db
def test_default_policy_from_migration_matches_the_tiers():
    policy = SlaPolicy.objects.get(is_default=True)
    assert policy.target_percent == D("99.50")
    assert policy_tiers(policy) == DEFAULT_TIERS


def _bits(available_minutes: set[int]) -> str:
    return "".join("1" if minute in available_minutes else "0" for minute in range(1440))


@pytest.fixture
def reserved_line(site, devices, buyer_org, settings):
    if not apps.is_installed("capacity.metering"):
        pytest.fail("SLA tests need metering: run with --ds=tests.metering_settings", pytrace=False)
    offer = OfferFactory(site=site, gpu_count=8, available_from=datetime(2025, 1, 1, tzinfo=UTC))
    start = datetime(2025, 3, 1, tzinfo=UTC)
    return reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=1,
        starts_at=start,
        term_months=1,
        actor=None,
        now=start,
    ).line


def _observe(line, *, day: date, minutes: set[int]):
    GpuAvailabilityDay = apps.get_model("metering", "GpuAvailabilityDay")
    gpu_id = line.allocations.get().gpu_device_id
    GpuAvailabilityDay.objects.update_or_create(
        gpu_id=gpu_id, day=day, defaults={"minutes": _bits(minutes)}
    )


def test_line_sla_from_availability_minutes(reserved_line):
    since, until = datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC)
    # 1440 minutes; 1433 observed = 99.514 % → no credit; 1432 = 99.444 % → 10 %.
    _observe(reserved_line, day=date(2025, 3, 2), minutes=set(range(7, 1440)))
    sla = line_sla(line=reserved_line, since=since, until=until)
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (1433, 1440, D(0))
    assert sla.target_met


def test_maintenance_announced_7_days_ahead_is_excluded(reserved_line):
    since, until = datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC)
    # Down 02:00-04:00 (120 minutes): 1320 / 1440 = 91.7 % → 50 % credit …
    _observe(reserved_line, day=date(2025, 3, 2), minutes=set(range(1440)) - set(range(120, 240)))
    assert line_sla(line=reserved_line, since=since, until=until).credit_percent == D(50)
    # … unless that was maintenance announced at least 7 days ahead: 1320 / 1320.
    node = reserved_line.allocations.get().gpu_device.node
    start = datetime(2025, 3, 2, 2, tzinfo=UTC)
    NodeWindowFactory(
        node=node,
        period=DateTimeTZRange(start, start + timedelta(hours=2), "[)"),
        announced_at=start - timedelta(days=7),
    )
    sla = line_sla(line=reserved_line, since=since, until=until)
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (1320, 1320, D(0))


def test_maintenance_announced_late_still_counts(reserved_line):
    since, until = datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC)
    _observe(reserved_line, day=date(2025, 3, 2), minutes=set(range(1440)) - set(range(120, 240)))
    node = reserved_line.allocations.get().gpu_device.node
    start = datetime(2025, 3, 2, 2, tzinfo=UTC)
    NodeWindowFactory(
        node=node,
        period=DateTimeTZRange(start, start + timedelta(hours=2), "[)"),
        announced_at=start - timedelta(days=7) + timedelta(seconds=1),
    )
    sla = line_sla(line=reserved_line, since=since, until=until)
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (1320, 1440, D(50))


def test_a_four_minute_old_reservation_counts_only_measured_minutes(site, devices, buyer_org):
    # Reserved at 12:00, polled at 12:03:00 (minutes 12:00-12:02 observed), read at
    # 12:04:30: the old rule counted 12:03 as down, 75.000 % and a 50 % credit.
    NodePollState = apps.get_model("metering", "NodePollState")
    start = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    offer = OfferFactory(site=site, gpu_count=8, available_from=datetime(2025, 1, 1, tzinfo=UTC))
    line = reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=1,
        starts_at=start,
        term_months=1,
        actor=None,
        now=start,
    ).line
    gpu = line.allocations.get().gpu_device
    NodePollState.objects.update_or_create(
        node_id=gpu.node_id, defaults={"last_poll_at": start + timedelta(minutes=3)}
    )
    _observe(line, day=start.date(), minutes={720, 721, 722})
    now = start + timedelta(minutes=4, seconds=30)
    with time_machine.travel(now, tick=False):
        sla = line_sla(line=line, since=datetime(2025, 3, 1, tzinfo=UTC), until=now)
    assert (sla.available_minutes, sla.counted_minutes) == (3, 3)
    assert sla.availability_percent == D("100.000")
    assert sla.credit_percent == D(0)


def test_a_reservation_nothing_measured_yet_has_no_figure_and_no_credit(site, devices, buyer_org):
    start = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    offer = OfferFactory(site=site, gpu_count=8, available_from=datetime(2025, 1, 1, tzinfo=UTC))
    line = reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=1,
        starts_at=start,
        term_months=1,
        actor=None,
        now=start,
    ).line
    now = start + timedelta(seconds=50)
    with time_machine.travel(now, tick=False):
        sla = line_sla(line=line, since=datetime(2025, 3, 1, tzinfo=UTC), until=now)
    assert (sla.available_minutes, sla.counted_minutes) == (0, 0)
    assert sla.availability_percent is None
    assert sla.credit_percent == D(0)


MARCH = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))  # 44,640 minutes


def _observe_days(line, *, first: date, last: date, minutes: set[int]):
    day = first
    while day <= last:
        _observe(line, day=day, minutes=minutes)
        day += timedelta(days=1)


def _maintenance(line, start: datetime, end: datetime):
    return NodeWindowFactory(
        node=line.allocations.get().gpu_device.node,
        period=DateTimeTZRange(start, end, "[)"),
        announced_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_a_window_from_2026_to_2099_excludes_only_the_months_allowance(reserved_line):
    """Issue 13 #6: maintenance announced 7 days ahead from the 10th to 2099 excluded
    every reserved minute after it from the SLA: 100 % and no credit for a GPU that was
    never seen again. Only the month's allowance (8 h) is excluded; the rest is down."""
    _observe_days(
        reserved_line, first=date(2025, 3, 1), last=date(2025, 3, 9), minutes=set(range(1440))
    )
    _maintenance(reserved_line, datetime(2025, 3, 10, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC))
    sla = line_sla(line=reserved_line, since=MARCH[0], until=MARCH[1])
    # 9 days available (12,960 minutes) of 31 days less 8 hours (44,640 - 480).
    assert (sla.available_minutes, sla.counted_minutes) == (12_960, 44_160)
    assert sla.availability_percent == D("29.348")
    assert sla.credit_percent == D(50)


def test_maintenance_beyond_the_allowance_is_downtime_and_earns_its_credit(reserved_line, settings):
    # Down for 12 hours of maintenance announced in time, otherwise always available.
    everything = set(range(1440))
    _observe_days(reserved_line, first=date(2025, 3, 1), last=date(2025, 3, 31), minutes=everything)
    _observe(reserved_line, day=date(2025, 3, 20), minutes=everything - set(range(720)))
    _maintenance(
        reserved_line, datetime(2025, 3, 20, tzinfo=UTC), datetime(2025, 3, 20, 12, tzinfo=UTC)
    )
    sla = line_sla(line=reserved_line, since=MARCH[0], until=MARCH[1])
    # 8 hours excluded, 4 hours (240 minutes) down: 43,920 / 44,160 = 99.457 % → 10 %.
    assert (sla.available_minutes, sla.counted_minutes) == (43_920, 44_160)
    assert (sla.availability_percent, sla.credit_percent) == (D("99.457"), D(10))
    # The allowance is a setting: at 12 hours the whole window is excluded.
    settings.SLA_MAINTENANCE_ALLOWANCE_HOURS = 12
    sla = line_sla(line=reserved_line, since=MARCH[0], until=MARCH[1])
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (
        43_920,
        43_920,
        D(0),
    )


def test_earlier_maintenance_in_the_month_uses_the_allowance_first(reserved_line):
    everything = set(range(1440))
    _observe_days(reserved_line, first=date(2025, 3, 1), last=date(2025, 3, 31), minutes=everything)
    _observe(reserved_line, day=date(2025, 3, 2), minutes=everything - set(range(300)))
    _observe(reserved_line, day=date(2025, 3, 20), minutes=everything - set(range(300)))
    _maintenance(
        reserved_line, datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 2, 5, tzinfo=UTC)
    )
    _maintenance(
        reserved_line, datetime(2025, 3, 20, tzinfo=UTC), datetime(2025, 3, 20, 5, tzinfo=UTC)
    )
    # Read from the 15th: the 2nd's 5 hours used 5 of the 8, so 3 of the 20th's 5 hours
    # are excluded and 2 (120 minutes) are down, whatever period is read.
    since = datetime(2025, 3, 15, tzinfo=UTC)
    sla = line_sla(line=reserved_line, since=since, until=MARCH[1])
    assert (sla.available_minutes, sla.counted_minutes) == (17 * 1440 - 300, 17 * 1440 - 180)
    whole = line_sla(line=reserved_line, since=MARCH[0], until=MARCH[1])
    assert (whole.available_minutes, whole.counted_minutes) == (44_640 - 600, 44_640 - 480)


# -- workloads that fail on reserved GPUs (issue 15 point 5) --------------------------------

FAILED_AT = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
MARCH_10 = (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC))


def _failed_container(line, *, fault: str, reason: str):
    """A container on the line's GPU from 10:00, reported failed at 12:00:00 by ``fault``,
    the GPU observed available every minute of March 10 all the same."""
    _observe(line, day=date(2025, 3, 10), minutes=set(range(1440)))
    workload = container_create(
        line=line,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=None,
        gpu_count=1,
        now=FAILED_AT - timedelta(hours=2),
    )
    agent_reports(
        workload,
        state="failed",
        since=FAILED_AT,
        now=FAILED_AT + timedelta(minutes=1),
        reason=reason,
        fault=fault,
    )
    workload.refresh_from_db()
    return workload


def test_a_node_fault_failure_is_down_until_the_buyer_stops_it(reserved_line):
    workload = _failed_container(
        reserved_line, fault="node", reason="start failed: could not select device driver"
    )
    assert (workload.state, workload.fault) == (WorkloadState.FAILED, WorkloadFault.NODE)
    # Stopped by the buyer 90 minutes after the failure; a second stop changes nothing.
    stopped = workload_stop(workload=workload, actor=None, now=FAILED_AT + timedelta(minutes=90))
    workload_stop(workload=workload, actor=None, now=FAILED_AT + timedelta(hours=5))
    assert stopped.dismissed_at == FAILED_AT + timedelta(minutes=90)
    workload.refresh_from_db()
    assert (workload.state, workload.dismissed_at) == (
        WorkloadState.FAILED,
        FAILED_AT + timedelta(minutes=90),
    )

    # 12:00-13:30 down although metering saw the GPU: 1350 of 1440 = 93.750 % → 50 %.
    sla = line_sla(line=reserved_line, since=MARCH_10[0], until=MARCH_10[1])
    assert (sla.available_minutes, sla.counted_minutes) == (1350, 1440)
    assert (sla.availability_percent, sla.credit_percent) == (D("93.750"), D(50))
    # Settlement charges back the same 90 GPU-minutes to the node.
    node_id = reserved_line.allocations.get().gpu_device.node_id
    assert down_minutes(
        start=MARCH_10[0], end=MARCH_10[1], line_ids=[reserved_line.pk], by_node=True
    ) == {UsageKey(reserved_line.pk, node_id): 90}


def test_a_node_fault_failure_never_dismissed_is_down_to_the_end_of_the_period(reserved_line):
    _failed_container(reserved_line, fault="node", reason="the container disappeared")
    sla = line_sla(line=reserved_line, since=MARCH_10[0], until=MARCH_10[1])
    # 12:00 to midnight: 720 minutes down.
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (720, 1440, D(50))


def test_a_new_workload_on_the_gpu_ends_the_downtime(reserved_line):
    failed = _failed_container(reserved_line, fault="node", reason="the container disappeared")
    replaced_at = FAILED_AT + timedelta(minutes=30)
    container_create(
        line=reserved_line,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=None,
        gpu_count=1,
        now=replaced_at,
    )
    failed.refresh_from_db()
    assert failed.dismissed_at == replaced_at
    sla = line_sla(line=reserved_line, since=MARCH_10[0], until=MARCH_10[1])
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (1410, 1440, D(25))


def test_a_buyer_fault_failure_has_no_sla_effect(reserved_line):
    workload = _failed_container(
        reserved_line,
        fault="buyer",
        reason="pull failed: pull access denied for nobody/missing, repository does not exist",
    )
    assert (workload.state, workload.fault) == (WorkloadState.FAILED, WorkloadFault.BUYER)
    stopped = workload_stop(workload=workload, actor=None, now=FAILED_AT + timedelta(minutes=90))
    assert stopped.dismissed_at is None

    sla = line_sla(line=reserved_line, since=MARCH_10[0], until=MARCH_10[1])
    assert (sla.available_minutes, sla.counted_minutes, sla.credit_percent) == (1440, 1440, D(0))
    assert down_minutes(start=MARCH_10[0], end=MARCH_10[1], line_ids=[reserved_line.pk]) == {
        UsageKey(reserved_line.pk): 0
    }


@pytest.mark.parametrize(
    ("kind", "reported", "fault"),
    [
        ("container", "buyer", WorkloadFault.BUYER),
        ("container", "node", WorkloadFault.NODE),
        # An agent that does not say is presumed at fault; so is any other word.
        ("container", "", WorkloadFault.NODE),
        ("container", "nobody", WorkloadFault.NODE),
        # A deployment runs the catalogue's engine: never the buyer's fault.
        ("deployment", "buyer", WorkloadFault.NODE),
    ],
)
def test_whose_fault_a_reported_failure_is(kind, reported, fault):
    assert reported_fault(Workload(kind=kind), reported) == fault
