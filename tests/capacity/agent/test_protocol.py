from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from capacity.agent.protocol import (
    GENESIS_PREV_HASH,
    canonical_json,
    chain_record,
    format_time,
    hash_token,
    parse_time,
    record_hash,
    verify_chain,
    verify_signature,
)
from tests.capacity.agent.verification import expected_hash


def _record(seq: int, prev_hash: str, ref: str | None = "modèle-ü") -> dict[str, object]:
    fields = {
        "gpu_uuid": "GPU-00000000-0000-0000-0000-000000000001",
        "window_start": "2026-11-24T02:00:00Z",
        "window_end": "2026-11-24T02:01:00Z",
        "workload": {"kind": "inference", "ref": ref},
        "busy_ms": 30_000,
        "energy_mj": 12_345_678,
        "input_tokens": 1000,
        "output_tokens": 200,
        "requests": 3,
    }
    return chain_record(fields, seq=seq, prev_hash=prev_hash)


def test_record_hash_is_sha256_of_prev_hash_and_canonical_json_in_utf8() -> None:
    record = _record(1, GENESIS_PREV_HASH)
    unhashed = {key: value for key, value in record.items() if key != "hash"}
    canonical = json.dumps(unhashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    assert "modèle-ü" in canonical  # raw UTF-8, not \u escapes
    assert record["hash"] == hashlib.sha256((("0" * 64) + canonical).encode()).hexdigest()
    assert record["hash"] == expected_hash(record) == record_hash(record)
    assert (
        canonical_json({"b": 1, "a": [1, {"d": None, "c": "é"}]})
        == '{"a":[1,{"c":"é","d":null}],"b":1}'
    )


def test_verify_chain_accepts_a_chain_and_reports_its_head() -> None:
    first = _record(1, GENESIS_PREV_HASH)
    second = _record(2, str(first["hash"]), ref=None)

    result = verify_chain([first, second], GENESIS_PREV_HASH, after_seq=0)

    assert (result.ok, result.valid_count, result.head_seq) == (True, 2, 2)
    assert result.head_hash == second["hash"]
    assert result.error is None


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda r: r.update(energy_mj=1), "hash does not match the record's contents"),
        (
            lambda r: r.update(prev_hash="f" * 64),
            "prev_hash does not match the previous record's hash",
        ),
        (lambda r: r.update(seq=3), "seq 3 where 2 was expected"),
        (lambda r: r.update(seq="2"), "seq is not a positive integer"),
    ],
)
def test_verify_chain_stops_at_the_first_bad_record(tamper, error) -> None:  # type: ignore[no-untyped-def]
    first = _record(1, GENESIS_PREV_HASH)
    second = _record(2, str(first["hash"]))
    third = _record(3, str(second["hash"]))
    tamper(second)

    result = verify_chain([first, second, third], GENESIS_PREV_HASH, after_seq=0)

    assert (result.ok, result.valid_count, result.head_seq) == (False, 1, 1)
    assert result.head_hash == first["hash"]
    assert result.error == error


def test_verify_signature_checks_exact_bytes_and_refuses_garbage() -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(
        key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    body = b'{"a":1}'
    signature = base64.b64encode(key.sign(body)).decode()

    assert verify_signature(public, body, signature) is True
    assert verify_signature(public, body + b" ", signature) is False
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert verify_signature(base64.b64encode(other).decode(), body, signature) is False
    assert verify_signature("not base64!", body, signature) is False
    assert verify_signature(public, body, "AAAA") is False
    assert verify_signature(base64.b64encode(b"short").decode(), body, signature) is False


def test_times_are_utc_with_z_and_naive_datetimes_are_refused() -> None:
    moment = datetime(2026, 11, 24, 3, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=1)))

    assert format_time(moment) == "2026-11-24T02:00:00Z"
    assert parse_time("2026-11-24T02:00:00Z") == datetime(2026, 11, 24, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 24))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("2026-11-24T02:00:00+00:00")


def test_token_hash_is_sha256_hex() -> None:
    assert hash_token("secret") == hashlib.sha256(b"secret").hexdigest()
