"""Sweep claims, the beat schedule, outage emails, availability figures."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core import mail
from django_celery_beat.models import PeriodicTask

from capacity.metering import health, sweep
from capacity.metering.availability import gpu_availability
from capacity.metering.models import GpuAvailabilityDay, NodePollState
from capacity.metering.selectors import node_availability
from capacity.models import MaintenanceWindow, NodeStatus
from tests.capacity.metering.conftest import T0

pytestmark = pytest.mark.django_db


def test_beat_schedule_is_created_by_migration_and_editable():
    task = PeriodicTask.objects.get(name="metering: sweep due nodes")
    assert task.task == "capacity.metering.tasks.sweep"
    assert task.interval.every == 60 and task.interval.period == "seconds"


def test_sweep_claims_due_nodes_once_and_enqueues_on_commit(
    node, django_capture_on_commit_callbacks
):
    enqueued: list[list[int]] = []
    with django_capture_on_commit_callbacks(execute=True):
        first = sweep.sweep(now=T0, interval_seconds=60, enqueue=enqueued.append)
    with django_capture_on_commit_callbacks(execute=True):
        second = sweep.sweep(
            now=T0 + timedelta(seconds=30), interval_seconds=60, enqueue=enqueued.append
        )

    assert (first.claimed, first.batches, second.claimed) == (1, 1, 0)
    assert enqueued == [[node.pk]]
    assert NodePollState.objects.get(node=node).next_poll_at == T0 + timedelta(seconds=60)


def test_claimed_node_is_not_claimed_again_within_its_lease(node):
    claimed = sweep.claim_due_nodes(now=T0, limit=10, lease=timedelta(seconds=60))
    assert claimed == [node.pk]
    # Same node, already leased: not due.
    assert sweep.claim_due_nodes(now=T0, limit=10, lease=timedelta(seconds=60)) == []


def test_sweep_creates_poll_state_for_pollable_nodes_only(node):
    NodePollState.objects.all().delete()
    assert sweep.ensure_poll_states(now=T0) == 1
    node.status = NodeStatus.RETIRED
    node.save()
    NodePollState.objects.all().delete()
    assert sweep.ensure_poll_states(now=T0) == 0


def test_outage_email_once_after_ten_minutes_and_recovery_email_once(
    node, django_capture_on_commit_callbacks
):
    health.record_failure(node_id=node.pk, error="timed out", polled_at=T0, interval_seconds=60)
    with django_capture_on_commit_callbacks(execute=True):
        assert health.notify_long_outages(now=T0 + timedelta(minutes=9)) == []
        assert health.notify_long_outages(now=T0 + timedelta(minutes=10)) == [node.pk]
        assert health.notify_long_outages(now=T0 + timedelta(minutes=11)) == []
    assert len(mail.outbox) == 2  # owner + admin
    assert "unreachable" in mail.outbox[0].subject

    from capacity.metering.polling import PollOutcome

    snapshot = health.HealthSnapshot(
        NodeStatus.UNREACHABLE, "", unreachable=True, integrity_notified=False
    )
    outcome = PollOutcome(node_id=node.pk, polled_at=T0 + timedelta(minutes=12))
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            health.apply_outcome(outcome=outcome, before=snapshot, interval_seconds=60) == "online"
        )
        health.apply_outcome(outcome=outcome, before=snapshot, interval_seconds=60)
    assert len(mail.outbox) == 4
    assert "reachable again" in mail.outbox[-1].subject
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE


def test_status_outside_metering_is_left_alone(node):
    node.status = NodeStatus.MAINTENANCE
    node.save()
    health.record_failure(node_id=node.pk, error="timed out", polled_at=T0, interval_seconds=60)
    node.refresh_from_db()
    assert node.status == NodeStatus.MAINTENANCE


def test_gpu_availability_counts_minutes_and_excludes_announced_maintenance():
    day = T0.date()
    bits = ["0"] * 1440
    for minute in range(600, 660):  # 10:00-11:00 observed
        bits[minute] = "1"
    figure = gpu_availability(
        bitmaps={day: "".join(bits)},
        counted_from=T0,
        until=T0 + timedelta(hours=2),
        measured_until=T0 + timedelta(hours=2),
    )
    assert (figure.available_minutes, figure.counted_minutes) == (60, 120)
    assert str(figure.percent) == "50.00"
    figure = gpu_availability(
        bitmaps={day: "".join(bits)},
        counted_from=T0,
        until=T0 + timedelta(hours=2),
        measured_until=T0 + timedelta(hours=2),
        excluded=[(T0 + timedelta(hours=1), T0 + timedelta(hours=2))],
    )
    assert (figure.available_minutes, figure.counted_minutes) == (60, 60)


def test_node_availability_over_30_days_with_maintenance_seam(node):
    now = datetime(2026, 1, 6, 0, 0, tzinfo=UTC)  # node enrolled 2026-01-04 10:00
    bits = "1" * 1440
    node.gpus.update(created_at=node.enrolled_at)
    # Polled at ``now``: every minute before it is measured.
    NodePollState.objects.update_or_create(node=node, defaults={"last_poll_at": now})
    for gpu in node.gpus.all():
        GpuAvailabilityDay.objects.create(gpu=gpu, day=date(2026, 1, 5), minutes=bits)
    figure = node_availability(node=node, now=now)
    # 2 GPUs x (14 h on Jan 4 + 24 h on Jan 5) counted, 2 x 24 h observed.
    assert (figure.available_minutes, figure.counted_minutes) == (2 * 1440, 2 * 38 * 60)
    MaintenanceWindow.objects.create(
        node=node,
        period=(datetime(2026, 1, 4, 10, tzinfo=UTC), datetime(2026, 1, 5, 0, tzinfo=UTC)),
        announced_at=datetime(2025, 12, 1, tzinfo=UTC),
    )
    figure = node_availability(node=node, now=now)
    # Of the 14 hours of maintenance, the month's allowance (8 h) is excluded; the other 6
    # count as down.
    assert (figure.available_minutes, figure.counted_minutes) == (2 * 1440, 2 * (1440 + 360))
    assert str(figure.percent) == "80.00"


def test_quarantine_panel_shows_reasons_to_the_partner(node):
    from django.template.loader import render_to_string

    from capacity.metering.models import QuarantinedRecord, QuarantineReason
    from capacity.metering.selectors import quarantine_counts_for_node, quarantined_records_for_node

    QuarantinedRecord.objects.create(
        node=node,
        journal_epoch="e",
        seq=7,
        reason=QuarantineReason.BUSY_EXCEEDS_WINDOW,
        detail="busy_ms 61000 > window 60000 ms",
        gpu_uuid="GPU-1",
        payload={},
    )
    html = render_to_string(
        "capacity/metering/quarantine_panel.html",
        {
            "quarantined": quarantined_records_for_node(node=node),
            "quarantine_counts": quarantine_counts_for_node(node=node),
            "poll_state": NodePollState.objects.get(node=node),
        },
    )
    assert "Busy time longer than the window" in html
    assert "busy_ms 61000 &gt; window 60000 ms" in html
    assert "#7" in html
