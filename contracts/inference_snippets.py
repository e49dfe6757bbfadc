"""Copy-paste snippets for the inference API: where to send requests, and how.

One owner for the base URL and the snippet text, read by the key pages, the playground
and ``make run``'s printed curl line, so they always agree with ``settings.GATEWAY_URL``.
"""

from __future__ import annotations

import json

from django.conf import settings

# Shown in place of a key the page cannot show (keys are shown once, at creation).
KEY_VARIABLE = "HASHGRID_API_KEY"
_PROMPT = "Say hello in one sentence."
# A short answer: the snippets are for trying the API, not for spending.
_MAX_TOKENS = 64


def inference_base_url() -> str:
    """The OpenAI-compatible base URL buyers point their SDKs at (the gateway's /v1)."""
    return settings.GATEWAY_URL.rstrip("/") + "/v1"


def curl_snippet(*, model: str, api_key: str | None = None, one_line: bool = False) -> str:
    """A curl command that streams a chat completion (``-N``: print as it arrives).
    Without ``api_key`` it reads the key from ``$HASHGRID_API_KEY``."""
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": _MAX_TOKENS,
            "messages": [{"role": "user", "content": _PROMPT}],
        }
    )
    parts = [
        f"curl -N {inference_base_url()}/chat/completions",
        f'-H "Authorization: Bearer {api_key or "$" + KEY_VARIABLE}"',
        '-H "Content-Type: application/json"',
        f"-d '{body}'",
    ]
    return (" " if one_line else " \\\n  ").join(parts)


def openai_python_snippet(*, model: str, api_key: str | None = None) -> str:
    """The official ``openai`` Python SDK pointed at the gateway, streaming. Without
    ``api_key`` it reads the key from the ``HASHGRID_API_KEY`` environment variable."""
    key = json.dumps(api_key) if api_key else f'os.environ["{KEY_VARIABLE}"]'
    header = "" if api_key else "import os\n\n"
    return (
        f"{header}from openai import OpenAI\n"
        "\n"
        f'client = OpenAI(base_url="{inference_base_url()}", api_key={key})\n'
        "stream = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        f'    messages=[{{"role": "user", "content": "{_PROMPT}"}}],\n'
        f"    max_tokens={_MAX_TOKENS},\n"
        "    stream=True,\n"
        ")\n"
        "for chunk in stream:\n"
        "    if chunk.choices:\n"
        '        print(chunk.choices[0].delta.content or "", end="", flush=True)\n'
    )


def snippets(*, model: str, api_key: str | None = None) -> dict[str, str]:
    """Everything a key page shows: the base URL and both snippets."""
    return {
        "base_url": inference_base_url(),
        "model": model,
        "curl": curl_snippet(model=model, api_key=api_key),
        "python": openai_python_snippet(model=model, api_key=api_key),
        "key_variable": KEY_VARIABLE,
    }
