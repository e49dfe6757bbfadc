from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capacity.agent.counters import CounterReadings, counter_delta, readings_delta


def test_counter_delta_is_the_difference_or_the_new_value_after_a_reset() -> None:
    assert counter_delta(100, 150) == 50
    assert counter_delta(100, 100) == 0
    assert counter_delta(10**12, 40) == 40  # reset: everything since it is the new value
    with pytest.raises(ValueError, match="never negative"):
        counter_delta(5, -1)


def test_readings_delta_handles_each_counter_on_its_own() -> None:
    before = CounterReadings(energy_mj=5_000, input_tokens=900, output_tokens=90, requests=9)
    after = CounterReadings(energy_mj=6_500, input_tokens=30, output_tokens=7, requests=1)

    deltas = readings_delta(before, after)

    assert (deltas.energy_mj, deltas.input_tokens, deltas.output_tokens, deltas.requests) == (
        1_500,
        30,
        7,
        1,
    )
    assert deltas.counter_reset is True
    assert readings_delta(before, before).counter_reset is False


@given(
    start=st.integers(min_value=0, max_value=10**15),
    windows=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**9), st.booleans()), max_size=60
    ),
)
def test_deltas_add_up_to_true_usage_whatever_the_resets(
    start: int, windows: list[tuple[int, bool]]
) -> None:
    """A reset at the start of a window loses nothing unless the window ends at or above
    the old reading; deltas are never negative (each is one of two exact values below)."""
    reading, total_delta, unseen = start, 0, 0
    for usage, reset in windows:
        previous = reading
        reading = (0 if reset else reading) + usage
        delta = counter_delta(previous, reading)
        # A reset whose window ends at or above the old reading cannot be seen; then the
        # delta is the growth, which undercounts by exactly the old reading.
        if reset and reading >= previous:
            assert delta == reading - previous
            unseen += previous
        else:
            assert delta == usage
        total_delta += delta
    assert total_delta == sum(usage for usage, _ in windows) - unseen
