"""The agent's HTTP server (aiohttp): ``/v1/info``, ``/v1/health``, ``/v1/usage``.

Every response body, errors included, is canonical JSON signed with the agent's key
(``X-Agent-Signature``). Every ``/v1`` route needs ``Authorization: Bearer <poll
token>``; the agent compares the token's SHA-256 with the one it keeps and otherwise
answers 401 with nothing but an error code. In simulate mode ``/v1/_sim/truth`` serves
the ground truth and ``POST /_admin/faults`` (loopback only, see ``faults``) injects
faults. The helpers here are shared with the fleet simulator.
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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent import AGENT_VERSION
from capacity.agent.faults import FaultRequestError, PendingFaults, parse_fault_request
from capacity.agent.protocol import (
    PROTOCOL_VERSION,
    SIGNATURE_HEADER,
    GpuInfo,
    encode_body,
    format_time,
    hash_token,
    public_key_b64,
    sign_body,
)
from capacity.agent.recorder import Recorder, SimulationRecorder
from capacity.agent.simulator import truth_payload

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
    """Authenticate, then apply pending timeout/5xx faults; a response ends the request."""
    if not bearer_matches(request, token_sha256):
        return signed_response(private_key, {"error": "unauthorized"}, status=401)
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
    page = service.recorder.journal.page(after=after, limit=limit)
    return service.respond(page.to_wire())


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
        )
    )


async def faults_view(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if not is_loopback(request.remote):
        return service.respond({"error": "forbidden"}, status=403)
    recorder = service.recorder
    if not isinstance(recorder, SimulationRecorder):
        return service.respond({"error": "not_simulated"}, status=404)
    try:
        fault = parse_fault_request(await request.json())
    except (FaultRequestError, json.JSONDecodeError) as error:
        return service.respond({"error": "invalid_fault", "detail": str(error)}, status=400)
    if fault.kind == "restart":
        service.boot_id = str(uuid.uuid4())
    elif fault.kind == "counter_reset":
        recorder.node.force_counter_reset()
    else:
        service.faults.add(fault)
    return service.respond({"applied": fault.kind, "pending": service.faults.to_json()})


def create_app(service: AgentService) -> web.Application:
    """The agent's aiohttp application; it records windows while it serves."""
    app = web.Application()
    app[SERVICE] = service
    app.router.add_get("/v1/info", info_view)
    app.router.add_get("/v1/health", health_view)
    app.router.add_get("/v1/usage", usage_view)
    app.router.add_get("/v1/_sim/truth", truth_view)
    app.router.add_post("/_admin/faults", faults_view)

    async def recording(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(app[SERVICE].recorder.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(recording)
    return app


async def serve(app: web.Application, *, host: str, port: int, banner: str) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down cleanly."""
    runner = web.AppRunner(app, access_log=None)
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
