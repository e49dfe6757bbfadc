"""The agent's HTTP server (aiohttp): ``/v1/info``, ``/v1/health``, ``/v1/usage``, and
(protocol v1.1) ``PUT /v1/assignments`` and ``GET /v1/workloads`` (docs/workloads.md).

Every response body, errors included, is canonical JSON signed with the agent's key
(``X-Agent-Signature``). Every ``/v1`` route needs ``Authorization: Bearer <poll
token>``; the agent compares the token's SHA-256 with the one it keeps and otherwise
answers 401 with nothing but an error code. In simulate mode ``/v1/_sim/truth`` serves
the ground truth and ``POST /_admin/faults`` (loopback only, see ``faults``) injects
faults. The helpers here are shared with the fleet simulator.

The exception (protocol v1.1): ``POST /v1/inference/chat/completions`` and
``/v1/inference/completions`` take a gateway receipt instead of the poll token and relay
the engine's bytes unsigned (``inference``). The simulated engine is also served as is
at ``/engine/v1/...`` to loopback clients, for benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from capacity.agent import AGENT_VERSION
from capacity.agent.assignments import (
    PLATFORM_SIGNATURE_HEADER,
    AssignmentSet,
    BadPlatformSignature,
    InvalidAssignments,
    StaleGeneration,
)
from capacity.agent.engine import ENDPOINT_PATTERN, Engine, SimulatedEngine
from capacity.agent.engine_http import HttpEngine, serve_engine
from capacity.agent.faults import (
    ENGINE_FAULT_KINDS,
    FaultRequestError,
    PendingFaults,
    parse_fault_request,
)
from capacity.agent.inference import (
    InferenceNode,
    JournalReceiptLedger,
    ServedRequest,
    receipt_record_fields,
    record_tokens,
    serve_inference,
)
from capacity.agent.protocol import (
    PROTOCOL_VERSION,
    SIGNATURE_HEADER,
    USAGE_WORKLOADS_PARAM,
    GpuInfo,
    encode_body,
    format_time,
    hash_token,
    public_key_b64,
    sign_body,
)
from capacity.agent.recorder import Recorder, SimulationRecorder
from capacity.agent.simulator import truth_payload
from capacity.agent.workloads import WorkloadSupervisor

USAGE_DEFAULT_LIMIT = 500
USAGE_MAX_LIMIT = 1000


class UsageParamError(ValueError):
    """``after`` or ``limit`` is not a usable integer."""


def signed_response(
    private_key: Ed25519PrivateKey, payload: object, *, status: int = 200
) -> web.Response:
    """A JSON response whose exact body bytes are signed."""
    body = encode_body(payload)
    return web.Response(
        body=body,
        status=status,
        headers={
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            SIGNATURE_HEADER: sign_body(private_key, body),
        },
    )


def bearer_matches(request: web.Request, token_sha256: str | None) -> bool:
    """True when the request carries the bearer token whose SHA-256 is ``token_sha256``."""
    if token_sha256 is None:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(hash_token(token), token_sha256)


def is_loopback(remote: str | None) -> bool:
    """Admin endpoints answer only to the machine itself."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def parse_usage_params(query: Mapping[str, str]) -> tuple[int, int]:
    """``after`` (default 0) and ``limit`` (default 500, capped at 1000) from a query."""

    def integer(name: str, default: int, minimum: int) -> int:
        raw = query.get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise UsageParamError(f"{name} must be a non-negative integer")
        value = int(raw)
        if value < minimum:
            raise UsageParamError(f"{name} must be at least {minimum}")
        return value

    return integer("after", 0, 0), min(integer("limit", USAGE_DEFAULT_LIMIT, 1), USAGE_MAX_LIMIT)


def now_rfc3339() -> str:
    return format_time(datetime.now(tz=UTC))


def info_payload(
    *,
    node_id: str,
    boot_id: str,
    journal_epoch: str,
    private_key: Ed25519PrivateKey,
    gpus: Sequence[GpuInfo],
) -> dict[str, object]:
    """Body of ``/v1/info``."""
    return {
        "protocol": PROTOCOL_VERSION,
        "node_id": node_id,
        "agent_version": AGENT_VERSION,
        "boot_id": boot_id,
        "journal_epoch": journal_epoch,
        "public_key": public_key_b64(private_key),
        "gpus": [gpu.to_wire() for gpu in gpus],
        "time": now_rfc3339(),
    }


