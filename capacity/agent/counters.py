"""Cumulative counters to per-window deltas.

NVML's energy counter and an inference server's token and request counters only ever
grow, until the driver reloads or the server restarts and they start again from zero.
A window's usage is the difference between two readings; a reading below the previous
one means the counter was reset during the window, and then everything it counted since
the reset (its new value) is the best and never negative answer.
"""

from __future__ import annotations

from dataclasses import dataclass


def counter_delta(previous: int, current: int) -> int:
    """Usage between two readings of a cumulative counter; a decrease is a reset."""
    if previous < 0 or current < 0:
        raise ValueError("cumulative counters are never negative")
    if current < previous:
        return current
    return current - previous


@dataclass(frozen=True)
class CounterReadings:
    """One GPU's cumulative counters read at one instant."""

    energy_mj: int
    input_tokens: int
    output_tokens: int
    requests: int

    def to_json(self) -> dict[str, int]:
        return {
            "energy_mj": self.energy_mj,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
        }

    @classmethod
    def from_json(cls, data: dict[str, int]) -> CounterReadings:
        return cls(
            energy_mj=int(data["energy_mj"]),
            input_tokens=int(data["input_tokens"]),
            output_tokens=int(data["output_tokens"]),
            requests=int(data["requests"]),
        )


@dataclass(frozen=True)
class UsageDeltas:
    """Usage of one GPU over one window, derived from two ``CounterReadings``."""

    energy_mj: int
    input_tokens: int
    output_tokens: int
    requests: int
    # True when at least one counter went backwards between the two readings.
    counter_reset: bool


def readings_delta(previous: CounterReadings, current: CounterReadings) -> UsageDeltas:
    """Per-counter deltas; each counter resets independently (driver vs inference server)."""
    pairs = (
        (previous.energy_mj, current.energy_mj),
        (previous.input_tokens, current.input_tokens),
        (previous.output_tokens, current.output_tokens),
        (previous.requests, current.requests),
    )
    return UsageDeltas(
        energy_mj=counter_delta(*pairs[0]),
        input_tokens=counter_delta(*pairs[1]),
        output_tokens=counter_delta(*pairs[2]),
        requests=counter_delta(*pairs[3]),
        counter_reset=any(after < before for before, after in pairs),
    )
