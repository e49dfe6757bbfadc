"""Independent checks of the agent protocol, written from DESIGN.md, not from the agent.

These deliberately use ``cryptography``, ``hashlib`` and ``json`` directly instead of
``capacity.agent.protocol``, so a bug in the agent's helpers cannot hide itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64


def check_signature(public_key_b64: str, body: bytes, signature_b64: str) -> None:
    """Raise ``InvalidSignature`` unless the signature covers exactly ``body``."""
    raw_key = base64.b64decode(public_key_b64, validate=True)
    assert len(raw_key) == 32
    Ed25519PublicKey.from_public_bytes(raw_key).verify(
        base64.b64decode(signature_b64, validate=True), body
    )


def signed_json(response: httpx.Response, public_key_b64: str) -> Any:
    """The response's JSON, after checking its signature over the raw body bytes."""
    check_signature(public_key_b64, response.content, response.headers["X-Agent-Signature"])
    return json.loads(response.content)


def expected_hash(record: dict[str, Any]) -> str:
    unhashed = {key: value for key, value in record.items() if key != "hash"}
    canonical = json.dumps(unhashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((record["prev_hash"] + canonical).encode("utf-8")).hexdigest()


def check_chain(records: list[dict[str, Any]], *, prev_hash: str, first_seq: int) -> str:
    """Assert that ``records`` continue the chain; return the last hash."""
    for offset, record in enumerate(records):
        assert record["seq"] == first_seq + offset
        assert record["prev_hash"] == prev_hash
        assert record["hash"] == expected_hash(record)
        prev_hash = record["hash"]
    return prev_hash


def fetch_all_records(
    client: httpx.Client,
    base_url: str,
    public_key_b64: str,
    *,
    limit: int = 1000,
    up_to_seq: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Follow ``/v1/usage`` pages from the start; return the records and the last page."""
    records: list[dict[str, Any]] = []
    while True:
        response = client.get(
            f"{base_url}/v1/usage", params={"after": len(records), "limit": limit}
        )
        assert response.status_code == 200
        page = signed_json(response, public_key_b64)
        records.extend(page["records"])
        target = page["head_seq"] if up_to_seq is None else up_to_seq
        if not page["records"] or len(records) >= target:
            return records, page


USAGE_QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")


def sum_records(records: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(record[name] for record in records) for name in USAGE_QUANTITIES}
