"""Fleet simulator: thousands of simulated agents served by one asyncio process.

``python -m capacity.agent.fleet --nodes N --port P --seed S`` serves node ``i`` (0 to
N-1) under ``/n/<i>/v1/info``, ``/v1/health``, ``/v1/usage`` and ``/v1/_sim/truth``,
each node with its own Ed25519 key, journal epoch, GPUs, poll token and ground truth,
speaking exactly the protocol of ``python -m capacity.agent run --simulate``.

Light by construction, so 10,000 nodes fit a 2-core machine: nothing is stored per
record. A node's record ``seq`` is GPU ``(seq-1) % G`` in window ``(seq-1) // G`` of the
fleet's timeline, and its contents are the simulator's pure function of ``(seed, node,
gpu, window)``; only hashes are cached (one checkpoint every 512 records plus the
last few page ends), so a page is rebuilt from the nearest known hash. Key pairs
derive from ``(seed, i)`` and are made on first use.

Time: as in the simulator, the timeline starts ``--backfill-windows`` windows before
start-up and catches up with real time at ``--speed`` simulated seconds per real
second (at once by default); no window ever ends after real UTC now. With
``--state-dir`` the timeline's origin is kept in ``fleet.json``: a restarted fleet keeps
its epochs and seqs (every window up to now is available at once, since records are
computed, not stored). Without it, each start is a new journal epoch for every node.

Tokens: node ``i`` accepts ``fleet_poll_token(seed, i, prefix)`` (default prefix
``fleet``; ``--token-prefix`` changes it), i.e. ``"<prefix>-<i>-<32 hex>"``. Enrollment
hands out tokens from the platform instead, so ``POST /n/<i>/_admin/token`` with
``{"poll_token_sha256": "<64 hex>"}`` replaces node ``i``'s token (kept in
``tokens.json`` under ``--state-dir``).

Workloads (protocol v1.1, docs/workloads.md): every node serves ``PUT
/n/<i>/v1/assignments`` (checked with ``--platform-key``) and ``GET /n/<i>/v1/workloads``
from its own simulated runtime (``capacity.agent.runtime.simulated``, timings and
failures set by ``--pull-seconds``, ``--start-seconds``, ``--fail-image``...), and its
``/v1/usage`` answers carry the ``assignments`` generation and digest (and the list when
the platform's ``workloads`` digest is another). A GPU is busy
only while an assignment runs on it: records of such windows name the assignment, all
others are idle. The runtime computes states from the clock, so converging costs no
timer and no task per node: a node that never got an assignment holds nothing for it.
With ``--state-dir`` every accepted body is appended to ``assignments.jsonl`` with the
time it was accepted and replayed on start, so a resumed fleet computes the same records.

Receipted inference (protocol v1.1): every node also serves
``POST /n/<i>/v1/inference/chat/completions`` and ``/completions`` with the agent's
receipt rules (``capacity.agent.inference``; ``--platform-key`` checks the receipts,
the node's key is ``fleet_private_key(seed, i)``) from its own simulated engine, which
loopback clients can also call directly at ``/n/<i>/engine/v1/...`` (benchmarks). Each
receipted request adds one record to the node's journal at the head it had then: the
node keeps those records (and only those) in memory, at the seq they were given, and the
computed window records continue after them, so ``seq`` of window record ``k`` is ``k``
plus the receipt records before it. A node that never served a receipt keeps the plain
computation above. With ``--state-dir`` receipt records and served rids are also
appended to ``receipts.jsonl`` and read back on start, so a resumed fleet serves the same
journal and refuses replays.

Faults: ``POST /_admin/faults`` with ``{"nodes": [i, ...], "fault": ..., ...}`` (or
``"node": i``) injects the faults described in ``capacity.agent.faults``; ``GET
/_admin/fleet`` describes the fleet. ``GET /_admin/requests`` counts the requests the
nodes received (every one, answered or refused), by method and endpoint: ``{"totals":
{"GET usage": n, "PUT assignments": n, ...}}``, and with ``?node=i`` (repeatable) also
``"nodes": {"i": {...}}``, so a test or bench sees what the platform asked of whom.
Admin endpoints answer loopback clients only.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import hmac
import json
import os
import re
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from capacity.agent.arguments import (
    add_engine_flags,
    add_simulated_runtime_flags,
    engine_settings,
    non_negative_int,
    platform_key,
    positive_int,
    simulated_settings,
    window_seconds,
)
from capacity.agent.assignments import (
    EMPTY_SET,
    PLATFORM_SIGNATURE_HEADER,
    AssignmentSet,
    BadPlatformSignature,
    is_repeat,
    parse_assignments,
)
from capacity.agent.counters import CounterReadings, readings_delta
from capacity.agent.engine import ENDPOINT_PATTERN, EngineSettings, SimulatedEngine
from capacity.agent.engine_http import serve_engine
from capacity.agent.faults import (
    ENGINE_FAULT_KINDS,
    FaultRequestError,
    PendingFaults,
    parse_fault_request,
)
from capacity.agent.identity import derive_private_key, write_private_file
from capacity.agent.inference import (
    InferenceNode,
    MemoryReceiptLedger,
    ServedRequest,
    receipt_record_fields,
    record_tokens,
    serve_inference,
)
from capacity.agent.protocol import (
    GENESIS_PREV_HASH,
    USAGE_WORKLOADS_PARAM,
    chain_record,
    hash_token,
    public_key_b64,
    time_from_unix,
    usage_fields,
)
from capacity.agent.receipts import public_key_from_b64
from capacity.agent.recorder import unix_ms_now
from capacity.agent.runtime.base import covering_assignment
from capacity.agent.runtime.simulated import SimulatedRuntime, SimulatedSettings
from capacity.agent.server import (
    UsageParamError,
    gate,
    info_payload,
    is_loopback,
    now_rfc3339,
    offer_assignments,
    parse_usage_params,
    serve,
    signed_response,
)
from capacity.agent.simulator import (
    GPU_MODELS,
    GpuTotals,
    SimClock,
    SimulatedGpu,
    WindowActivity,
    health_sample,
    scheduled_resets,
    simulated_gpus,
    truth_payload,
    window_activity,
)
from capacity.agent.workloads import EMPTY_VIEW, CachedWorkloads, WorkloadView, usage_member

CHECKPOINT_EVERY = 512
RECENT_HASHES = 16
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def fleet_node_id(seed: int, index: int) -> str:
    return f"fleet-{seed}-{index}"


def fleet_poll_token(seed: int, index: int, prefix: str = "fleet") -> str:
    """Node ``index``'s default poll token: public knowledge for anyone with the seed."""
    digest = hmac.new(f"hashgrid-fleet-token|{seed}".encode(), str(index).encode(), "sha256")
    return f"{prefix}-{index}-{digest.hexdigest()[:32]}"


