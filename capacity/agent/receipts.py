"""Gateway receipts (agent protocol v1.1): the platform's signed word that it routed a request.

For every inference request it relays, the gateway signs a receipt with the platform's
Ed25519 key and sends it to the node's agent in the ``X-Hashgrid-Receipt`` header. The
agent holds only the public half (given at enrollment, ``--platform-key`` in simulate
mode), so it can check a receipt and cannot make one: it serves only requests that carry
a valid receipt for itself, and journals the tokens its engine served against the
receipt. Metering checks the receipt again when it stores the record, so a partner can
never create usage for a buyer: no receipt, no bill.

Wire form: ``<claims>.<signature>``, both unpadded base64url; ``claims`` is canonical JSON
(``protocol.canonical_json``) of::

    {"v": 1, "rid": "<32 hex>", "node": <platform node id>, "agent": "<agent public key, b64>",
     "line": <contract line id>, "key": <API key id>, "product": "<product slug>",
     "max_input_tokens": <int>, "max_output_tokens": <int>, "iat": <Unix seconds>}

``max_input_tokens`` bounds the prompt (the gateway counts UTF-8 bytes plus a per-message
allowance: no tokenizer makes more tokens than that) and ``max_output_tokens`` is the
request's ``max_tokens``: what a record may claim for the receipt is bounded by both.

Only the standard library and ``cryptography``: the agent imports this module too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from capacity.agent.protocol import canonical_json

RECEIPT_HEADER = "X-Hashgrid-Receipt"
RECEIPT_VERSION = 1
# Longest receipt accepted on the wire (claims are ~300 bytes; the signature 86).
MAX_RECEIPT_LENGTH = 2048
# Largest token bound a receipt may carry (a sane ceiling far above any context window).
MAX_TOKENS_BOUND = 10_000_000
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
_SLUG = re.compile(r"^[-a-zA-Z0-9_.]{1,64}$")


class ReceiptError(ValueError):
    """The receipt is malformed, wrongly signed, or not for this node."""


@dataclass(frozen=True)
class Receipt:
    """What the gateway vouches for; field names are the wire's claim names."""

    v: int
    rid: str
    node: int
    agent: str
    line: int
    key: int
    product: str
    max_input_tokens: int
    max_output_tokens: int
    iat: int

    def claims(self) -> dict[str, object]:
        # Spelled out: ``dataclasses.asdict`` deep-copies and cost the gateway ~20 µs a
        # request (docs/benchmarks.md, bench_gateway's profile).
        return {
            "v": self.v,
            "rid": self.rid,
            "node": self.node,
            "agent": self.agent,
            "line": self.line,
            "key": self.key,
            "product": self.product,
            "max_input_tokens": self.max_input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "iat": self.iat,
        }


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_receipt(private_key: Ed25519PrivateKey, receipt: Receipt) -> str:
    """The receipt's wire form, signed with the platform's key."""
    claims = canonical_json(receipt.claims()).encode("utf-8")
    return f"{_b64url(claims)}.{_b64url(private_key.sign(claims))}"


def _positive_int(claims: dict[str, object], name: str, *, upper: int) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
        raise ReceiptError(f"claim {name!r} is not an integer in [0, {upper}]")
    return value


def parse_receipt(token: str, public_key: Ed25519PublicKey) -> Receipt:
    """Verify ``token`` against the platform's public key and return its claims.

    Raises ``ReceiptError`` for anything that is not a receipt the platform signed; the
    caller decides whether it is for *this* node (``agent`` claim) and fresh enough.
    """
    if not isinstance(token, str) or len(token) > MAX_RECEIPT_LENGTH or token.count(".") != 1:
        raise ReceiptError("not a receipt")
    encoded_claims, encoded_signature = token.split(".")
    try:
        claims_bytes = _unb64url(encoded_claims)
        signature = _unb64url(encoded_signature)
    except (binascii.Error, ValueError) as error:
        raise ReceiptError("receipt is not base64url") from error
    try:
        public_key.verify(signature, claims_bytes)
    except InvalidSignature as error:
        raise ReceiptError("receipt signature is not the platform's") from error
    try:
        claims = json.loads(claims_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReceiptError("receipt claims are not JSON") from error
    if not isinstance(claims, dict) or set(claims) != set(Receipt.__dataclass_fields__):
        raise ReceiptError("receipt claims have the wrong keys")
    if claims["v"] != RECEIPT_VERSION:
        raise ReceiptError(f"receipt version {claims['v']!r} is not {RECEIPT_VERSION}")
    rid, agent, product = claims["rid"], claims["agent"], claims["product"]
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise ReceiptError("claim 'rid' is not 32 lowercase hex digits")
    if not isinstance(agent, str) or not 1 <= len(agent) <= 64:
        raise ReceiptError("claim 'agent' is not a public key")
    if not isinstance(product, str) or not _SLUG.match(product):
        raise ReceiptError("claim 'product' is not a product slug")
    return Receipt(
        v=RECEIPT_VERSION,
        rid=rid,
        node=_positive_int(claims, "node", upper=2**62),
        agent=agent,
        line=_positive_int(claims, "line", upper=2**62),
        key=_positive_int(claims, "key", upper=2**62),
        product=product,
        max_input_tokens=_positive_int(claims, "max_input_tokens", upper=MAX_TOKENS_BOUND),
        max_output_tokens=_positive_int(claims, "max_output_tokens", upper=MAX_TOKENS_BOUND),
        iat=_positive_int(claims, "iat", upper=2**40),
    )


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """The platform's public key from base64 of its raw 32 bytes (as enrollment sends it)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError("platform key is not base64") from error
    if len(raw) != 32:
        raise ValueError("platform key is not 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
