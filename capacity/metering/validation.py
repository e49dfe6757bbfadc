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

Inference is billed only from **receipt records** (agent protocol v1.1, docs/gateway.md
points 6 and 8): ``workload = {"kind": "inference", "ref": <rid>, "receipt": <token>}``,
one record per request. Such a record is valid only if the receipt verifies with the
platform's public key, names the polled node (``node`` claim = its id, ``agent`` claim =
its enrolled public key), ``ref`` is the receipt's ``rid``, no earlier record of the poll
named the same ``rid`` (``ReceiptContext.seen_rids``; earlier polls: ``ingest``), its
tokens are within the receipt's bounds, ``requests`` = 1 and ``busy_ms`` = ``energy_mj``
= 0. It describes a request, not a GPU's window: it may overlap the GPU's window records,
is exempt from the per-GPU overlap rule and never moves ``gpu_window_ends``; its tokens
are bounded by the receipt (at most ``receipts.MAX_TOKENS_BOUND`` each) instead of the
per-GPU-second ceilings. Checking one costs one Ed25519 verification (~50 us).

GPU work is tied to what the platform assigned (agent protocol v1.1, docs/workloads.md):
a record ``{"kind": "assignment", "ref": <assignment id>}`` with busy time or tokens is
valid only if that assignment exists for the polled node, names the record's GPU and had
started before the window started and not ended by then (``assignments``, read from the
platform before the poll); busy time or tokens reported as ``idle`` are not believed
either. Both are quarantined as ``unassigned``, never billed.

Legacy inference window records (no receipt; ``ref`` = the product's slug) are still
stored when the node serves that product and their tokens are within its throughput, so
the GPU's busy time, energy and minutes count as before, but their tokens are **never
billed**: attribution no longer ties inference to keys (the ``<product>@<key prefix>``
refs are gone) and billing reads inference only from the receipts' rollup.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from capacity.agent.protocol import MAX_WINDOW_SECONDS, RECORD_KEYS, WORKLOAD_KINDS, parse_time
from capacity.agent.receipts import Receipt, ReceiptError, parse_receipt
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
MAX_WORKLOAD_REF_LENGTH = 128
_PLAIN_WORKLOAD_KEYS = frozenset({"kind", "ref"})
_RECEIPT_WORKLOAD_KEYS = frozenset({"kind", "ref", "receipt"})


@dataclass(frozen=True)
class ReceiptContext:
    """What a receipt record is checked against: the polled node and the platform's key.

    ``seen_rids`` collects the ``rid`` of every receipt record accepted so far in this
    poll (it is shared across the poll's pages), so a ``rid`` repeated within a poll is
    refused here; one stored by an earlier poll is refused by ``ingest``.
    """

    node_id: int
    # The node's enrolled agent public key (base64), as the receipt's ``agent`` claim has it.
    agent_public_key: str
    platform_key: Ed25519PublicKey
    seen_rids: set[str]


# Workload kinds a record may carry: the protocol's, and v1.1's assignments.
ACCEPTED_WORKLOAD_KINDS = frozenset(WORKLOAD_KINDS) | {"assignment"}


@dataclass(frozen=True)
class AssignmentCover:
    """One assignment of the polled node as the platform holds it: the GPUs (uuids) it
    runs on and when (Unix us; ``end_us`` None while it runs)."""

    gpu_uuids: frozenset[str]
    start_us: int
    end_us: int | None = None

    def covers(self, gpu_uuid: str, start_us: int) -> bool:
        return (
            gpu_uuid in self.gpu_uuids
            and start_us >= self.start_us - CLOCK_SKEW_S * 1_000_000
            and (self.end_us is None or start_us < self.end_us)
        )


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
    # A receipt record's verified receipt, and the record as received (kept for the
    # quarantine row should ``ingest`` find its ``rid`` already stored); None otherwise.
    receipt: Receipt | None = None
    raw: Mapping[str, object] | None = None


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
    receipts: ReceiptContext | None = None,
    assignments: Mapping[str, AssignmentCover] | None = None,
) -> AcceptedRecord | Rejection:
    """Accept ``record`` or say why not.

    ``assignments`` maps the node's assignment ids to what they cover (none given: the
    node has none, and any assignment record with busy time or tokens is refused).

    ``served_products`` maps the slug of each inference product the node serves to the
    product's throughput in tokens per GPU-second; inference for any other product is
    refused (none given: the node serves nothing). ``receipts`` is what receipt records
    are checked against (none given: every receipt record is refused).

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
    has_receipt = kind == "inference" and isinstance(workload, Mapping) and "receipt" in workload
    if (
        kind not in ACCEPTED_WORKLOAD_KINDS
        or not isinstance(workload, Mapping)
        or workload.keys() != (_RECEIPT_WORKLOAD_KEYS if has_receipt else _PLAIN_WORKLOAD_KEYS)
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
    receipt: Receipt | None = None
    if has_receipt:
        verdict = _receipt_verdict(record, workload["receipt"], ref, context=receipts)
        if isinstance(verdict, tuple):
            return reject(*verdict)
        receipt = verdict
    elif kind == "inference":
        refusal = _inference_refusal(
            ref, record, served_products=served_products or {}, window_us=window_us
        )
        if refusal is not None:
            return reject(*refusal)
    if receipt is None:  # a GPU's window: bounded by the window, ordered per GPU
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
                f"starts {(previous_end_us - start_us) / 1e6:g} s before the GPU's previous"
                " window ended",
            )
        unassigned = _unassigned(
            kind, ref, record, gpu_uuid=str(raw_uuid), start_us=start_us, assignments=assignments
        )
        if unassigned is not None:
            return reject(QuarantineReason.UNASSIGNED, unassigned)
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
        receipt=receipt,
        raw=record if receipt is not None else None,
    )


def _unassigned(
    kind: object,
    ref: str | None,
    record: Mapping[str, object],
    *,
    gpu_uuid: str,
    start_us: int,
    assignments: Mapping[str, AssignmentCover] | None,
) -> str | None:
    """Why a record's busy time or tokens are not covered by an assignment (words), or
    None: an assignment record naming no assignment of this node covering the GPU at
    the window's start, or busy time or tokens reported as idle."""
    worked = any(int(record[name]) > 0 for name in ("busy_ms", "input_tokens", "output_tokens"))  # type: ignore[call-overload]
    if not worked:
        return None
    if kind == "idle":
        return "busy time or tokens reported as idle"
    if kind != "assignment":
        return None
    cover = (assignments or {}).get(ref or "")
    if cover is None:
        return f"no assignment {str(ref)[:40]!r} on this node"
    if not cover.covers(gpu_uuid, start_us):
        return f"assignment {str(ref)[:40]!r} does not cover this GPU at the window's start"
    return None


