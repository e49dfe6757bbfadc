"""Rate limits and monthly spend caps, in a store every gateway process shares.

Before a request is forwarded, ``reserve`` counts it against its key's requests and
tokens per minute and reserves its worst-case cost against the key's and the contract's
monthly caps, all in one atomic step; ``settle`` gives back what the request did not use
once its actual usage is known. A cap is therefore never exceeded, whatever the number
of requests in flight or of gateway processes: each reservation is checked and taken
atomically, and actual usage never exceeds the worst case reserved.

Two stores with the same behaviour: ``RedisStore`` (``settings.GATEWAY_STORE_URL``; one
Lua script per step, so several processes share it) and ``MemoryStore`` (one process;
the event loop makes each step atomic). Counters (``bounds`` explains the units):

- ``rpm:<key>:<minute>`` / ``tpm:<key>:<minute>``: requests and tokens (worst case until
  settled) in a fixed window of one UTC minute;
- ``spend:key:<key>:<YYYYMM>`` / ``spend:contract:<contract>:<YYYYMM>``: micros spent
  and reserved in a UTC calendar month. A month's counter that is absent starts from
  the database's sum for that month (the ``seed``, loaded by ``gateway.catalog``), so
  spend survives a restart of the store.

Redis runs Lua with double-precision numbers: every value compared there stays below
2⁵³ (``MAX_COUNTER``, about 90 million major units of spend in micros), and caps above
it count as that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

MAX_COUNTER = 2**53 - 1
MINUTE_TTL_SECONDS = 120
MONTH_TTL_SECONDS = 40 * 86_400


class Refusal(enum.IntEnum):
    REQUESTS_PER_MINUTE = 1
    TOKENS_PER_MINUTE = 2
    KEY_BUDGET = 3
    CONTRACT_BUDGET = 4

    @property
    def is_budget(self) -> bool:
        return self in (Refusal.KEY_BUDGET, Refusal.CONTRACT_BUDGET)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One request's claim on its key's limits and its key's and contract's budgets."""

    key_id: int
    contract_id: int
    minute: int  # Unix minute the request was admitted in
    month: str  # "YYYYMM", UTC
    requests_per_minute: int
    tokens_per_minute: int
    tokens: int  # worst case: max_input_tokens + max_output_tokens
    cost_micros: int  # worst case
    key_cap_micros: int | None
    contract_cap_micros: int | None
    key_seed_micros: int  # the database's month spend of the key, if the counter is absent
    contract_seed_micros: int

    @property
    def keys(self) -> tuple[str, str, str, str]:
        return (
            f"gw:rpm:{self.key_id}:{self.minute}",
            f"gw:tpm:{self.key_id}:{self.minute}",
            f"gw:spend:key:{self.key_id}:{self.month}",
            f"gw:spend:contract:{self.contract_id}:{self.month}",
        )


def _cap(value: int | None) -> int:
    return -1 if value is None else min(value, MAX_COUNTER)


class Store(Protocol):
    async def reserve(self, reservation: Reservation) -> Refusal | None: ...

    async def settle(self, reservation: Reservation, *, tokens: int, cost_micros: int) -> None: ...

    async def spent(self, *, key_id: int | None, contract_id: int | None, month: str) -> int: ...

    async def close(self) -> None: ...


