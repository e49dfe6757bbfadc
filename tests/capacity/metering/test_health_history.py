"""A node's health as history: health answers summed per node and UTC day
(``NodeHealthDay``), read back per day with availability, drawn on the node page."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from capacity.metering import batch
from capacity.metering.models import GpuAvailabilityDay, NodeHealthDay, NodePollState
from capacity.metering.polling import HealthSample, health_sample
from capacity.metering.selectors import node_health_history
from capacity.models import GpuDevice
from tests.tenancy import assert_hidden_from

D = Decimal
NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def test_a_health_answer_reduces_to_the_node_and_leaves_out_what_cannot_be_believed():
    gpus = [
        {"gpu_uuid": "a", "utilization_pct": 80, "temperature_c": 71, "power_mw": 650_000},
        {"gpu_uuid": "b", "utilization_pct": 35, "temperature_c": 58, "power_mw": 300_500},
        {"gpu_uuid": "c", "utilization_pct": 99, "temperature_c": 400, "power_mw": 1},  # 400 °C
        {"gpu_uuid": "d", "utilization_pct": True, "temperature_c": 50, "power_mw": 1},  # a bool
        "not a gpu",
    ]
    assert health_sample(gpus) == HealthSample(
        utilization_pct=57, temperature_c_max=71, power_mw=950_500
    )
    assert health_sample([{"gpu_uuid": "x", "utilization_pct": 5}]) is None


@pytest.mark.django_db
def test_each_health_poll_adds_to_its_node_and_day(node, fake_agent):
    def poll(at: datetime) -> None:
        batch.poll_and_store(
            [node.pk],
            now=at,
            interval_seconds=60,
            transport=fake_agent.transport(),
            always_check_health=True,
        )

    # The fake agent's GPUs (two) each report 50 %, 50 °C and 300 W.
    poll(datetime(2026, 11, 9, 10, 0, tzinfo=UTC))
    poll(datetime(2026, 11, 9, 23, 59, tzinfo=UTC))
    fake_agent.xid_errors = 0
    poll(datetime(2026, 11, 10, 0, 1, tzinfo=UTC))
    rows = list(
        NodeHealthDay.objects.filter(node=node)
        .order_by("day")
        .values_list(
            "day",
            "samples",
            "utilization_pct_sum",
            "temperature_c_sum",
            "temperature_c_max",
            "power_mw_sum",
        )
    )
    assert rows == [
        (date(2026, 11, 9), 2, 100, 100, 50, 1_200_000),
        (date(2026, 11, 10), 1, 50, 50, 50, 600_000),
    ]


@pytest.fixture
def node_with_history(node):
    """Three days of health and availability on a node with two GPUs (enrolled 8 Nov)."""
    enrolled = datetime(2026, 11, 8, 0, 0, tzinfo=UTC)
    node.enrolled_at = enrolled
    node.save(update_fields=["enrolled_at"])
    GpuDevice.objects.filter(node=node).update(created_at=enrolled)
    NodePollState.objects.filter(node=node).update(last_poll_at=NOW)
    first, second = GpuDevice.objects.filter(node=node).order_by("index")
    # 9 Nov: the first GPU available all day, the second 1,080 of 1,440 minutes.
    GpuAvailabilityDay.objects.create(gpu=first, day=date(2026, 11, 9), minutes="1" * 1440)
    GpuAvailabilityDay.objects.create(
        gpu=second, day=date(2026, 11, 9), minutes="1" * 1080 + "0" * 360
    )
    NodeHealthDay.objects.create(
        node=node,
        day=date(2026, 11, 9),
        samples=3,
        utilization_pct_sum=200,  # 66.7 %
        temperature_c_sum=205,  # 68.3 °C
        temperature_c_max=74,
        power_mw_sum=2_000_000,  # 666.7 W
    )
    NodeHealthDay.objects.create(
        node=node,
        day=date(2026, 11, 10),
        samples=2,
        utilization_pct_sum=90,
        temperature_c_sum=120,
        temperature_c_max=61,
        power_mw_sum=1_100_000,
    )
    return node


@pytest.mark.django_db
def test_history_per_utc_day_with_the_days_availability(node_with_history):
    history = node_health_history(node=node_with_history, now=NOW, days=3)
    assert [
        (
            row.day,
            row.health_samples,
            row.utilization_pct,
            row.temperature_c_avg,
            row.temperature_c_max,
            row.power_w_avg,
            row.availability_pct,
        )
        for row in history.days
    ] == [
        # 8 Nov: enrolled, never observed available (nothing in the bitmaps): 0 %.
        (date(2026, 11, 8), 0, None, None, None, None, D("0.00")),
        # 9 Nov: 2,520 of 2,880 GPU-minutes.
        (date(2026, 11, 9), 3, D("66.7"), D("68.3"), 74, D("666.7"), D("87.50")),
        # 10 Nov so far (12 hours), no bitmap yet: 0 of 1,440 GPU-minutes.
        (date(2026, 11, 10), 2, D("45.0"), D("60.0"), 61, D("550.0"), D("0.00")),
    ]
    assert history.percent_chart == {
        "kind": "line",
        "labels": ["2026-11-08", "2026-11-09", "2026-11-10"],
        "series": [
            {"label": "GPU utilization", "values": ["", "66.7", "45.0"], "unit": "%", "axis": "y"},
            {
                "label": "Availability",
                "values": ["0.00", "87.50", "0.00"],
                "unit": "%",
                "axis": "y",
            },
        ],
        "axes": {"x": "Day (UTC)", "y": "Percent (%)", "y1": ""},
    }
    assert history.thermal_chart["series"][1] == {
        "label": "Power, all GPUs (mean)",
        "values": ["", "666.7", "550.0"],
        "unit": "W",
        "axis": "y1",
    }


@pytest.mark.django_db
@time_machine.travel(NOW, tick=False)
def test_node_page_draws_the_history_and_lists_it(partner_client, node_with_history):
    response = partner_client.get(f"/partner/nodes/{node_with_history.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Health, last 14 days (UTC)" in page
    assert (
        '<tr><td class="nowrap">2026-11-09</td><td class="num">66.7</td><td class="num">87.50</td>'
        '<td class="num">68.3</td><td class="num">74</td><td class="num">666.7</td>'
        '<td class="num">3</td></tr>'
    ) in page
    assert 'canvas data-chart="node-health-percent"' in page
    assert 'canvas data-chart="node-health-thermal"' in page
    spec = json.loads(
        page.split('<script id="node-health-thermal" type="application/json">')[1].split(
            "</script>"
        )[0]
    )
    assert spec["axes"] == {"x": "Day (UTC)", "y": "Temperature (°C)", "y1": "Power (W)"}
    assert "vendor/chartjs/chart.umd.min.js" in page


@pytest.mark.django_db
@time_machine.travel(NOW, tick=False)
def test_another_partner_sees_no_history(other_client, node_with_history):
    assert_hidden_from(other_client, f"/partner/nodes/{node_with_history.pk}/")
    assert node_health_history(node=node_with_history, now=NOW + timedelta(days=30)).days[
        0
    ].day == date(2026, 11, 27)