def _inference_refusal(
    ref: str | None,
    record: Mapping[str, object],
    *,
    served_products: Mapping[str, int],
    window_us: int,
) -> tuple[str, str] | None:
    """Why a legacy inference window record (no receipt) cannot be true (reason, detail),
    or None: its ``ref`` is not the slug of a product the node serves, or its tokens
    exceed the product's throughput over the window on one GPU. Stored, never billed."""
    product = ref or ""
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


def _receipt_verdict(
    record: Mapping[str, object],
    token: object,
    ref: str | None,
    *,
    context: ReceiptContext | None,
) -> Receipt | tuple[str, str]:
    """The receipt of a receipt record if the record may be billed against it, else
    (reason, detail). Quantities are already known to be non-negative integers."""
    if context is None:
        return (QuarantineReason.RECEIPT_INVALID, "receipts cannot be checked here")
    try:
        receipt = parse_receipt(token, context.platform_key)  # type: ignore[arg-type]
    except ReceiptError as error:
        return (QuarantineReason.RECEIPT_INVALID, str(error))
    if receipt.node != context.node_id or receipt.agent != context.agent_public_key:
        return (
            QuarantineReason.RECEIPT_OTHER_NODE,
            f"receipt {receipt.rid} was issued for node {receipt.node}, not {context.node_id}"
            if receipt.node != context.node_id
            else f"receipt {receipt.rid} was issued for another agent key",
        )
    if ref != receipt.rid:
        return (QuarantineReason.RECEIPT_INVALID, f"ref {ref!r} is not the receipt's rid")
    if record["requests"] != 1 or record["busy_ms"] != 0 or record["energy_mj"] != 0:
        return (
            QuarantineReason.RECEIPT_INVALID,
            "a receipt record has requests = 1, busy_ms = 0 and energy_mj = 0, not"
            f" {record['requests']}, {record['busy_ms']}, {record['energy_mj']}",
        )
    input_tokens, output_tokens = record["input_tokens"], record["output_tokens"]
    if input_tokens > receipt.max_input_tokens or output_tokens > receipt.max_output_tokens:  # type: ignore[operator]
        return (
            QuarantineReason.TOKENS_OVER_RECEIPT,
            f"{input_tokens} / {output_tokens} tokens > the receipt's"
            f" {receipt.max_input_tokens} / {receipt.max_output_tokens}",
        )
    if receipt.rid in context.seen_rids:
        return (QuarantineReason.RECEIPT_REPLAYED, f"receipt {receipt.rid} already in this poll")
    context.seen_rids.add(receipt.rid)
    return receipt
