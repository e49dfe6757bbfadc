"""Hard monthly caps through real gateway processes: never exceeded under concurrency
across two processes sharing Redis, and a month's spend survives a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import redis

from capacity.metering.models import InferenceRequest
from gateway import bounds
from tests.gateway.conftest import PRODUCT, SECOND_GATEWAY_PORT, STORE_URL, logged_rows

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHAT = {"model": PRODUCT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000}
# The line's prices in these tests: 10.0000 in and 30.0000 out per million tokens.
INPUT_TICKS, OUTPUT_TICKS = 100_000, 300_000
# Worst case: (6 bytes + 16 + 64) input + 2000 output tokens: 6.086 cents.
WORST_MICROS = bounds.cost_micros(
    input_tokens=86,
    output_tokens=2000,
    input_price_ticks=INPUT_TICKS,
    output_price_ticks=OUTPUT_TICKS,
)
# What one request really costs: 5 input tokens ("hi" + 4), 2000 output: 6.005 cents.
ACTUAL_MICROS = bounds.cost_micros(
    input_tokens=5,
    output_tokens=2000,
    input_price_ticks=INPUT_TICKS,
    output_price_ticks=OUTPUT_TICKS,
)


@pytest.fixture
def priced(world):
    world.line.input_price_per_million_tokens = Decimal("10.0000")
    world.line.output_price_per_million_tokens = Decimal("30.0000")
    world.line.save()
    return world


def month() -> str:
    now = datetime.now(tz=UTC)
    return f"{now.year:04d}{now.month:02d}"


async def _fire(urls: list[str], key: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=128)) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[index % len(urls)]}/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {key}"},
                )
                for index in range(count)
            )
        )


def test_contract_cap_holds_under_64_concurrent_requests_on_two_gateways(
    priced, start_gateway, shared_store
):
    world = priced
    assert (WORST_MICROS, ACTUAL_MICROS) == (6_086_000, 6_005_000)
    # Room for 10 worst cases (60.86 cents), and 10 actual (60.05) + 1 worst (66.136) is
    # over: exactly 10 are served, however the 64 interleave.
    world.contract.inference_monthly_cap_minor = 61
    world.contract.save()
    first = start_gateway(HASHGRID_GATEWAY_STORE_URL=shared_store)
    second = start_gateway(port=SECOND_GATEWAY_PORT, HASHGRID_GATEWAY_STORE_URL=shared_store)
    responses = asyncio.run(_fire([first.url, second.url], world.key, 64))
    statuses = [response.status_code for response in responses]
    served = statuses.count(200)
    assert served + statuses.count(429) == 64
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {
        "insufficient_quota"
    }
    assert served == 10
    rows = logged_rows(count=served)
    assert len(rows) == served
    spent = sum(
        bounds.cost_micros(
            input_tokens=row.gateway_input_tokens,
            output_tokens=row.gateway_output_tokens,
            input_price_ticks=INPUT_TICKS,
            output_price_ticks=OUTPUT_TICKS,
        )
        for row in rows
    )
    assert spent == 10 * ACTUAL_MICROS <= 61 * bounds.MICROS_PER_MINOR
    counter = redis.Redis.from_url(STORE_URL).get(
        f"gw:spend:contract:{world.contract.pk}:{month()}"
    )
    assert int(counter) == spent


def test_month_spend_survives_a_gateway_restart(priced, start_gateway):
    """The in-process store starts empty; the month's counter starts from the log."""
    world = priced
    # Room for one worst case (6.086 cents), not for one actual and one worst (12.091).
    world.line_key.monthly_cap_minor = 10
    world.line_key.save()
    gateway = start_gateway()
    ok = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=30,
    )
    assert ok.status_code == 200
    logged_rows(count=1)
    gateway.stop()
    gateway = start_gateway()
    refused = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=30,
    )
    # 6,005,000 spent + 6,086,000 worst case > 10,000,000 micros: refused.
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert InferenceRequest.objects.count() == 1
