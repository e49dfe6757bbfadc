"""Limits and caps in the shared store: atomic, exact, the same in memory and in Redis."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis

from gateway.budget import MemoryStore, RedisStore, Refusal, Reservation

STORE_URL = os.environ.get("GATEWAY_TEST_STORE_URL", "redis://127.0.0.1:6379/13")


def reservation(**overrides: object) -> Reservation:
    values: dict[str, object] = {
        "key_id": 7,
        "contract_id": 3,
        "minute": 29_000_000,
        "month": "202612",
        "requests_per_minute": 100,
        "tokens_per_minute": 100_000,
        "tokens": 1000,
        "cost_micros": 4_000,
        "key_cap_micros": None,
        "contract_cap_micros": None,
        "key_seed_micros": 0,
        "contract_seed_micros": 0,
    }
    values.update(overrides)
    return Reservation(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """A function that runs a scenario (a coroutine function of the store) to its end."""
    if request.param == "redis":
        redis.Redis.from_url(STORE_URL).flushdb()

    def run(scenario):
        async def main():
            store = MemoryStore() if request.param == "memory" else RedisStore(STORE_URL)
            try:
                return await scenario(store)
            finally:
                await store.close()

        return asyncio.run(main())

    yield run
    if request.param == "redis":
        redis.Redis.from_url(STORE_URL).flushdb()


def test_requests_per_minute(store):
    async def scenario(store):
        first = reservation(requests_per_minute=2)
        outcomes = [await store.reserve(first) for _ in range(3)]
        next_minute = await store.reserve(reservation(requests_per_minute=2, minute=29_000_001))
        return outcomes, next_minute

    outcomes, next_minute = store(scenario)
    assert outcomes == [None, None, Refusal.REQUESTS_PER_MINUTE]
    assert next_minute is None


def test_tokens_per_minute_count_the_worst_case_until_settled(store):
    async def scenario(store):
        claim = reservation(tokens_per_minute=2500, tokens=1000)
        first, second = await store.reserve(claim), await store.reserve(claim)
        third = await store.reserve(claim)
        await store.settle(claim, tokens=100, cost_micros=400)
        fourth = await store.reserve(claim)
        return first, second, third, fourth

    assert store(scenario) == (None, None, Refusal.TOKENS_PER_MINUTE, None)


def test_an_absent_month_counter_starts_from_the_seed(store):
    async def scenario(store):
        claim = reservation(
            key_cap_micros=10_000,
            contract_cap_micros=50_000,
            key_seed_micros=2_000,
            contract_seed_micros=9_999_999,  # ignored: contract counter absent → seeded
        )
        return await store.reserve(claim), await store.reserve(claim)

    # The contract's seed (9,999,999) is over its cap: refused on the contract.
    assert store(scenario) == (Refusal.CONTRACT_BUDGET, Refusal.CONTRACT_BUDGET)


def test_key_cap_exact_to_the_micro(store):
    async def scenario(store):
        claim = reservation(key_cap_micros=10_000, key_seed_micros=2_000)
        outcomes = [await store.reserve(claim) for _ in range(3)]
        spent_reserved = await store.spent(key_id=7, contract_id=None, month="202612")
        await store.settle(claim, tokens=0, cost_micros=0)  # used nothing
        after_settle = await store.spent(key_id=7, contract_id=None, month="202612")
        fourth = await store.reserve(claim)
        contract = await store.spent(key_id=None, contract_id=3, month="202612")
        return outcomes, spent_reserved, after_settle, fourth, contract

    outcomes, spent_reserved, after_settle, fourth, contract = store(scenario)
    # 2,000 + 4,000 + 4,000 = 10,000 = the cap; a third would make 14,000.
    assert outcomes == [None, None, Refusal.KEY_BUDGET]
    assert spent_reserved == 10_000
    assert after_settle == 6_000
    assert fourth is None
    assert contract == 4_000 + 4_000 - 4_000 + 4_000


def test_concurrent_reservations_never_exceed_the_cap(store):
    async def scenario(store):
        claim = reservation(contract_cap_micros=4_000 * 10 + 3_999)
        outcomes = await asyncio.gather(*(store.reserve(claim) for _ in range(64)))
        return outcomes, await store.spent(key_id=None, contract_id=3, month="202612")

    outcomes, spent = store(scenario)
    assert outcomes.count(None) == 10
    assert outcomes.count(Refusal.CONTRACT_BUDGET) == 54
    assert spent == 40_000