async def gate(
    request: web.Request,
    *,
    token_sha256: str | None,
    faults: PendingFaults,
    private_key: Ed25519PrivateKey,
) -> web.Response | None:
    """Authenticate, then apply pending timeout/5xx faults (those aimed at this endpoint
    first); a response ends the request."""
    if not bearer_matches(request, token_sha256):
        return signed_response(private_key, {"error": "unauthorized"}, status=401)
    faults = faults.for_endpoint(request.path.rpartition("/v1/")[2])
    delay_ms = faults.take_timeout_ms()
    if delay_ms is not None:
        await asyncio.sleep(delay_ms / 1000)
    error_status = faults.take_error_status()
    if error_status is not None:
        return signed_response(private_key, {"error": "injected_fault"}, status=error_status)
    return None


@dataclass
class AgentService:
    """One agent's state behind the HTTP routes."""

    node_id: str
    private_key: Ed25519PrivateKey
    token_sha256: str | None
    recorder: Recorder
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    faults: PendingFaults = field(default_factory=PendingFaults)
    # (after, limit) of the last /v1/usage answer, replayed by the duplicate_page fault.
    last_usage_params: tuple[int, int] | None = None
    # The platform's receipt key; without it every inference request is refused.
    platform_key: Ed25519PublicKey | None = None
    # Where receipted requests go; None: this agent serves no inference (503).
    engine: Engine | None = None
    # The assignments accepted and the runtime converging to them (protocol v1.1).
    workloads: WorkloadSupervisor | None = None
    # Receipt records journaled and their tokens (the simulator's truth), kept in the
    # journal's meta with the records so a restart goes on counting.
    receipt_totals: dict[str, int] = field(init=False)

    META_RECEIPT_TOTALS = "receipt_totals"

    def __post_init__(self) -> None:
        saved = self.recorder.journal.get_meta(self.META_RECEIPT_TOTALS) or {}
        self.receipt_totals = {
            name: int(saved.get(name, 0)) for name in ("records", "input_tokens", "output_tokens")
        }

    def inference_node(self) -> InferenceNode:
        return InferenceNode(
            agent_public_key=public_key_b64(self.private_key),
            platform_key=self.platform_key,
            ledger=JournalReceiptLedger(self.recorder.journal),
            engine=self.engine,
            journal=self.journal_receipt,
        )

    def journal_receipt(self, served: ServedRequest) -> None:
        """Append the request's one record, on the node's first GPU (docs/gateway.md 6)."""
        fields = receipt_record_fields(served, gpu_uuid=self.recorder.inventory()[0].uuid)
        input_tokens, output_tokens = record_tokens(fields)
        totals = {
            "records": self.receipt_totals["records"] + 1,
            "input_tokens": self.receipt_totals["input_tokens"] + input_tokens,
            "output_tokens": self.receipt_totals["output_tokens"] + output_tokens,
        }
        self.recorder.journal.append([fields], meta={self.META_RECEIPT_TOTALS: totals})
        self.receipt_totals = totals

    def respond(self, payload: object, *, status: int = 200) -> web.Response:
        return signed_response(self.private_key, payload, status=status)

    def info(self) -> dict[str, object]:
        return info_payload(
            node_id=self.node_id,
            boot_id=self.boot_id,
            journal_epoch=self.recorder.journal.epoch,
            private_key=self.private_key,
            gpus=self.recorder.inventory(),
        )


SERVICE = web.AppKey("service", AgentService)
INFERENCE = web.AppKey("inference", InferenceNode)


async def _gate(request: web.Request) -> web.Response | None:
    service = request.app[SERVICE]
    return await gate(
        request,
        token_sha256=service.token_sha256,
        faults=service.faults,
        private_key=service.private_key,
    )


async def info_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    return service.respond(service.info())


async def health_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    gpus = [sample.to_wire() for sample in service.recorder.health()]
    return service.respond({"node_id": service.node_id, "gpus": gpus, "time": now_rfc3339()})


async def usage_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    try:
        after, limit = parse_usage_params(request.query)
    except UsageParamError as error:
        return service.respond({"error": "invalid_parameter", "detail": str(error)}, status=400)
    if service.last_usage_params is not None and service.faults.take_duplicate_page():
        after, limit = service.last_usage_params
    service.last_usage_params = (after, limit)
    page = service.recorder.journal.page(after=after, limit=limit).to_wire()
    if service.workloads is not None:
        page["assignments"] = service.workloads.usage_member(
            platform_digest=request.query.get(USAGE_WORKLOADS_PARAM)
        )
    return service.respond(page)


def offer_assignments(
    offer: Callable[[bytes, str | None], AssignmentSet], body: bytes, signature: str | None
) -> tuple[dict[str, object], int]:
    """Apply ``PUT /v1/assignments`` through ``offer``; the answer's payload and status."""
    try:
        accepted = offer(body, signature)
    except BadPlatformSignature:
        return {"error": "bad_platform_signature"}, 403
    except InvalidAssignments as error:
        return {"error": "invalid_assignments", "detail": str(error)}, 400
    except StaleGeneration as error:
        return {"error": "stale_generation", "generation": error.held}, 409
    return {"generation": accepted.generation, "accepted": True}, 200


