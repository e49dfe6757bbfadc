"""The runtime interface and the workload states ``GET /v1/workloads`` reports.

A runtime is told to ``start`` an assignment and to ``stop`` one by id, and says what it
knows through ``status`` (a snapshot, cheap and synchronous: the HTTP handlers and the
usage recorder call it) and ``spans`` (when each workload was running, so usage records
name the assignment that held a GPU). Slow work (pulling an image, polling a container)
happens in ``start`` and ``refresh``, which the agent's supervisor awaits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from capacity.agent.assignments import Assignment
from capacity.agent.protocol import format_time, time_from_unix

WORKLOAD_STATES = ("pending", "pulling", "starting", "running", "stopping", "stopped", "failed")
# Whose fault a workload that ended on its own was (docs/workloads.md "Whose fault"): the
# node's (it could not run what was asked) or the buyer's (their image, their process).
NODE_FAULT, BUYER_FAULT = "node", "buyer"
# How long a workload the platform removed stays listed as stopped (then its id is gone):
# long enough for a platform polling every minute to read when it stopped.
STOPPED_RETENTION_MS = 300_000
# Buyers' container ports are published on the node from this port up.
FIRST_HOST_PORT = 40000


@dataclass(frozen=True)
class WorkloadStatus:
    """One assignment's state on the node: the wire's workload entry."""

    id: str
    state: str
    # Unix ms at which the workload entered ``state``.
    since_ms: int
    gpus: tuple[str, ...]
    # Why it failed (or stopped on its own), and whose fault that was; empty otherwise.
    reason: str = ""
    fault: str = ""
    # Connection details, filled only while running: address, container port -> host
    # port, and the inference endpoint of a deployment.
    host: str = ""
    ports: Mapping[int, int] = field(default_factory=dict)
    endpoint: str = ""

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "since": format_time(time_from_unix(self.since_ms // 1000)),
            "reason": self.reason,
            "fault": self.fault,
            "gpus": list(self.gpus),
            "connection": {
                "host": self.host,
                "ports": {str(port): host_port for port, host_port in sorted(self.ports.items())},
                "endpoint": self.endpoint,
            },
        }


@dataclass(frozen=True)
class RunningSpan:
    """An assignment running on its GPUs from ``start_ms`` until ``end_ms`` (None: still)."""

    assignment_id: str
    gpus: tuple[str, ...]
    start_ms: int
    end_ms: int | None

    def overlap_ms(self, start_ms: int, end_ms: int) -> int:
        until = end_ms if self.end_ms is None else min(end_ms, self.end_ms)
        return max(0, until - max(start_ms, self.start_ms))


def covering_assignment(
    spans: list[RunningSpan], gpu_uuid: str, start_ms: int, end_ms: int
) -> tuple[str, int] | None:
    """The assignment that ran longest on ``gpu_uuid`` in ``[start_ms, end_ms)`` and for how
    many ms, or None when none ran there."""
    best: tuple[str, int] | None = None
    for span in spans:
        if gpu_uuid in span.gpus:
            overlap = span.overlap_ms(start_ms, end_ms)
            if overlap > 0 and (best is None or overlap > best[1]):
                best = (span.assignment_id, overlap)
    return best


class Runtime(Protocol):
    """What the agent's supervisor needs from a container runtime, real or simulated."""

    # Increases whenever ``status`` may have changed other than by the clock alone.
    version: int

    async def start(self, assignment: Assignment) -> None:
        """Begin running ``assignment`` (pull, create, start); progress shows in ``status``."""

    async def stop(self, assignment_id: str) -> None:
        """Stop and remove the assignment's workload; it shows as stopped for a while."""

    def status(self, now_ms: int) -> list[WorkloadStatus]:
        """Every workload the runtime knows, by id."""

    def next_change_ms(self, now_ms: int) -> int | None:
        """When ``status`` will next change by the clock alone (None: not by the clock)."""

    def spans(self) -> list[RunningSpan]:
        """When the workloads ran, recent ones included, for stamping usage records."""

    async def refresh(self) -> None:
        """Look at the runtime again (containers that exited, pulls that finished)."""

    async def close(self) -> None: ...
