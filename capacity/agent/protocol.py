"""Wire format of the node agent protocol (v1): canonical JSON, record hashes, signatures.

Both sides use this module. The agent chains and signs what it serves; the platform,
which treats everything an agent says as untrusted, checks it with ``verify_signature``
and ``verify_chain``. It needs only the standard library and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_VERSION = 1
# prev_hash of the first record of every journal epoch.
GENESIS_PREV_HASH = "0" * 64
SIGNATURE_HEADER = "X-Agent-Signature"
# The ``/v1/usage`` query parameter by which the platform says the workloads digest it
# holds; an answer whose digest differs embeds the list (docs/workloads.md "Cheap polling").
USAGE_WORKLOADS_PARAM = "workloads"
# ``assignment`` (v1.1): work for an assignment the platform signed; ``allocation`` is what
# agents before v1.1 reported for busy GPUs.
WORKLOAD_KINDS = ("assignment", "allocation", "inference", "idle")
# Every usage record carries exactly these keys (``hash`` is excluded from its own input).
RECORD_KEYS = frozenset(
    {
        "seq",
        "prev_hash",
        "hash",
        "gpu_uuid",
        "window_start",
        "window_end",
        "workload",
        "busy_ms",
        "energy_mj",
        "input_tokens",
        "output_tokens",
        "requests",
    }
)
# Longest window one record may cover.
MAX_WINDOW_SECONDS = 60

_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def canonical_json(value: object) -> str:
    """Serialize exactly as the protocol hashes: sorted keys, no whitespace, raw UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_body(payload: object) -> bytes:
    """Bytes of a response body; canonical so identical payloads sign identically."""
    return canonical_json(payload).encode("utf-8")


def record_hash(record: Mapping[str, object]) -> str:
    """``sha256_hex(prev_hash + canonical(record without "hash"))`` as the protocol defines."""
    prev_hash = record.get("prev_hash")
    if not isinstance(prev_hash, str):
        raise ValueError("record has no string prev_hash")
    unhashed = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256((prev_hash + canonical_json(unhashed)).encode("utf-8")).hexdigest()


def chain_record(fields: Mapping[str, object], *, seq: int, prev_hash: str) -> dict[str, object]:
    """Return ``fields`` as the record at ``seq`` linked to ``prev_hash``, with its hash."""
    record: dict[str, object] = dict(fields)
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    record.pop("hash", None)
    record["hash"] = record_hash(record)
    return record


@dataclass(frozen=True)
class ChainVerification:
    """Outcome of ``verify_chain``.

    ``valid_count`` records from the start of the page linked correctly; ``head_seq`` and
    ``head_hash`` describe the last of them (the starting point when none did), so a
    caller can keep the valid prefix and quarantine the rest.
    """

    ok: bool
    valid_count: int
    head_seq: int | None
    head_hash: str
    error: str | None = None
    failed_seq: object = None


def verify_chain(
    records: Sequence[Mapping[str, object]],
    prev_hash: str,
    *,
    after_seq: int | None = None,
) -> ChainVerification:
    """Check that ``records`` continue the chain whose last hash is ``prev_hash``.

    Each record must link to its predecessor, hash to its ``hash`` field and carry the
    next ``seq`` (the first one ``after_seq + 1`` when ``after_seq`` is given, e.g. the
    caller's cursor; ``GENESIS_PREV_HASH`` with ``after_seq=0`` for a new epoch).
    """
    expected_prev = prev_hash
    expected_seq = None if after_seq is None else after_seq + 1
    head_seq = after_seq
    for index, record in enumerate(records):
        seq = record.get("seq")
        error = None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            error = "seq is not a positive integer"
        elif expected_seq is not None and seq != expected_seq:
            error = f"seq {seq} where {expected_seq} was expected"
        elif record.get("prev_hash") != expected_prev:
            error = "prev_hash does not match the previous record's hash"
        elif record.get("hash") != record_hash(record):
            error = "hash does not match the record's contents"
        if error is not None or not isinstance(seq, int):
            return ChainVerification(False, index, head_seq, expected_prev, error, seq)
        expected_prev = str(record["hash"])
        expected_seq = seq + 1
        head_seq = seq
    return ChainVerification(True, len(records), head_seq, expected_prev)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte Ed25519 public key, as ``/v1/info`` publishes it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def sign_body(private_key: Ed25519PrivateKey, body: bytes) -> str:
    """Value of ``X-Agent-Signature`` for ``body``: base64 of the Ed25519 signature."""
    return base64.b64encode(private_key.sign(body)).decode("ascii")


def verify_signature(public_key_b64: str, body_bytes: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is the agent's Ed25519 signature of exactly ``body_bytes``.

    Malformed keys or signatures are simply invalid: the caller handles untrusted input
    and needs a yes/no answer, not an exception.
    """
    try:
        raw_key = base64.b64decode(public_key_b64, validate=True)
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, body_bytes)
    except (InvalidSignature, ValueError):
        return False
    return True


def hash_token(token: str) -> str:
    """SHA-256 hex of a poll token: the only form in which an agent keeps it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4096)
def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` suffix, to the second (e.g. ``2026-11-24T02:00:00Z``).

    Cached: every GPU of every fleet node formats the same window edges.
    """
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the protocol speaks UTC only")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parse a protocol timestamp; only the ``...Z`` UTC form is accepted."""
    if not _RFC3339_UTC.match(text):
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text!r}")
    return datetime.fromisoformat(text)


def time_from_unix(seconds: int) -> datetime:
    """Aware UTC datetime for a Unix time in whole seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of the inventory in ``/v1/info`` and in the enrollment request."""

    uuid: str
    model: str
    memory_mib: int

    def to_wire(self) -> dict[str, object]:
        return {"uuid": self.uuid, "model": self.model, "memory_mib": self.memory_mib}


@dataclass(frozen=True)
class GpuHealth:
    """One GPU's entry in ``/v1/health``; units are in the names, all integers."""

    gpu_uuid: str
    utilization_pct: int
    memory_used_mib: int
    temperature_c: int
    power_mw: int
    # XID errors (driver-reported GPU faults) counted since the agent booted.
    xid_errors: int

    def to_wire(self) -> dict[str, object]:
        return {
            "gpu_uuid": self.gpu_uuid,
            "utilization_pct": self.utilization_pct,
            "memory_used_mib": self.memory_used_mib,
            "temperature_c": self.temperature_c,
            "power_mw": self.power_mw,
            "xid_errors": self.xid_errors,
        }


def usage_fields(
    *,
    gpu_uuid: str,
    window_start: datetime,
    window_end: datetime,
    workload_kind: str,
    workload_ref: str | None,
    busy_ms: int,
    energy_mj: int,
    input_tokens: int,
    output_tokens: int,
    requests: int,
) -> dict[str, object]:
    """A usage record's fields before it is chained (``seq``, ``prev_hash``, ``hash``)."""
    if workload_kind not in WORKLOAD_KINDS:
        raise ValueError(f"unknown workload kind {workload_kind!r}")
    return {
        "gpu_uuid": gpu_uuid,
        "window_start": format_time(window_start),
        "window_end": format_time(window_end),
        "workload": {"kind": workload_kind, "ref": workload_ref},
        "busy_ms": busy_ms,
        "energy_mj": energy_mj,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "requests": requests,
    }
