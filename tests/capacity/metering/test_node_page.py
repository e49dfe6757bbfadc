"""The partner's node page shows quarantined records with their reasons, and availability."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import time_machine

from capacity.metering.models import (
    GpuAvailabilityDay,
    NodePollState,
    QuarantinedRecord,
    QuarantineReason,
)
from capacity.models import GpuDevice
from tests.tenancy import assert_hidden_from

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
ENROLLED = datetime(2026, 11, 10, 10, 0, tzinfo=UTC)


@pytest.fixture
def metered_node(node):
    node.enrolled_at = ENROLLED
    node.save(update_fields=["enrolled_at"])
    first, second = GpuDevice.objects.filter(node=node).order_by("index")
    GpuDevice.objects.filter(node=node).update(created_at=ENROLLED)
    # Polled at 12:00: every minute before it is measured.
    NodePollState.objects.update_or_create(node=node, defaults={"last_poll_at": NOW})
    # Between enrollment (10:00) and now (12:00): the first GPU was observed available
    # 90 of 120 minutes, the second all 120, so 210 of 240 GPU-minutes.
    GpuAvailabilityDay.objects.create(
        gpu=first, day=date(2026, 11, 10), minutes="0" * 600 + "1" * 90 + "0" * 750
    )
    GpuAvailabilityDay.objects.create(
        gpu=second, day=date(2026, 11, 10), minutes="0" * 600 + "1" * 120 + "0" * 720
    )
    QuarantinedRecord.objects.create(
        node=node,
        journal_epoch="e1",
        seq=42,
        reason=QuarantineReason.ENERGY_EXCEEDS_MAX_POWER,
        detail="energy_mj 99000000 above 700 W x 60 s",
        gpu_uuid=first.uuid,
        window_start=datetime(2026, 11, 10, 11, 0, tzinfo=UTC),
        window_end=datetime(2026, 11, 10, 11, 1, tzinfo=UTC),
        payload={"seq": 42},
    )
    return node


@time_machine.travel(NOW, tick=False)
def test_node_page_shows_quarantine_reasons_and_availability(partner_client, metered_node):
    response = partner_client.get(f"/partner/nodes/{metered_node.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Energy above the GPU&#x27;s max power" in page
    assert "energy_mj 99000000 above 700 W x 60 s" in page
    assert "#42" in page
    assert "87.50 %" in page
    assert "(210 of 240 GPU-minutes" in page


@time_machine.travel(NOW, tick=False)
def test_another_partner_cannot_open_the_node_page(other_client, metered_node):
    assert_hidden_from(other_client, f"/partner/nodes/{metered_node.pk}/")
