"""Maintenance and curtailment windows: the service's rules and the database's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import AuditEvent
from capacity import services
from capacity.models import NodeWindow, WindowKind

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


def _schedule(node, start, end, kind=WindowKind.MAINTENANCE):
    return services.window_schedule(
        node=node, actor=None, kind=kind, start=start, end=end, reason="PSU swap"
    )


@pytest.mark.django_db
def test_schedule_stores_the_window(node):
    window = _schedule(node, NOW + timedelta(days=8), NOW + timedelta(days=8, hours=4))
    stored = NodeWindow.objects.get(pk=window.pk)
    assert (stored.kind, stored.start, stored.end, stored.reason, stored.announced_at) == (
        "maintenance",
        NOW + timedelta(days=8),
        NOW + timedelta(days=8, hours=4),
        "PSU swap",
        NOW,
    )
    assert (
        AuditEvent.objects.filter(action="window.scheduled", target_id=str(window.pk)).count() == 1
    )


FAR_START = "A window starts within 365 days from now (by 2027-05-04 12:00 UTC)."


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (
            NOW - timedelta(hours=1),
            NOW + timedelta(hours=1),
            {"start": ["The window cannot start in the past."]},
        ),
        (
            NOW + timedelta(hours=5),
            NOW + timedelta(hours=2),
            {"end": ["The window must end after it starts."]},
        ),
        (
            NOW + timedelta(hours=5),
            NOW + timedelta(hours=5),
            {"end": ["The window must end after it starts."]},
        ),
        # Issue 13 #6: a maintenance window from 2026 to 2099 over reserved GPUs.
        (
            NOW + timedelta(days=8),
            datetime(2099, 1, 1, tzinfo=UTC),
            {"end": ["A window lasts at most 31 days; this one lasts 26531 days."]},
        ),
        (
            NOW + timedelta(days=1),
            NOW + timedelta(days=33),
            {"end": ["A window lasts at most 31 days; this one lasts 32 days."]},
        ),
        (
            NOW + timedelta(days=365, seconds=1),
            NOW + timedelta(days=366),
            {"start": [FAR_START]},
        ),
        (
            datetime(9999, 12, 30, tzinfo=UTC),
            datetime(9999, 12, 31, tzinfo=UTC),
            {"start": [FAR_START]},
        ),
    ],
)
def test_past_inverted_far_and_long_windows_are_refused(node, start, end, expected):
    """Issue 13 #11: every field has bounds, refused with a message that states them."""
    with pytest.raises(ValidationError) as caught:
        _schedule(node, start, end)
    assert caught.value.message_dict == expected
    assert NodeWindow.objects.count() == 0


@pytest.mark.django_db
def test_overlapping_window_is_refused_with_the_clashing_window(node):
    _schedule(node, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6))
    with pytest.raises(ValidationError) as caught:
        _schedule(node, NOW + timedelta(days=1, hours=5), NOW + timedelta(days=1, hours=8))
    assert caught.value.message_dict == {
        "start": [
            "This window overlaps the maintenance window from 2026-05-05 12:00 to 2026-05-05 18:00 UTC."
        ]
    }
    assert NodeWindow.objects.count() == 1


@pytest.mark.django_db
def test_adjacent_windows_other_kinds_and_other_nodes_may_coexist(node, site):
    from tests.factories import NodeFactory

    _schedule(node, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6))
    _schedule(
        node, NOW + timedelta(days=1, hours=6), NOW + timedelta(days=1, hours=8)
    )  # [) touches
    _schedule(
        node, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6), kind=WindowKind.CURTAILMENT
    )
    _schedule(NodeFactory(site=site), NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6))
    assert NodeWindow.objects.count() == 4


@pytest.mark.django_db
def test_exclusion_constraint_holds_without_the_service(node):
    period = DateTimeTZRange(NOW + timedelta(days=1), NOW + timedelta(days=2), "[)")
    NodeWindow.objects.create(node=node, kind=WindowKind.CURTAILMENT, period=period)
    with pytest.raises(IntegrityError), transaction.atomic():
        NodeWindow.objects.create(
            node=node,
            kind=WindowKind.CURTAILMENT,
            period=DateTimeTZRange(NOW + timedelta(hours=30), NOW + timedelta(days=3), "[)"),
        )
    assert NodeWindow.objects.count() == 1


@pytest.mark.django_db
def test_unbounded_or_inverted_period_is_refused_by_the_database(node):
    with pytest.raises(IntegrityError), transaction.atomic():
        NodeWindow.objects.create(
            node=node, kind=WindowKind.MAINTENANCE, period=DateTimeTZRange(NOW, None, "[)")
        )
    with (
        pytest.raises(Exception, match="range lower bound must be less than or equal"),
        transaction.atomic(),
    ):
        NodeWindow.objects.create(
            node=node,
            kind=WindowKind.MAINTENANCE,
            period=DateTimeTZRange(NOW + timedelta(hours=2), NOW, "[)"),
        )
    assert NodeWindow.objects.count() == 0


@pytest.mark.django_db
def test_cancel_frees_the_slot_and_refuses_twice(node):
    window = _schedule(node, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6))
    cancelled = services.window_cancel(window=window, actor=None)
    assert cancelled.cancelled_at == NOW
    with pytest.raises(ValidationError) as caught:
        services.window_cancel(window=window, actor=None)
    assert caught.value.messages == ["This window is already cancelled."]
    _schedule(node, NOW + timedelta(days=1), NOW + timedelta(days=1, hours=6))
    assert NodeWindow.objects.scheduled().count() == 1


@pytest.mark.django_db
def test_started_window_cannot_be_cancelled(node):
    window = _schedule(node, NOW + timedelta(hours=1), NOW + timedelta(hours=3))
    with (
        time_machine.travel(NOW + timedelta(hours=2), tick=False),
        pytest.raises(ValidationError) as caught,
    ):
        services.window_cancel(window=window, actor=None)
    assert caught.value.messages == [
        "This window has already started; it can no longer be cancelled."
    ]
    assert NodeWindow.objects.get(pk=window.pk).cancelled_at is None


@pytest.mark.django_db
def test_the_longest_and_farthest_windows_are_accepted(node):
    last = _schedule(node, NOW + timedelta(days=365), NOW + timedelta(days=396))
    assert (last.start, last.end) == (NOW + timedelta(days=365), NOW + timedelta(days=396))


@pytest.mark.django_db
def test_the_form_and_the_api_refuse_a_window_of_73_years(node, partner_client, partner_api):
    page = partner_client.post(
        f"/partner/nodes/{node.pk}/windows/new/",
        {"kind": "maintenance", "start": "2026-05-12T00:00", "end": "2099-01-01T00:00"},
    )
    assert page.status_code == 200
    assert "A window lasts at most 31 days; this one lasts 26532 days." in page.content.decode()
    assert "UTC, at most 31 days after the start." in page.content.decode()
    assert (
        "does not count against SLA availability, up to 8 hours per GPU per calendar month"
        in page.content.decode()
    )
    response = partner_api.post(
        f"/api/v1/nodes/{node.pk}/windows",
        {"kind": "curtailment", "start": "2028-01-01T00:00:00Z", "end": "2028-01-02T00:00:00Z"},
        format="json",
    )
    assert (response.status_code, response.json()) == (400, {"start": [FAR_START]})
    assert NodeWindow.objects.count() == 0
