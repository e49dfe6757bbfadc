"""Fault injection for simulated agents, so metering can be tested against bad days.

A fault request is JSON posted to a loopback-only admin endpoint::

    {"fault": "http_5xx", "count": 2, "status": 502}

``fault`` is one of:

- ``restart``: the agent restarts at once: new ``boot_id``, same journal, ``seq`` goes on.
- ``counter_reset``: every GPU's cumulative counters restart from zero in its next
  window; a correct agent still reports the true usage (the truth counts the reset).
- ``duplicate_page``: the next ``count`` calls to ``/v1/usage`` answer the previous
  usage request again (its ``after`` and ``limit``), whatever they ask for: the same
  records, and the same bytes and signature unless the head moved meanwhile (bodies
  are canonical and Ed25519 signatures deterministic, so nothing needs storing).
- ``timeout``: the next ``count`` authorized requests wait ``delay_ms`` (default
  30000) before answering, longer than a poller's read timeout.
- ``http_5xx``: the next ``count`` authorized requests answer ``status`` (default 503).

``count`` defaults to 1. Faults act only after authentication, so a 401 stays a 401.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FAULT_KINDS = ("restart", "counter_reset", "duplicate_page", "timeout", "http_5xx")


class FaultRequestError(ValueError):
    """The admin request does not describe a fault."""


@dataclass(frozen=True)
class FaultRequest:
    kind: str
    count: int = 1
    delay_ms: int = 30_000
    status: int = 503


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
    return FaultRequest(
        kind=str(kind),
        count=_int_field(payload, "count", 1, 1, 1_000_000),
        delay_ms=_int_field(payload, "delay_ms", 30_000, 0, 3_600_000),
        status=_int_field(payload, "status", 503, 500, 599),
    )


@dataclass
class PendingFaults:
    """Per-request faults still to be served by one agent."""

    duplicate_pages: int = 0
    timeouts: int = 0
    timeout_delay_ms: int = 30_000
    errors: int = 0
    error_status: int = 503

    def add(self, request: FaultRequest) -> None:
        """Queue a per-request fault (``restart`` and ``counter_reset`` act at once)."""
        if request.kind == "duplicate_page":
            self.duplicate_pages += request.count
        elif request.kind == "timeout":
            self.timeouts += request.count
            self.timeout_delay_ms = request.delay_ms
        elif request.kind == "http_5xx":
            self.errors += request.count
            self.error_status = request.status

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