class MemoryStore:
    """The store of a single gateway process (``make run``): plain dicts."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    async def reserve(self, reservation: Reservation) -> Refusal | None:
        rpm, tpm, key_spend, contract_spend = reservation.keys
        counters = self._counters
        if counters.get(rpm, 0) + 1 > reservation.requests_per_minute:
            return Refusal.REQUESTS_PER_MINUTE
        if counters.get(tpm, 0) + reservation.tokens > reservation.tokens_per_minute:
            return Refusal.TOKENS_PER_MINUTE
        counters.setdefault(key_spend, reservation.key_seed_micros)
        counters.setdefault(contract_spend, reservation.contract_seed_micros)
        key_cap, contract_cap = (
            _cap(reservation.key_cap_micros),
            _cap(reservation.contract_cap_micros),
        )
        if key_cap >= 0 and counters[key_spend] + reservation.cost_micros > key_cap:
            return Refusal.KEY_BUDGET
        if contract_cap >= 0 and counters[contract_spend] + reservation.cost_micros > contract_cap:
            return Refusal.CONTRACT_BUDGET
        counters[rpm] = counters.get(rpm, 0) + 1
        counters[tpm] = counters.get(tpm, 0) + reservation.tokens
        counters[key_spend] += reservation.cost_micros
        counters[contract_spend] += reservation.cost_micros
        if len(counters) > 100_000:
            self._forget_old_minutes(reservation.minute)
        return None

    def _forget_old_minutes(self, minute: int) -> None:
        for name in [n for n in self._counters if n.startswith(("gw:rpm:", "gw:tpm:"))]:
            if int(name.rsplit(":", 1)[1]) < minute - 1:
                del self._counters[name]

    async def settle(self, reservation: Reservation, *, tokens: int, cost_micros: int) -> None:
        _, tpm, key_spend, contract_spend = reservation.keys
        counters = self._counters
        if tpm in counters:
            counters[tpm] -= reservation.tokens - tokens
        counters[key_spend] -= reservation.cost_micros - cost_micros
        counters[contract_spend] -= reservation.cost_micros - cost_micros

    async def spent(self, *, key_id: int | None, contract_id: int | None, month: str) -> int:
        name = (
            f"gw:spend:key:{key_id}:{month}"
            if key_id is not None
            else f"gw:spend:contract:{contract_id}:{month}"
        )
        return self._counters.get(name, 0)

    async def close(self) -> None:
        return None


_RESERVE = """
local rpm = tonumber(redis.call('GET', KEYS[1]) or '0')
if rpm + 1 > tonumber(ARGV[1]) then return 1 end
local tokens = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') + tokens > tonumber(ARGV[2]) then return 2 end
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[10]) end
if redis.call('EXISTS', KEYS[4]) == 0 then redis.call('SET', KEYS[4], ARGV[8], 'EX', ARGV[10]) end
local cost = tonumber(ARGV[4])
local key_cap = tonumber(ARGV[5])
if key_cap >= 0 and tonumber(redis.call('GET', KEYS[3])) + cost > key_cap then return 3 end
local contract_cap = tonumber(ARGV[6])
if contract_cap >= 0 and tonumber(redis.call('GET', KEYS[4])) + cost > contract_cap then return 4 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('INCRBY', KEYS[3], ARGV[4])
redis.call('INCRBY', KEYS[4], ARGV[4])
return 0
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[2]) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('DECRBY', KEYS[3], ARGV[2]) end
return 0
"""


class RedisStore:
    """The store gateway processes share: one Redis, one Lua script per step."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(url)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    async def reserve(self, reservation: Reservation) -> Refusal | None:
        outcome = await self._reserve(
            keys=list(reservation.keys),
            args=[
                reservation.requests_per_minute,
                reservation.tokens_per_minute,
                reservation.tokens,
                reservation.cost_micros,
                _cap(reservation.key_cap_micros),
                _cap(reservation.contract_cap_micros),
                reservation.key_seed_micros,
                reservation.contract_seed_micros,
                MINUTE_TTL_SECONDS,
                MONTH_TTL_SECONDS,
            ],
        )
        return Refusal(int(outcome)) if int(outcome) else None

    async def settle(self, reservation: Reservation, *, tokens: int, cost_micros: int) -> None:
        _, tpm, key_spend, contract_spend = reservation.keys
        await self._settle(
            keys=[tpm, key_spend, contract_spend],
            args=[reservation.tokens - tokens, reservation.cost_micros - cost_micros],
        )

    async def spent(self, *, key_id: int | None, contract_id: int | None, month: str) -> int:
        name = (
            f"gw:spend:key:{key_id}:{month}"
            if key_id is not None
            else f"gw:spend:contract:{contract_id}:{month}"
        )
        value = await self._redis.get(name)
        return int(value or 0)

    async def close(self) -> None:
        await self._redis.aclose()


def make_store(url: str) -> Store:
    return RedisStore(url) if url else MemoryStore()
