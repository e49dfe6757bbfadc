"""Checks of one usage record against physics and the node's registered inventory.

Pure functions, no database: ``polling`` runs them on every record of a verified page
(signature and hash chain already checked) and ``ingest`` stores what they decide. A
record that fails is quarantined with the first reason found, never dropped, never
billed. Times are compared in integer microseconds and energy in integer arithmetic
(W x us = uJ), so no float rounding decides what gets billed.

Every quantity is bounded by the window it covers: busy time by the window, energy by the
GPU's max power over it, tokens and requests by a per-GPU-second ceiling far above any
real server (``MAX_TOKENS_PER_GPU_SECOND``, ``MAX_REQUESTS_PER_GPU_SECOND``). Windows
of one GPU never overlap and last at most a minute, so an hourly rollup row (one GPU, one
hour, windows starting in it) covers at most 3,660 GPU-seconds: at most 3.7e9 tokens,
and a month of 100,000 GPUs stays below 3e17, far from a bigint's 9.2e18. No sum of
accepted quantities can overflow.

Inference tokens are only accepted from a node that serves the product the ``ref`` names
(``<product slug>`` or ``<product slug>@<key prefix>``), and at most at the product's
throughput (tokens per GPU-second) over the window: until the gateway anchors tokens to
its receipts, that is all the platform can know of them. What a node serves is
contracts' answer, handed in by the poller (``served_products``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from capacity.agent.protocol import MAX_WINDOW_SECONDS, RECORD_KEYS, WORKLOAD_KINDS, parse_time
from capacity.metering.models import QuarantineReason

# A window may end this far after our clock (agents' clocks drift a little).
CLOCK_SKEW_S = 120
_MAX_WINDOW_US = MAX_WINDOW_SECONDS * 1_000_000
_QUANTITIES = ("busy_ms", "energy_mj", "input_tokens", "output_tokens", "requests")
# Largest value a bigint column holds.
_MAX_QUANTITY = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Ceilings per GPU-second of window for what no GPU can exceed, whatever it serves: well
# above any server (a product's own throughput is the tighter bound), low enough that no
# sum of accepted records can overflow a bigint (module docstring).
MAX_TOKENS_PER_GPU_SECOND = 1_000_000
MAX_REQUESTS_PER_GPU_SECOND = 100_000
_PER_WINDOW_BOUNDS = {
    "input_tokens": MAX_TOKENS_PER_GPU_SECOND,
    "output_tokens": MAX_TOKENS_PER_GPU_SECOND,
    "requests": MAX_REQUESTS_PER_GPU_SECOND,
}
# Separates the product slug from the caller's key prefix in an inference ``ref``.
REF_SEPARATOR = "@"
MAX_WORKLOAD_REF_LENGTH = 128


@dataclass(frozen=True)
class GpuRef:
    """A registered GPU of the node: its ``GpuDevice`` id and its model's max power."""

    device_id: int
    max_power_w: int


@dataclass(frozen=True)
class AcceptedRecord:
    """A valid record, in the shape ``ingest`` stores (times as aware datetimes)."""

    seq: int
    record_hash: str
    gpu_device_id: int
    window_start: datetime
    window_end: datetime
    workload_kind: str
    workload_ref: str | None
    busy_ms: int
    energy_mj: int
    input_tokens: int
    output_tokens: int
    requests: int


@dataclass(frozen=True)
class Rejection:
    """Why a record is quarantined, plus what could be read of it for display."""

    reason: str
    detail: str
    gpu_uuid: str = ""
    window_start: datetime | None = None
    window_end: datetime | None = None


_ONE_US = timedelta(microseconds=1)


def to_unix_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_US