async def assignments_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    if service.workloads is None:
        return service.respond({"error": "no_runtime"}, status=404)
    body = await request.read()
    signature = request.headers.get(PLATFORM_SIGNATURE_HEADER)
    payload, status = offer_assignments(service.workloads.offer, body, signature)
    return service.respond(payload, status=status)


async def workloads_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    if service.workloads is None:
        return service.respond({"generation": 0, "workloads": []})
    return service.respond(service.workloads.view().payload)


async def truth_view(request: web.Request) -> web.Response:
    if (early := await _gate(request)) is not None:
        return early
    service = request.app[SERVICE]
    recorder = service.recorder
    if not isinstance(recorder, SimulationRecorder):
        return service.respond({"error": "not_simulated"}, status=404)
    head_seq, _ = recorder.journal.head()
    return service.respond(
        truth_payload(
            node_id=service.node_id,
            journal_epoch=recorder.journal.epoch,
            head_seq=head_seq,
            gpu_totals=recorder.totals,
            time=now_rfc3339(),
            receipts=service.receipt_totals,
        )
    )


async def inference_view(request: web.Request) -> web.StreamResponse:
    return await serve_inference(request, request.app[INFERENCE], request.match_info["endpoint"])


async def engine_view(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    if not is_loopback(request.remote):
        return service.respond({"error": "forbidden"}, status=403)
    if not isinstance(service.engine, SimulatedEngine):
        return service.respond({"error": "not_simulated"}, status=404)
    return await serve_engine(request, service.engine, request.match_info["endpoint"])


async def faults_view(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if not is_loopback(request.remote):
        return service.respond({"error": "forbidden"}, status=403)
    try:
        fault = parse_fault_request(await request.json())
    except (FaultRequestError, json.JSONDecodeError) as error:
        return service.respond({"error": "invalid_fault", "detail": str(error)}, status=400)
    if fault.kind in ENGINE_FAULT_KINDS:
        if not isinstance(service.engine, SimulatedEngine):
            return service.respond({"error": "not_simulated"}, status=404)
        service.engine.faults.add(fault)
        return service.respond({"applied": fault.kind, "pending": service.engine.faults.to_json()})
    recorder = service.recorder
    if not isinstance(recorder, SimulationRecorder):
        return service.respond({"error": "not_simulated"}, status=404)
    if fault.kind == "restart":
        service.boot_id = str(uuid.uuid4())
    elif fault.kind == "counter_reset":
        recorder.node.force_counter_reset()
    elif fault.kind == "unassigned_busy":
        recorder.node.unassigned_busy_windows += fault.count
    else:
        service.faults.add(fault)
    return service.respond({"applied": fault.kind, "pending": service.faults.to_json()})


def create_app(service: AgentService) -> web.Application:
    """The agent's aiohttp application; it records windows while it serves."""
    app = web.Application()
    app[SERVICE] = service
    app[INFERENCE] = service.inference_node()
    app.router.add_get("/v1/info", info_view)
    app.router.add_get("/v1/health", health_view)
    app.router.add_get("/v1/usage", usage_view)
    app.router.add_put("/v1/assignments", assignments_view)
    app.router.add_get("/v1/workloads", workloads_view)
    app.router.add_get("/v1/_sim/truth", truth_view)
    app.router.add_post("/_admin/faults", faults_view)
    app.router.add_post(f"/v1/inference/{{endpoint:{ENDPOINT_PATTERN}}}", inference_view)
    app.router.add_post(f"/engine/v1/{{endpoint:{ENDPOINT_PATTERN}}}", engine_view)

    async def recording(app: web.Application) -> AsyncIterator[None]:
        service = app[SERVICE]
        tasks = [asyncio.create_task(service.recorder.run())]
        if service.workloads is not None:
            tasks.append(asyncio.create_task(service.workloads.run()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if service.workloads is not None:
            await service.workloads.runtime.close()

    app.cleanup_ctx.append(recording)

    async def close_engine(app: web.Application) -> None:
        engine = app[SERVICE].engine
        if isinstance(engine, HttpEngine):
            await engine.close()

    app.on_cleanup.append(close_engine)
    return app


async def serve(app: web.Application, *, host: str, port: int, banner: str) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down cleanly."""
    # Handlers are cancelled when their client leaves, so a relay abandoned mid-request
    # stops at once (and journals what was delivered) instead of waiting on its engine.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"{banner} listening on http://{host}:{port}", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
