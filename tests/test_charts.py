"""Issue 16, point 5: charts drawn by Chart.js (package.json, served by the app) from
specs with titled axes and units: the buyer's cost per day, usage per bucket, the
partner's earnings. Exact values."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.contrib.staticfiles import finders
from django.urls import reverse

from billing.settlement.selectors import Bar, Chart
from contracts import checkout
from contracts.usage import UsageBucket, usage_chart
from tests.factories import OfferFactory, SiteFactory, gpu_pool

pytestmark = pytest.mark.django_db


def _spec(html: str, chart_id: str) -> dict:  # type: ignore[type-arg]
    found = re.search(rf'<script id="{chart_id}" type="application/json">(.*?)</script>', html)
    assert found is not None
    return json.loads(found.group(1))


def test_chart_js_is_served_by_the_app_from_npm():
    path = finders.find("vendor/chartjs/chart.umd.min.js")
    assert path is not None
    assert str(settings.NODE_MODULES) in path
    package = json.loads((settings.NODE_MODULES / "chart.js" / "package.json").read_text())
    assert package["version"] == "4.6.1"


def test_dashboard_cost_per_day_chart(buyer_org, buyer_client, partner_org, settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    gpu_pool(site=site, gpus=2)
    offer = OfferFactory(
        site=site,
        gpu_count=2,
        available_from=datetime(2026, 9, 1, tzinfo=UTC),
        reserved_price_1m_per_gpu_hour=Decimal("2.1000"),
    )
    with time_machine.travel(datetime(2026, 9, 30, 12, tzinfo=UTC), tick=False):
        checkout.reservation_checkout(
            buyer=buyer_org,
            offer=offer,
            gpu_count=2,
            starts_at=datetime(2026, 10, 1, tzinfo=UTC),
            term_months=1,
            actor=None,
        )
    with time_machine.travel(datetime(2026, 10, 3, 12, tzinfo=UTC), tick=False):
        html = buyer_client.get(reverse("dashboard")).content.decode()
    # 2 GPUs x 24 h x 2.10 a whole day; half of it on the 3rd, until noon.
    assert _spec(html, "cost-per-day") == {
        "kind": "bar",
        "labels": ["1 Oct", "2 Oct", "3 Oct"],
        "series": [
            {
                "label": "Estimated cost",
                "values": ["100.80", "100.80", "50.40"],
                "unit": "USD",
                "axis": "y",
            }
        ],
        "axes": {"x": "Day (UTC)", "y": "Estimated cost (USD)", "y1": ""},
    }
    assert '<canvas data-chart="cost-per-day" role="img"' in html
    # The getting-started list knows the buyer reserved.
    step = html.split('data-step="reserve"', 1)[1].split("</li>", 1)[0]
    assert " ".join(re.sub(r"<[^>]+>", " ", step).split()) == (
        "> Reserve capacity Done. 2 GPUs reserved now."
    )
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js" defer></script>' in html


def test_usage_chart_has_two_scales_with_units():
    rows = [
        UsageBucket(start=datetime(2026, 10, 1, tzinfo=UTC), busy_ms=5_400_000, input_tokens=7),
        UsageBucket(
            start=datetime(2026, 10, 2, tzinfo=UTC), output_tokens=1_000_000, input_tokens=500
        ),
    ]
    assert usage_chart(rows=rows, bucket="day") == {
        "kind": "bar",
        "labels": ["1 Oct", "2 Oct"],
        "series": [
            {
                "label": "Busy GPU time",
                "values": ["1.5000", "0.0000"],
                "unit": "GPU-h",
                "axis": "y",
            },
            {"label": "Tokens", "values": ["7", "1000500"], "unit": "tokens", "axis": "y1"},
        ],
        "axes": {
            "x": "Day (UTC)",
            "y": "Busy GPU time (GPU-h)",
            "y1": "Tokens, input + output",
        },
    }
    hourly = usage_chart(rows=rows[:1], bucket="hour")
    assert (hourly["labels"], hourly["axes"]["x"]) == (["01 Oct 00:00"], "Hour (UTC)")


def test_earnings_charts_are_money_per_month_and_site():
    bars = [
        Bar(label="Sep 2026", amount_minor=123_456, x=0, y=0, width=1, height=1),
        Bar(label="Oct 2026", amount_minor=-500, x=0, y=0, width=1, height=1),
    ]
    chart = Chart(currency="EUR", bars=bars, width=1, height=1)
    assert chart.month_spec == {
        "kind": "bar",
        "labels": ["Sep 2026", "Oct 2026"],
        "series": [
            {"label": "Net earnings", "values": ["1234.56", "-5.00"], "unit": "EUR", "axis": "y"}
        ],
        "axes": {"x": "Statement month (UTC)", "y": "Net earnings (EUR)", "y1": ""},
    }
    assert chart.site_spec["axes"] == {"x": "Site", "y": "Your share (EUR)", "y1": ""}
