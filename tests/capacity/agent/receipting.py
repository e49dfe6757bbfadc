"""Gateway receipts made the way docs/gateway.md and receipts.py describe the wire form,
with ``cryptography`` and ``json`` directly (not the agent's helpers), and the checks of
what an agent journals for them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.capacity.agent.verification import check_chain, signed_json

RECEIPT_HEADER = "X-Hashgrid-Receipt"


def raw_public_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_receipt(
    platform_key: Ed25519PrivateKey,
    *,
    agent: str,
    rid: str | None = None,
    iat: int | None = None,
    max_input_tokens: int = 1000,
    max_output_tokens: int = 1000,
    node: int = 11,
) -> tuple[str, str]:
    """``(rid, wire token)`` of a receipt the platform key signed."""
    rid = rid or secrets.token_hex(16)
    claims = {
        "v": 1,
        "rid": rid,
        "node": node,
        "agent": agent,
        "line": 21,
        "key": 31,
        "product": "llama-3-8b",
        "max_input_tokens": max_input_tokens,
        "max_output_tokens": max_output_tokens,
        "iat": int(time.time()) if iat is None else iat,
    }
    encoded = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return rid, f"{_b64url(encoded)}.{_b64url(platform_key.sign(encoded))}"


def chat_body(**extra: Any) -> dict[str, Any]:
    """Two messages of 3 and 4 words: 7 words + 4 per message = 15 prompt tokens."""
    return {
        "model": "llama-3-8b",
        "messages": [
            {"role": "system", "content": "be brief please"},
            {"role": "user", "content": "what is a GPU?"},
        ],
        **extra,
    }


CHAT_PROMPT_TOKENS = 15


def sse_events(raw: bytes) -> list[Any]:
    """The JSON of every ``data:`` line, and the string ``"[DONE]"`` for the end marker."""
    events: list[Any] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[len(b"data: ") :]
            events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def all_records(client: httpx.Client, base_url: str, public_key: str) -> list[dict[str, Any]]:
    """Every record of the journal, after checking each page's signature and the chain."""
    records: list[dict[str, Any]] = []
    while True:
        response = client.get(f"{base_url}/v1/usage", params={"after": len(records)})
        assert response.status_code == 200
        page = signed_json(response, public_key)
        records.extend(page["records"])
        if len(records) >= page["head_seq"]:
            break
    check_chain(records, prev_hash="0" * 64, first_seq=1)
    return records


def receipt_records(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Receipt records by rid (exactly one each)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if "receipt" in record["workload"]:
            rid = record["workload"]["ref"]
            assert rid not in found, f"two records for {rid}"
            found[rid] = record
    return found