def fleet_private_key(seed: int, index: int) -> Ed25519PrivateKey:
    return derive_private_key("hashgrid-fleet-key", seed, index)


def fleet_gpu_model(seed: int, index: int, model: str) -> str:
    """The node's GPU model; ``mixed`` picks one per node from the seed."""
    if model != "mixed":
        return model
    draw = int(hashlib.sha256(f"hashgrid-fleet-model|{seed}|{index}".encode()).hexdigest(), 16)
    return sorted(GPU_MODELS)[draw % len(GPU_MODELS)]


def fleet_journal_epoch(seed: int, index: int, origin_window: int) -> str:
    """A node's epoch: new whenever the fleet's timeline (its "journal") is new."""
    material = f"hashgrid-fleet-epoch|{seed}|{index}|{origin_window}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


class ReceiptLog:
    """``receipts.jsonl`` under ``--state-dir``: the fleet's only per-request state.

    One JSON line per served rid (``{"node", "rid", "iat"}``) and per receipt record
    (``{"node", "windows_before", "fields"}``), each written with one ``write`` to a file
    opened for appending, so a killed fleet loses at most the line being written (a torn
    last line is skipped when read back).
    """

    NAME = "receipts.jsonl"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.NAME
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, entry: dict[str, object]) -> None:
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8"))

    def read(self) -> list[dict[str, Any]]:
        entries = []
        with self.path.open("rb") as lines:
            for line in lines:
                try:
                    entries.append(json.loads(line))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue  # a line torn by a kill
        return entries


class AssignmentLog:
    """``assignments.jsonl`` under ``--state-dir``: every accepted body with its node and
    the time it was accepted (``{"node", "at_ms", "body", "signature"}``), one ``write``
    per line like ``ReceiptLog``, replayed on start."""

    NAME = "assignments.jsonl"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.NAME
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, *, node: int, at_ms: int, accepted: AssignmentSet) -> None:
        entry = {
            "node": node,
            "at_ms": at_ms,
            "body": accepted.body.decode("utf-8"),
            "signature": accepted.signature,
        }
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)

    def read(self) -> list[dict[str, Any]]:
        entries = []
        with self.path.open("rb") as lines:
            for line in lines:
                try:
                    entries.append(json.loads(line))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue  # a line torn by a kill
        return entries


