"""A request's receipt bounds and worst-case cost, to the token and the micro."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.money import token_charge
from gateway import bounds


def test_chat_bound_is_utf8_bytes_plus_16_per_message_plus_64():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},  # 9 bytes, role "system" 6
            {"role": "user", "content": [{"type": "text", "text": "héllo"}]},  # 6 + 4 + 4
        ],
    }
    # Every string counts (roles, part types too): 6 + 9 + 4 + 4 + 6 = 29.
    assert bounds.max_input_tokens_chat(body) == 29 + 2 * 16 + 64


def test_completion_bound_counts_strings_and_token_ids():
    assert bounds.max_input_tokens_completion({"prompt": "abc"}) == 3 + 16 + 64
    assert bounds.max_input_tokens_completion({"prompt": ["ab", "c"]}) == 3 + 32 + 64
    assert bounds.max_input_tokens_completion({"prompt": [5, 6, 7]}) == 3 + 16 + 64


def test_max_output_tokens_defaults_and_limits():
    assert bounds.max_output_tokens({}) is None
    assert bounds.max_output_tokens({"max_tokens": 7}) == 7
    assert bounds.max_output_tokens({"max_completion_tokens": 9, "max_tokens": 7}) == 9
    for bad in (0, 32769, "12", True, 1.5):
        with pytest.raises(bounds.BodyError) as refused:
            bounds.max_output_tokens({"max_tokens": bad})
        assert refused.value.param == "max_tokens"


def test_cost_in_micros_rounds_up_once_per_request():
    # 1,000 input tokens at 0.0500 per million = 0.00005 major = 0.005 cent = 5,000 micros.
    assert (
        bounds.cost_micros(
            input_tokens=1000, output_tokens=0, input_price_ticks=500, output_price_ticks=800
        )
        == 5000
    )
    # One token at 0.0500 is 5 micros; at 0.0001 it is 0.01 micros, rounded up to 1.
    assert (
        bounds.cost_micros(
            input_tokens=1, output_tokens=0, input_price_ticks=500, output_price_ticks=800
        )
        == 5
    )
    assert (
        bounds.cost_micros(
            input_tokens=1, output_tokens=1, input_price_ticks=1, output_price_ticks=1
        )
        == 1
    )
    assert bounds.price_ticks(Decimal("0.3500")) == 3500
    with pytest.raises(ValueError):
        bounds.price_ticks(Decimal("0.00001"))


@given(
    input_tokens=st.integers(0, 10_000_000),
    output_tokens=st.integers(0, 10_000_000),
    input_ticks=st.integers(1, 10**8),
    output_ticks=st.integers(1, 10**8),
)
def test_micros_never_below_what_billing_charges(
    input_tokens, output_tokens, input_ticks, output_ticks
):
    micros = bounds.cost_micros(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price_ticks=input_ticks,
        output_price_ticks=output_ticks,
    )
    exact = token_charge(
        tokens=input_tokens, price_per_million=Decimal(input_ticks) / 10_000
    ) + token_charge(tokens=output_tokens, price_per_million=Decimal(output_ticks) / 10_000)
    # micros are millionths of a cent: within one micro above the exact charge.
    assert Decimal(micros) / 10**8 >= exact > Decimal(micros - 1) / 10**8
