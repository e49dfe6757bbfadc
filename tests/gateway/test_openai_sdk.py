"""The official ``openai`` SDK against the gateway and real simulated agents.

The simulator's engine is deterministic (docs/gateway.md): ``prompt_tokens`` = words of
the prompt + 4 per chat message, ``completion_tokens`` = ``max_tokens``, one token
``" tok<i>"`` per chunk.
"""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import PRODUCT, logged

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MESSAGES = [
    {"role": "system", "content": "You are terse."},  # 3 words
    {"role": "user", "content": "Say three words please"},  # 4 words
]
# Receipt bound: UTF-8 bytes of every string (6 + 14 + 4 + 22) + 16 x 2 + 64.
MAX_INPUT = 46 + 32 + 64


def client(gateway, world) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=world.key, max_retries=0)


def test_chat_completion_answers_with_usage_and_logs_the_attempt(gateway, world):
    raw = client(gateway, world).chat.completions.with_raw_response.create(
        model=PRODUCT, messages=MESSAGES, max_tokens=3, temperature=0.2, seed=7
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == " tok0 tok1 tok2"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3 + 4 + 8, 3)
    request_id = raw.headers["x-request-id"]
    row = logged(request_id)
    assert row.node_id in {node.pk for node in world.nodes}
    assert (row.api_key_id, row.line_id, row.product_slug) == (
        world.key_id,
        world.line.pk,
        PRODUCT,
    )
    assert (row.max_input_tokens, row.max_output_tokens) == (MAX_INPUT, 3)
    assert (row.gateway_status, row.gateway_input_tokens, row.gateway_output_tokens) == (
        200,
        15,
        3,
    )
    assert row.duration_ms is not None and row.time_to_first_token_ms is not None


def test_chat_stream_without_include_usage_carries_no_usage(gateway, world):
    stream = client(gateway, world).chat.completions.create(
        model=PRODUCT, messages=MESSAGES, max_tokens=4, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " tok0 tok1 tok2 tok3"
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


def test_chat_stream_with_include_usage_ends_with_the_usage_chunk(gateway, world):
    raw = client(gateway, world).chat.completions.with_raw_response.create(
        model=PRODUCT,
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (15, 4)
    row = logged(raw.headers["x-request-id"])
    assert (row.gateway_status, row.gateway_input_tokens, row.gateway_output_tokens) == (
        200,
        15,
        4,
    )


def test_completions_streaming_and_not(gateway, world):
    sdk = client(gateway, world)
    answer = sdk.completions.create(model=PRODUCT, prompt="Once upon a time", max_tokens=2)
    assert answer.choices[0].text == " tok0 tok1"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 2)
    chunks = list(
        sdk.completions.create(
            model=PRODUCT,
            prompt="Once upon a time",
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " tok0 tok1"
    assert chunks[-1].usage.completion_tokens == 2


def test_models_lists_the_contracts_products(gateway, world):
    sdk = client(gateway, world)
    assert [model.id for model in sdk.models.list()] == [PRODUCT]
    assert sdk.models.retrieve(PRODUCT).owned_by == "hashgrid"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4o")