def _is_quantity(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_QUANTITY


def validate_record(
    record: Mapping[str, object],
    *,
    gpus: Mapping[str, GpuRef],
    now_us: int,
    gpu_window_ends: MutableMapping[str, int],
    served_products: Mapping[str, int] | None = None,
) -> AcceptedRecord | Rejection:
    """Accept ``record`` or say why not.

    ``served_products`` maps the slug of each inference product the node serves to the
    product's throughput in tokens per GPU-second; inference for any other product is
    refused (none given: the node serves nothing).

    ``gpu_window_ends`` maps a GPU uuid to the end (Unix us) of its latest accepted
    window, stored or earlier in this page; it is advanced for an accepted record, so
    calling this over a page in order also catches overlaps inside the page. Windows
    of one GPU must come in order: one that starts before the GPU's latest stored
    window ended overlaps it or rewrites history, and either way is not billed.
    """
    if record.keys() != RECORD_KEYS:
        missing = sorted(RECORD_KEYS - record.keys())
        extra = sorted(record.keys() - RECORD_KEYS)
        return Rejection(QuarantineReason.MALFORMED, f"missing keys {missing}, unexpected {extra}")
    raw_uuid = record["gpu_uuid"]
    gpu_uuid = raw_uuid[:64] if isinstance(raw_uuid, str) else ""
    try:
        start = parse_time(str(record["window_start"]))
        end = parse_time(str(record["window_end"]))
    except ValueError as error:
        return Rejection(QuarantineReason.MALFORMED, str(error), gpu_uuid)

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, gpu_uuid, start, end)

    gpu = gpus.get(raw_uuid) if isinstance(raw_uuid, str) else None
    if gpu is None:
        return reject(
            QuarantineReason.UNKNOWN_GPU, f"GPU {gpu_uuid!r} is not one of this node's GPUs"
        )
    for name in _QUANTITIES:
        if not _is_quantity(record[name]):
            return reject(QuarantineReason.INVALID_QUANTITY, f"{name} = {record[name]!r}")
    workload = record["workload"]
    kind = workload.get("kind") if isinstance(workload, Mapping) else None
    ref = workload.get("ref") if isinstance(workload, Mapping) else None
    if (
        kind not in WORKLOAD_KINDS
        or not isinstance(workload, Mapping)
        or workload.keys() != {"kind", "ref"}
    ):
        return reject(QuarantineReason.UNKNOWN_WORKLOAD, f"workload {workload!r}")
    if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_WORKLOAD_REF_LENGTH):
        return reject(QuarantineReason.UNKNOWN_WORKLOAD, f"workload ref {ref!r}")
    start_us, end_us = to_unix_us(start), to_unix_us(end)
    window_us = end_us - start_us
    if window_us <= 0:
        return reject(QuarantineReason.INVALID_WINDOW, "window_end is not after window_start")
    if window_us > _MAX_WINDOW_US:
        return reject(
            QuarantineReason.WINDOW_TOO_LONG,
            f"window of {window_us / 1e6:g} s is longer than {MAX_WINDOW_SECONDS} s",
        )
    if end_us > now_us + CLOCK_SKEW_S * 1_000_000:
        return reject(
            QuarantineReason.FUTURE_WINDOW,
            f"window ends {(end_us - now_us) // 1_000_000} s after the platform's clock",
        )
    busy_ms = int(record["busy_ms"])  # type: ignore[call-overload]
    if busy_ms * 1000 > window_us:
        return reject(
            QuarantineReason.BUSY_EXCEEDS_WINDOW,
            f"busy_ms {busy_ms} > window {window_us // 1000} ms",
        )
    energy_mj = int(record["energy_mj"])  # type: ignore[call-overload]
    # max_power_w x window (us) = uJ = 1000 x mJ.
    if energy_mj * 1000 > gpu.max_power_w * window_us:
        return reject(
            QuarantineReason.ENERGY_EXCEEDS_MAX_POWER,
            f"energy_mj {energy_mj} > {gpu.max_power_w} W x {window_us // 1000} ms",
        )
    if kind == "inference":
        refusal = _inference_refusal(
            ref, record, served_products=served_products or {}, window_us=window_us
        )
        if refusal is not None:
            return reject(*refusal)
    for name, per_second in _PER_WINDOW_BOUNDS.items():
        value = int(record[name])  # type: ignore[call-overload]
        if value * 1_000_000 > per_second * window_us:
            return reject(
                QuarantineReason.QUANTITY_EXCEEDS_BOUND,
                f"{name} {value} > {per_second} per GPU-second x {window_us // 1000} ms",
            )
    previous_end_us = gpu_window_ends.get(raw_uuid)  # type: ignore[call-overload]
    if previous_end_us is not None and start_us < previous_end_us:
        return reject(
            QuarantineReason.OVERLAPPING_WINDOW,
            f"starts {(previous_end_us - start_us) / 1e6:g} s before the GPU's previous window ended",
        )
    gpu_window_ends[raw_uuid] = end_us  # type: ignore[index]
    return AcceptedRecord(
        seq=int(record["seq"]),  # type: ignore[call-overload]
        record_hash=str(record["hash"]),
        gpu_device_id=gpu.device_id,
        window_start=start,
        window_end=end,
        workload_kind=str(kind),
        workload_ref=ref,
        busy_ms=busy_ms,
        energy_mj=energy_mj,
        input_tokens=int(record["input_tokens"]),  # type: ignore[call-overload]
        output_tokens=int(record["output_tokens"]),  # type: ignore[call-overload]
        requests=int(record["requests"]),  # type: ignore[call-overload]
    )


def _inference_refusal(
    ref: str | None,
    record: Mapping[str, object],
    *,
    served_products: Mapping[str, int],
    window_us: int,
) -> tuple[str, str] | None:
    """Why an inference record cannot be true (reason, detail), or None: its product is
    not one the node serves, or its tokens exceed the product's throughput over the
    window on one GPU."""
    product = (ref or "").partition(REF_SEPARATOR)[0]
    tokens_per_second = served_products.get(product)
    if tokens_per_second is None:
        return (
            QuarantineReason.PRODUCT_NOT_SERVED,
            f"the node does not serve inference product {product[:64]!r}",
        )
    tokens = int(record["input_tokens"]) + int(record["output_tokens"])  # type: ignore[call-overload]
    if tokens * 1_000_000 > tokens_per_second * window_us:
        return (
            QuarantineReason.TOKENS_EXCEED_THROUGHPUT,
            f"{tokens} tokens > {tokens_per_second} per GPU-second of {product[:64]!r}"
            f" x {window_us // 1000} ms",
        )
    return None