@dataclass
class FleetConfig:
    seed: int
    nodes: int
    gpus_per_node: int
    window_ms: int
    gpu_model: str
    token_prefix: str
    origin_window: int
    clock: SimClock
    state_dir: Path | None = None
    # Poll token hashes set through the admin endpoint, by node index.
    token_overrides: dict[int, str] = field(default_factory=dict)
    # The platform's receipt key; None: every inference request is refused.
    platform_key: Ed25519PublicKey | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)
    # Where receipt records and served rids persist (with --state-dir).
    receipt_log: ReceiptLog | None = None
    # Every node's simulated runtime: timings, failures, the address in connections.
    runtime: SimulatedSettings = field(default_factory=SimulatedSettings)
    # Where accepted assignment sets persist (with --state-dir).
    assignment_log: AssignmentLog | None = None

    def windows_done(self, real_now_ms: int) -> int:
        return max(0, self.clock.now_ms(real_now_ms) // self.window_ms - self.origin_window)

    def save_tokens(self) -> None:
        if self.state_dir is not None:
            body = json.dumps({str(i): h for i, h in sorted(self.token_overrides.items())})
            write_private_file(self.state_dir / "tokens.json", body.encode())


class FleetNode:
    """One simulated agent; its journal is computed, only hashes are cached."""

    def __init__(self, config: FleetConfig, index: int) -> None:
        self.config = config
        self.index = index
        self.node_id = fleet_node_id(config.seed, index)
        model = fleet_gpu_model(config.seed, index, config.gpu_model)
        self.gpus: list[SimulatedGpu] = simulated_gpus(
            seed=config.seed, node_key=self.node_id, count=config.gpus_per_node, model=model
        )
        self.epoch = fleet_journal_epoch(config.seed, index, config.origin_window)
        self.boot_id = str(uuid.uuid4())
        self.faults = PendingFaults()
        # (after, limit) of the last /v1/usage answer, replayed by the duplicate_page fault.
        self.last_usage_params: tuple[int, int] | None = None
        # checkpoints[j] is the hash of record j * CHECKPOINT_EVERY (j = 0: genesis).
        self.checkpoints = [GENESIS_PREV_HASH]
        self.recent: dict[int, str] = {}
        # Window ordinals at which every GPU's counters were reset by the fault.
        self.forced_reset_ordinals: set[int] = set()
        self.truth_upto = 0
        self.totals = {gpu.uuid: GpuTotals() for gpu in self.gpus}
        # Receipt records (protocol v1.1), the only records kept: their seqs, ascending,
        # and their fields; empty for a node that serves no inference (the fast path).
        self.receipt_seqs: list[int] = []
        self.receipt_fields: list[dict[str, object]] = []
        # Window records published so far (by a poll or before a receipt record): the
        # head never goes back behind them.
        self.windows_floor = 0
        self.receipt_totals = {"records": 0, "input_tokens": 0, "output_tokens": 0}
        # Workloads (protocol v1.1): the accepted set and, once one came, the runtime
        # running it and its cached /v1/workloads view; None keeps idle nodes light.
        self.held: AssignmentSet = EMPTY_SET
        self.runtime: SimulatedRuntime | None = None
        self.workload_cache: CachedWorkloads | None = None
        # Window ordinals in which unassigned GPUs are busy (the unassigned_busy fault).
        self.unassigned_busy_ordinals: set[int] = set()
        # Requests received, by "METHOD endpoint" (``GET /_admin/requests``).
        self.requests: Counter[str] = Counter()

    def offer_assignments(self, body: bytes, signature: str | None) -> AssignmentSet:
        """``PUT /v1/assignments``: the agent's rules, then converge the runtime at once."""
        platform_key = self.config.platform_key
        if platform_key is None:
            raise BadPlatformSignature("the fleet has no platform key")
        offered = parse_assignments(
            body,
            signature,
            platform_key=platform_key,
            agent_public_key=public_key_b64(self.private_key),
            gpu_uuids=[gpu.uuid for gpu in self.gpus],
        )
        if is_repeat(self.held, offered):
            return self.held
        now_ms = unix_ms_now()
        if self.config.assignment_log is not None:
            self.config.assignment_log.write(node=self.index, at_ms=now_ms, accepted=offered)
        self.apply_assignments(offered, at_ms=now_ms)
        return offered

    def apply_assignments(self, accepted: AssignmentSet, *, at_ms: int) -> None:
        if self.runtime is None:
            self.runtime = SimulatedRuntime(settings=self.config.runtime)
            self.workload_cache = CachedWorkloads()
        desired = accepted.by_id
        for assignment_id in sorted(self.held.by_id.keys() - desired.keys()):
            self.runtime.end(assignment_id, at_ms)
        for assignment in accepted.assignments:
            self.runtime.begin(assignment, at_ms)
        self.held = accepted

    def workloads(self, now_ms: int) -> WorkloadView:
        """``/v1/workloads``'s body and its digest."""
        if self.runtime is None or self.workload_cache is None:
            return EMPTY_VIEW
        return self.workload_cache.get(self.runtime, self.held.generation, now_ms)

    @cached_property
    def private_key(self) -> Ed25519PrivateKey:
        return fleet_private_key(self.config.seed, self.index)

    @cached_property
    def engine(self) -> SimulatedEngine:
        return SimulatedEngine(settings=self.config.engine)

    @cached_property
    def ledger(self) -> MemoryReceiptLedger:
        log = self.config.receipt_log

        def persist_claim(rid: str, iat: int) -> None:
            if log is not None:
                log.write({"node": self.index, "rid": rid, "iat": iat})

        return MemoryReceiptLedger(on_claim=persist_claim)

    @cached_property
    def inference(self) -> InferenceNode:
        return InferenceNode(
            agent_public_key=public_key_b64(self.private_key),
            platform_key=self.config.platform_key,
            ledger=self.ledger,
            engine=self.engine,
            journal=self.journal_receipt,
        )

    def journal_receipt(self, served: ServedRequest) -> None:
        fields = receipt_record_fields(served, gpu_uuid=self.gpus[0].uuid)
        windows_before = self.append_receipt_record(fields, real_now_ms=unix_ms_now())
        if self.config.receipt_log is not None:
            self.config.receipt_log.write(
                {"node": self.index, "windows_before": windows_before, "fields": fields}
            )

    def append_receipt_record(self, fields: dict[str, object], *, real_now_ms: int) -> int:
        """Put ``fields`` at the head; return how many window records come before it."""
        windows_before = max(self._windows_published(real_now_ms), self.windows_floor)
        self.restore_receipt_record(fields, windows_before=windows_before)
        return windows_before

    def restore_receipt_record(self, fields: dict[str, object], *, windows_before: int) -> None:
        self.windows_floor = windows_before
        self.receipt_seqs.append(windows_before + len(self.receipt_seqs) + 1)
        self.receipt_fields.append(fields)
        input_tokens, output_tokens = record_tokens(fields)
        self.receipt_totals["input_tokens"] += input_tokens
        self.receipt_totals["output_tokens"] += output_tokens
        self.receipt_totals["records"] += 1

    def _windows_published(self, real_now_ms: int) -> int:
        return self.config.windows_done(real_now_ms) * len(self.gpus)

    @property
    def token_sha256(self) -> str:
        override = self.config.token_overrides.get(self.index)
        if override is not None:
            return override
        return hash_token(fleet_poll_token(self.config.seed, self.index, self.config.token_prefix))

    def head_seq(self, real_now_ms: int) -> int:
        # Never behind what was published before, even if the wall clock steps back: a
        # receipt record goes after every window record a poll may have seen.
        windows = self.windows_floor = max(self._windows_published(real_now_ms), self.windows_floor)
        return windows + len(self.receipt_seqs)

    def _activity(self, gpu: SimulatedGpu, ordinal: int) -> WindowActivity:
        assigned = None
        if self.runtime is not None:
            window_ms = self.config.window_ms
            start_ms = (self.config.origin_window + ordinal) * window_ms
            spans = self.runtime.spans()
            assigned = covering_assignment(spans, gpu.uuid, start_ms, start_ms + window_ms)
        return window_activity(
            seed=self.config.seed,
            node_key=self.node_id,
            gpu=gpu,
            ordinal=ordinal,
            window_ms=self.config.window_ms,
            assigned=assigned,
            unassigned_busy=ordinal in self.unassigned_busy_ordinals,
        )

    def _counter_reset(self, gpu: SimulatedGpu, ordinal: int) -> bool:
        scheduled = scheduled_resets(
            seed=self.config.seed, node_key=self.node_id, gpu_index=gpu.index, ordinal=ordinal
        )
        return ordinal in self.forced_reset_ordinals or scheduled.energy or scheduled.tokens

    def _fields(self, seq: int) -> dict[str, object]:
        if self.receipt_seqs:
            receipts_before = bisect.bisect_left(self.receipt_seqs, seq)
            if (
                receipts_before < len(self.receipt_seqs)
                and self.receipt_seqs[receipts_before] == seq
            ):
                return self.receipt_fields[receipts_before]
            seq -= receipts_before  # the window record's place among window records
        ordinal, gpu_index = divmod(seq - 1, len(self.gpus))
        gpu = self.gpus[gpu_index]
        activity = self._activity(gpu, ordinal)
        energy, input_tokens = activity.energy_mj, activity.input_tokens
        output_tokens, requests = activity.output_tokens, activity.requests
        if self._counter_reset(gpu, ordinal):
            # The counters restarted from zero in this window: read them as the agent
            # would, from a reading above them to the window's usage.
            after = CounterReadings(energy, input_tokens, output_tokens, requests)
            before = CounterReadings(energy + 1, input_tokens + 1, output_tokens + 1, requests + 1)
            deltas = readings_delta(before, after)
            energy, input_tokens = deltas.energy_mj, deltas.input_tokens
            output_tokens, requests = deltas.output_tokens, deltas.requests
        window = self.config.origin_window + ordinal
        window_s = self.config.window_ms // 1000
        return usage_fields(
            gpu_uuid=gpu.uuid,
            window_start=time_from_unix(window * window_s),
            window_end=time_from_unix((window + 1) * window_s),
            workload_kind=activity.kind,
            workload_ref=activity.ref,
            busy_ms=activity.busy_ms,
            energy_mj=energy,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            requests=requests,
        )

    def _known_hash_at_or_before(self, seq: int) -> tuple[int, str]:
        checkpoint = min(seq // CHECKPOINT_EVERY, len(self.checkpoints) - 1)
        start_seq, start_hash = checkpoint * CHECKPOINT_EVERY, self.checkpoints[checkpoint]
        for known_seq, known_hash in self.recent.items():
            if start_seq < known_seq <= seq:
                start_seq, start_hash = known_seq, known_hash
        return start_seq, start_hash

    def _remember(self, seq: int, record_hash: str) -> None:
        if seq % CHECKPOINT_EVERY == 0 and seq // CHECKPOINT_EVERY == len(self.checkpoints):
            self.checkpoints.append(record_hash)

    def _remember_recent(self, seq: int, record_hash: str) -> None:
        self.recent[seq] = record_hash
        while len(self.recent) > RECENT_HASHES:
            del self.recent[next(iter(self.recent))]

    def _chain(self, first_seq: int, last_seq: int) -> tuple[str, list[dict[str, object]]]:
        """Hash of record ``first_seq - 1`` and records ``first_seq..last_seq``."""
        seq, prev_hash = self._known_hash_at_or_before(first_seq - 1)
        while seq < first_seq - 1:
            seq += 1
            prev_hash = str(chain_record(self._fields(seq), seq=seq, prev_hash=prev_hash)["hash"])
            self._remember(seq, prev_hash)
        before = prev_hash
        records = []
        for seq in range(first_seq, last_seq + 1):
            record = chain_record(self._fields(seq), seq=seq, prev_hash=prev_hash)
            prev_hash = str(record["hash"])
            self._remember(seq, prev_hash)
            records.append(record)
        if last_seq >= first_seq:
            self._remember_recent(last_seq, prev_hash)
        elif first_seq > 1:
            self._remember_recent(first_seq - 1, before)
        return before, records

    def usage(self, *, after: int, limit: int, real_now_ms: int) -> dict[str, object]:
        head_seq = self.head_seq(real_now_ms)
        last = min(after + limit, head_seq)
        _, records = self._chain(after + 1, last) if after < head_seq else ("", [])
        head_hash, _ = self._chain(head_seq + 1, head_seq)
        return {
            "journal_epoch": self.epoch,
            "records": records,
            "head_seq": head_seq,
            "head_hash": head_hash,
        }

    def truth(self, real_now_ms: int) -> dict[str, GpuTotals]:
        done = self.config.windows_done(real_now_ms)
        for ordinal in range(self.truth_upto, done):
            for gpu in self.gpus:
                self.totals[gpu.uuid].add(
                    self._activity(gpu, ordinal), counter_reset=self._counter_reset(gpu, ordinal)
                )
        self.truth_upto = max(self.truth_upto, done)
        return self.totals

    def last_activity(self, gpu: SimulatedGpu, real_now_ms: int) -> WindowActivity:
        done = self.config.windows_done(real_now_ms)
        if done == 0:
            idle_mj = gpu.spec.idle_power_w * self.config.window_ms
            return WindowActivity("idle", None, 0, idle_mj, 0, 0, 0)
        return self._activity(gpu, done - 1)

    def respond(self, payload: object, *, status: int = 200) -> web.Response:
        return signed_response(self.private_key, payload, status=status)


class Fleet:
    """All nodes, created on first request."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._nodes: dict[int, FleetNode] = {}
        # Requests every node received, by "METHOD endpoint" (the nodes' counts summed).
        self.requests: Counter[str] = Counter()
        if config.receipt_log is not None:
            self._restore(config.receipt_log)
        if config.assignment_log is not None:
            self._restore_assignments(config.assignment_log)

    def _restore_assignments(self, log: AssignmentLog) -> None:
        """Accepted sets of a previous run, applied at the times they were accepted."""
        platform_key = self.config.platform_key
        if platform_key is None:
            return  # nothing could have been accepted without it
        for entry in log.read():
            index = entry.get("node")
            if not isinstance(index, int) or not 0 <= index < self.config.nodes:
                continue
            node = self.node(index)
            body = str(entry["body"]).encode("utf-8")
            accepted = parse_assignments(
                body,
                str(entry["signature"]),
                platform_key=platform_key,
                agent_public_key=public_key_b64(node.private_key),
                gpu_uuids=[gpu.uuid for gpu in node.gpus],
            )
            node.apply_assignments(accepted, at_ms=int(entry["at_ms"]))

    def _restore(self, log: ReceiptLog) -> None:
        """Receipt records and served rids of a previous run, as ``receipts.jsonl`` has them."""
        for entry in log.read():
            index = entry.get("node")
            if not isinstance(index, int) or not 0 <= index < self.config.nodes:
                continue
            node = self.node(index)
            if "fields" in entry:
                node.restore_receipt_record(entry["fields"], windows_before=entry["windows_before"])
            else:
                node.ledger.remember(str(entry["rid"]), int(entry["iat"]))

    def node(self, index: int) -> FleetNode:
        node = self._nodes.get(index)
        if node is None:
            node = self._nodes[index] = FleetNode(self.config, index)
        return node


FLEET = web.AppKey("fleet", Fleet)


def _not_found() -> web.Response:
    return web.json_response({"error": "not_found"}, status=404)


def _node_from(request: web.Request, counted_as: str = "") -> FleetNode | None:
    """The node a request is for (None: no such node); the request is counted on it."""
    fleet = request.app[FLEET]
    raw = request.match_info["index"]
    if not raw.isascii() or not raw.isdigit() or int(raw) >= fleet.config.nodes:
        return None
    node = fleet.node(int(raw))
    if counted_as:
        key = f"{request.method} {counted_as}"
        node.requests[key] += 1
        fleet.requests[key] += 1
    return node


async def node_view(request: web.Request) -> web.Response:
    node = _node_from(request, request.match_info["endpoint"])
    if node is None:
        return _not_found()
    early = await gate(
        request, token_sha256=node.token_sha256, faults=node.faults, private_key=node.private_key
    )
    if early is not None:
        return early
    endpoint = request.match_info["endpoint"]
    now_ms = unix_ms_now()
    if endpoint == "info":
        return node.respond(
            info_payload(
                node_id=node.node_id,
                boot_id=node.boot_id,
                journal_epoch=node.epoch,
                private_key=node.private_key,
                gpus=[gpu.info() for gpu in node.gpus],
            )
        )
    if endpoint == "health":
        window_ms = node.config.window_ms
        gpus = [
            health_sample(
                gpu=gpu, activity=node.last_activity(gpu, now_ms), window_ms=window_ms
            ).to_wire()
            for gpu in node.gpus
        ]
        return node.respond({"node_id": node.node_id, "gpus": gpus, "time": now_rfc3339()})
    if endpoint == "usage":
        try:
            after, limit = parse_usage_params(request.query)
        except UsageParamError as error:
            return node.respond({"error": "invalid_parameter", "detail": str(error)}, status=400)
        if node.last_usage_params is not None and node.faults.take_duplicate_page():
            after, limit = node.last_usage_params
        node.last_usage_params = (after, limit)
        page = node.usage(after=after, limit=limit, real_now_ms=now_ms)
        page["assignments"] = usage_member(
            node.workloads(now_ms), platform_digest=request.query.get(USAGE_WORKLOADS_PARAM)
        )
        return node.respond(page)
    if endpoint == "workloads":
        return node.respond(node.workloads(now_ms).payload)
    if endpoint == "_sim/truth":
        return node.respond(
            truth_payload(
                node_id=node.node_id,
                journal_epoch=node.epoch,
                head_seq=node.head_seq(now_ms),
                gpu_totals=node.truth(now_ms),
                time=now_rfc3339(),
                receipts=node.receipt_totals,
            )
        )
    return _not_found()


async def assignments_view(request: web.Request) -> web.Response:
    node = _node_from(request, "assignments")
    if node is None:
        return _not_found()
    early = await gate(
        request, token_sha256=node.token_sha256, faults=node.faults, private_key=node.private_key
    )
    if early is not None:
        return early
    body = await request.read()
    signature = request.headers.get(PLATFORM_SIGNATURE_HEADER)
    payload, status = offer_assignments(node.offer_assignments, body, signature)
    return node.respond(payload, status=status)


async def inference_view(request: web.Request) -> web.StreamResponse:
    node = _node_from(request, f"inference/{request.match_info['endpoint']}")
    if node is None:
        return _not_found()
    return await serve_inference(request, node.inference, request.match_info["endpoint"])


async def engine_view(request: web.Request) -> web.StreamResponse:
    if not is_loopback(request.remote):
        return web.json_response({"error": "forbidden"}, status=403)
    node = _node_from(request)
    if node is None:
        return _not_found()
    return await serve_engine(request, node.engine, request.match_info["endpoint"])


async def token_view(request: web.Request) -> web.Response:
    if not is_loopback(request.remote):
        return web.json_response({"error": "forbidden"}, status=403)
    node = _node_from(request)
    if node is None:
        return _not_found()
    try:
        payload = await request.json()
    except json.JSONDecodeError:
        payload = None
    token_sha256 = payload.get("poll_token_sha256") if isinstance(payload, dict) else None
    if not isinstance(token_sha256, str) or not _SHA256_HEX.match(token_sha256):
        return web.json_response(
            {"error": "invalid_token", "detail": "poll_token_sha256 must be 64 lowercase hex"},
            status=400,
        )
    config = request.app[FLEET].config
    config.token_overrides[node.index] = token_sha256
    config.save_tokens()
    return web.json_response({"node": node.index, "node_id": node.node_id})


async def faults_view(request: web.Request) -> web.Response:
    if not is_loopback(request.remote):
        return web.json_response({"error": "forbidden"}, status=403)
    fleet = request.app[FLEET]
    try:
        payload = await request.json()
        fault = parse_fault_request(payload)
    except (FaultRequestError, json.JSONDecodeError) as error:
        return web.json_response({"error": "invalid_fault", "detail": str(error)}, status=400)
    indexes = payload.get("nodes", [payload.get("node")])
    if (
        not isinstance(indexes, list)
        or not indexes
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < fleet.config.nodes
            for i in indexes
        )
    ):
        return web.json_response(
            {"error": "invalid_fault", "detail": "nodes must list node indexes"}, status=400
        )
    next_ordinal = fleet.config.windows_done(unix_ms_now())
    for index in indexes:
        node = fleet.node(index)
        if fault.kind == "restart":
            node.boot_id = str(uuid.uuid4())
        elif fault.kind == "counter_reset":
            node.forced_reset_ordinals.add(next_ordinal)
        elif fault.kind == "unassigned_busy":
            node.unassigned_busy_ordinals.update(range(next_ordinal, next_ordinal + fault.count))
        elif fault.kind in ENGINE_FAULT_KINDS:
            node.engine.faults.add(fault)
        else:
            node.faults.add(fault)
    return web.json_response({"applied": fault.kind, "nodes": indexes})


async def fleet_view(request: web.Request) -> web.Response:
    if not is_loopback(request.remote):
        return web.json_response({"error": "forbidden"}, status=403)
    config = request.app[FLEET].config
    return web.json_response(
        {
            "seed": config.seed,
            "nodes": config.nodes,
            "gpus_per_node": config.gpus_per_node,
            "window_seconds": config.window_ms // 1000,
            "origin_window": config.origin_window,
            "windows_done": config.windows_done(unix_ms_now()),
        }
    )


async def requests_view(request: web.Request) -> web.Response:
    if not is_loopback(request.remote):
        return web.json_response({"error": "forbidden"}, status=403)
    fleet = request.app[FLEET]
    payload: dict[str, object] = {"totals": dict(sorted(fleet.requests.items()))}
    asked = request.query.getall("node", [])
    if asked:
        if not all(raw.isascii() and raw.isdigit() for raw in asked):
            return web.json_response({"error": "invalid_node"}, status=400)
        payload["nodes"] = {
            raw: dict(sorted(fleet.node(int(raw)).requests.items()))
            for raw in asked
            if int(raw) < fleet.config.nodes
        }
    return web.json_response(payload)


def create_fleet_app(fleet: Fleet) -> web.Application:
    app = web.Application()
    app[FLEET] = fleet
    app.router.add_get(
        r"/n/{index}/v1/{endpoint:info|health|usage|workloads|_sim/truth}", node_view
    )
    app.router.add_put("/n/{index}/v1/assignments", assignments_view)
    app.router.add_post(
        f"/n/{{index}}/v1/inference/{{endpoint:{ENDPOINT_PATTERN}}}", inference_view
    )
    app.router.add_post(f"/n/{{index}}/engine/v1/{{endpoint:{ENDPOINT_PATTERN}}}", engine_view)
    app.router.add_post("/n/{index}/_admin/token", token_view)
    app.router.add_post("/_admin/faults", faults_view)
    app.router.add_get("/_admin/fleet", fleet_view)
    app.router.add_get("/_admin/requests", requests_view)
    return app


def load_config(args: argparse.Namespace, real_now_ms: int) -> FleetConfig:
    """The fleet's configuration, resumed from ``--state-dir`` when one exists there."""
    window_ms = args.window_seconds * 1000
    origin_window = real_now_ms // window_ms - args.backfill_windows
    clock = SimClock(origin_ms=origin_window * window_ms, started_ms=real_now_ms, speed=args.speed)
    settings = {
        "seed": args.seed,
        "gpus_per_node": args.gpus_per_node,
        "window_seconds": args.window_seconds,
        "gpu_model": args.gpu_model,
    }
    token_overrides: dict[int, str] = {}
    receipt_log: ReceiptLog | None = None
    assignment_log: AssignmentLog | None = None
    state_dir: Path | None = args.state_dir
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        fleet_file = state_dir / "fleet.json"
        if fleet_file.exists():
            saved = json.loads(fleet_file.read_text())
            if {key: saved.get(key) for key in settings} != settings:
                raise SystemExit(f"error: {fleet_file} was written for {saved}, not {settings}")
            origin_window = int(saved["origin_window"])
            # Records are computed, so the whole timeline up to now is there at once.
            clock = SimClock(origin_ms=origin_window * window_ms, started_ms=0, speed=None)
        else:
            body = json.dumps({**settings, "origin_window": origin_window}, indent=2)
            write_private_file(fleet_file, body.encode() + b"\n")
        tokens_file = state_dir / "tokens.json"
        if tokens_file.exists():
            token_overrides = {
                int(i): str(h) for i, h in json.loads(tokens_file.read_text()).items()
            }
        receipt_log = ReceiptLog(state_dir)
        assignment_log = AssignmentLog(state_dir)
    return FleetConfig(
        seed=args.seed,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        window_ms=window_ms,
        gpu_model=args.gpu_model,
        token_prefix=args.token_prefix,
        origin_window=origin_window,
        clock=clock,
        state_dir=state_dir,
        token_overrides=token_overrides,
        platform_key=public_key_from_b64(args.platform_key) if args.platform_key else None,
        engine=engine_settings(args),
        receipt_log=receipt_log,
        runtime=simulated_settings(args, host=args.host),
        assignment_log=assignment_log,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capacity.agent.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=positive_int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gpus-per-node", type=positive_int, default=8)
    parser.add_argument("--gpu-model", choices=[*sorted(GPU_MODELS), "mixed"], default="h100")
    parser.add_argument("--window-seconds", type=window_seconds, default=60)
    parser.add_argument("--backfill-windows", type=non_negative_int, default=0)
    parser.add_argument("--speed", type=positive_int, default=None)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--token-prefix", default="fleet")
    parser.add_argument(
        "--platform-key",
        type=platform_key,
        metavar="B64",
        help="the platform's key (receipts, assignments); without it receipted inference "
        "and assignments are refused",
    )
    add_engine_flags(parser)
    add_simulated_runtime_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fleet = Fleet(load_config(args, unix_ms_now()))
    banner = f"fleet of {args.nodes} nodes (seed {args.seed})"
    asyncio.run(serve(create_fleet_app(fleet), host=args.host, port=args.port, banner=banner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
