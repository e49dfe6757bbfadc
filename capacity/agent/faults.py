"""Fault injection for simulated agents, so metering can be tested against bad days.

A fault request is JSON posted to a loopback-only admin endpoint::

    {"fault": "http_5xx", "count": 2, "status": 502}

``fault`` is one of:

- ``restart``: the agent restarts at once: new ``boot_id``, same journal, ``seq`` goes on.
- ``counter_reset``: every GPU's cumulative counters restart from zero in its next
  window; a correct agent still reports the true usage (the truth counts the reset).
- ``unassigned_busy``: for the node's next ``count`` windows, every GPU that no
  assignment covers is busy anyway (work nobody assigned); the agent can only report
  that busy time as ``idle``, and the platform must quarantine it.
- ``duplicate_page``: the next ``count`` calls to ``/v1/usage`` answer the previous
  usage request again (its ``after`` and ``limit``), whatever they ask for: the same
  records, and the same bytes and signature unless the head moved meanwhile (bodies
  are canonical and Ed25519 signatures deterministic, so nothing needs storing).
- ``timeout``: the next ``count`` authorized requests wait ``delay_ms`` (default
  30000) before answering, longer than a poller's read timeout.
- ``http_5xx``: the next ``count`` authorized requests answer ``status`` (default 503).

``timeout`` and ``http_5xx`` take an optional ``endpoint`` (``info``, ``health``,
``usage``, ``workloads``, ``assignments``): then only that endpoint's requests meet
them, e.g. an agent that answers its polls but not ``PUT /v1/assignments``.

Faults of the simulated inference engine (``capacity.agent.engine``) act on its next
``count`` requests, whoever sends them (the agent's relay or a direct call):

- ``engine_refuse``: answer 503 with an OpenAI-shaped error.
- ``engine_stall``: send nothing at all (not even headers) for ``delay_ms``, then answer.
- ``engine_cut``: close the connection after ``after_tokens`` tokens (default 1), with
  no final chunk, no usage and no ``[DONE]``; a non-streaming answer is cut before any byte.
- ``engine_misreport``: every ``usage`` it reports is multiplied by ``factor`` (default
  2, a decimal string or number, rounded down): the agent relays what the engine says,
  bounded by the receipt.

``count`` defaults to 1. Faults act only after authentication, so a 401 stays a 401.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation

ENGINE_FAULT_KINDS = ("engine_refuse", "engine_stall", "engine_cut", "engine_misreport")
FAULT_KINDS = (
    "restart",
    "counter_reset",
    "unassigned_busy",
    "duplicate_page",
    "timeout",
    "http_5xx",
    *ENGINE_FAULT_KINDS,
)
# Endpoints a ``timeout`` or ``http_5xx`` fault may be aimed at.
FAULT_ENDPOINTS = ("info", "health", "usage", "workloads", "assignments")
# Largest usage multiplier engine_misreport takes.
MAX_MISREPORT_FACTOR = Decimal(1000)


class FaultRequestError(ValueError):
    """The admin request does not describe a fault."""


@dataclass(frozen=True)
class FaultRequest:
    kind: str
    count: int = 1
    delay_ms: int = 30_000
    status: int = 503
    # engine_cut: tokens sent before the engine closes the connection.
    after_tokens: int = 1
    # engine_misreport: multiplier applied to every usage figure the engine reports.
    factor: Decimal = field(default_factory=lambda: Decimal(2))
    # timeout, http_5xx: only this endpoint's requests ('' = any request).
    endpoint: str = ""


def _factor_field(payload: Mapping[str, object]) -> Decimal:
    """``factor`` as a Decimal in [0, 1000]; floats go through ``str`` so 1.1 stays 1.1."""
    value = payload.get("factor", 2)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FaultRequestError("factor must be a number")
    try:
        factor = Decimal(str(value))
    except InvalidOperation as error:
        raise FaultRequestError("factor must be a number") from error
    if not factor.is_finite() or not 0 <= factor <= MAX_MISREPORT_FACTOR:
        raise FaultRequestError(f"factor must be in [0, {MAX_MISREPORT_FACTOR}]")
    return factor


def _int_field(payload: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    value = payload.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FaultRequestError(f"{name} must be an integer in [{low}, {high}]")
    return value


def parse_fault_request(payload: object) -> FaultRequest:
    """Validate an admin request body into a ``FaultRequest``."""
    if not isinstance(payload, Mapping):
        raise FaultRequestError("body must be a JSON object")
    kind = payload.get("fault")
    if kind not in FAULT_KINDS:
        raise FaultRequestError(f"fault must be one of {', '.join(FAULT_KINDS)}")
    endpoint = payload.get("endpoint", "")
    if endpoint and (kind not in ("timeout", "http_5xx") or endpoint not in FAULT_ENDPOINTS):
        raise FaultRequestError(
            f"endpoint applies to timeout and http_5xx: one of {', '.join(FAULT_ENDPOINTS)}"
        )
    return FaultRequest(
        kind=str(kind),
        count=_int_field(payload, "count", 1, 1, 1_000_000),
        delay_ms=_int_field(payload, "delay_ms", 30_000, 0, 3_600_000),
        status=_int_field(payload, "status", 503, 500, 599),
        after_tokens=_int_field(payload, "after_tokens", 1, 0, 10_000_000),
        factor=_factor_field(payload),
        endpoint=str(endpoint),
    )


@dataclass
class PendingFaults:
    """Per-request faults still to be served by one agent."""

    duplicate_pages: int = 0
    timeouts: int = 0
    timeout_delay_ms: int = 30_000
    errors: int = 0
    error_status: int = 503
    # Faults aimed at one endpoint's requests only (``FaultRequest.endpoint``).
    by_endpoint: dict[str, PendingFaults] = field(default_factory=dict)

    def add(self, request: FaultRequest) -> None:
        """Queue a per-request fault (the node's own faults act on its windows instead)."""
        if request.endpoint:
            aimed = self.by_endpoint.setdefault(request.endpoint, PendingFaults())
            aimed.add(replace(request, endpoint=""))
            return
        if request.kind == "duplicate_page":
            self.duplicate_pages += request.count
        elif request.kind == "timeout":
            self.timeouts += request.count
            self.timeout_delay_ms = request.delay_ms
        elif request.kind == "http_5xx":
            self.errors += request.count
            self.error_status = request.status

    def for_endpoint(self, endpoint: str) -> PendingFaults:
        """The faults a request to ``endpoint`` meets first: those aimed at it while any
        are pending, else the node's."""
        aimed = self.by_endpoint.get(endpoint)
        if aimed is not None and (aimed.timeouts or aimed.errors):
            return aimed
        return self

    def take_timeout_ms(self) -> int | None:
        if self.timeouts <= 0:
            return None
        self.timeouts -= 1
        return self.timeout_delay_ms

    def take_error_status(self) -> int | None:
        if self.errors <= 0:
            return None
        self.errors -= 1
        return self.error_status

    def take_duplicate_page(self) -> bool:
        if self.duplicate_pages <= 0:
            return False
        self.duplicate_pages -= 1
        return True

    def to_json(self) -> dict[str, int]:
        return {
            "duplicate_pages": self.duplicate_pages,
            "timeouts": self.timeouts,
            "timeout_delay_ms": self.timeout_delay_ms,
            "errors": self.errors,
            "error_status": self.error_status,
        }


@dataclass
class EngineFaults:
    """Faults still to be served by one simulated engine, each for its next requests."""

    refusals: int = 0
    stalls: int = 0
    stall_ms: int = 30_000
    cuts: int = 0
    cut_after_tokens: int = 1
    misreports: int = 0
    misreport_factor: Decimal = field(default_factory=lambda: Decimal(2))

    def add(self, request: FaultRequest) -> None:
        if request.kind == "engine_refuse":
            self.refusals += request.count
        elif request.kind == "engine_stall":
            self.stalls += request.count
            self.stall_ms = request.delay_ms
        elif request.kind == "engine_cut":
            self.cuts += request.count
            self.cut_after_tokens = request.after_tokens
        elif request.kind == "engine_misreport":
            self.misreports += request.count
            self.misreport_factor = request.factor

    def take(self) -> EngineRequestFaults:
        """The faults one request meets; each pending fault is used up by one request."""
        if not (self.refusals or self.stalls or self.cuts or self.misreports):
            return NO_ENGINE_FAULTS
        refuse = self.refusals > 0
        self.refusals -= int(refuse)
        stall_ms = None
        if self.stalls > 0:
            self.stalls -= 1
            stall_ms = self.stall_ms
        cut_after_tokens = None
        if self.cuts > 0:
            self.cuts -= 1
            cut_after_tokens = self.cut_after_tokens
        factor = None
        if self.misreports > 0:
            self.misreports -= 1
            factor = self.misreport_factor
        return EngineRequestFaults(
            refuse=refuse,
            stall_ms=stall_ms,
            cut_after_tokens=cut_after_tokens,
            misreport_factor=factor,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "refusals": self.refusals,
            "stalls": self.stalls,
            "stall_ms": self.stall_ms,
            "cuts": self.cuts,
            "cut_after_tokens": self.cut_after_tokens,
            "misreports": self.misreports,
            "misreport_factor": str(self.misreport_factor),
        }


@dataclass(frozen=True)
class EngineRequestFaults:
    """What goes wrong with one engine request (``None``: that fault is not pending)."""

    refuse: bool = False
    stall_ms: int | None = None
    cut_after_tokens: int | None = None
    misreport_factor: Decimal | None = None


NO_ENGINE_FAULTS = EngineRequestFaults()
