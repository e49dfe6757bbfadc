"""The simulated runtime: deterministic workloads for the fleet and ``--runtime simulated``.

A workload's whole life is a function of when it was started and stopped and of the
settings: ``pending`` for ``pending_ms``, ``pulling`` for ``pull_ms``, then ``failed``
("pull failed ...") when its image (a deployment: its model) is in ``fail_images`` (the
buyer's fault for a container's image that does not exist, the node's for a catalogue
model),
else ``starting`` for ``start_ms`` and ``running``; once stopped, ``stopping`` for
``stop_ms``, ``stopped``, and gone after ``retention_ms``. Nothing runs in the
background and nothing is polled: ``status`` computes the states from the clock, so ten
thousand fleet nodes cost a few small objects each and no timers at all.

Each container port is published on ``host`` at ``FIRST_HOST_PORT + n``, ``n`` counting
the node's published ports in the order they were started; a deployment gets one port
for its inference endpoint. Spans (when a workload ran) are kept for the runtime's
life, because the fleet recomputes old usage records from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capacity.agent.assignments import Assignment
from capacity.agent.recorder import unix_ms_now
from capacity.agent.runtime.base import (
    BUYER_FAULT,
    FIRST_HOST_PORT,
    NODE_FAULT,
    STOPPED_RETENTION_MS,
    RunningSpan,
    WorkloadStatus,
)


@dataclass(frozen=True)
class SimulatedSettings:
    pending_ms: int = 0
    pull_ms: int = 1000
    start_ms: int = 1000
    stop_ms: int = 1000
    # Images (or deployment models) whose pull fails.
    fail_images: frozenset[str] = frozenset()
    retention_ms: int = STOPPED_RETENTION_MS
    # The node's address in connection details.
    host: str = "127.0.0.1"


@dataclass
class SimulatedWorkload:
    assignment: Assignment
    started_ms: int
    host_ports: dict[int, int]
    fails: bool
    stopped_ms: int | None = None


@dataclass
class SimulatedRuntime:
    settings: SimulatedSettings = field(default_factory=SimulatedSettings)
    version: int = 0
    workloads: dict[str, SimulatedWorkload] = field(default_factory=dict)
    # Spans of workloads started again under the same id (their first life).
    past_spans: list[RunningSpan] = field(default_factory=list)
    published_ports: int = 0

    # The fleet calls these directly (no event loop work); the agent through start/stop.

    def begin(self, assignment: Assignment, now_ms: int) -> None:
        previous = self.workloads.get(assignment.id)
        if previous is not None:
            if previous.stopped_ms is None:
                return  # already started: an assignment's content never changes under its id
            self.past_spans.extend(self._spans_of(previous))
        if assignment.kind == "deployment":
            wanted, subject = [0], assignment.model
        else:
            wanted, subject = list(assignment.ports), assignment.image
        host_ports = {}
        for port in wanted:
            host_ports[port] = FIRST_HOST_PORT + self.published_ports
            self.published_ports += 1
        self.workloads[assignment.id] = SimulatedWorkload(
            assignment=assignment,
            started_ms=now_ms,
            host_ports=host_ports,
            fails=subject in self.settings.fail_images,
        )
        self.version += 1

    def end(self, assignment_id: str, now_ms: int) -> None:
        workload = self.workloads.get(assignment_id)
        if workload is not None and workload.stopped_ms is None:
            workload.stopped_ms = now_ms
            self.version += 1

    async def start(self, assignment: Assignment) -> None:
        self.begin(assignment, unix_ms_now())

    async def stop(self, assignment_id: str) -> None:
        self.end(assignment_id, unix_ms_now())

    async def refresh(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _milestones(self, workload: SimulatedWorkload) -> tuple[int, int, int]:
        """When it starts pulling, stops pulling, and runs."""
        settings = self.settings
        pulling = workload.started_ms + settings.pending_ms
        pulled = pulling + settings.pull_ms
        return pulling, pulled, pulled + settings.start_ms

    def _status(self, workload: SimulatedWorkload, now_ms: int) -> WorkloadStatus | None:
        assignment = workload.assignment
        pulling, pulled, running = self._milestones(workload)
        stopped_ms = workload.stopped_ms
        if stopped_ms is not None and now_ms >= stopped_ms:
            failed_before_stop = workload.fails and stopped_ms >= pulled
            done_ms = stopped_ms if failed_before_stop else stopped_ms + self.settings.stop_ms
            if now_ms >= done_ms + self.settings.retention_ms:
                return None
            if now_ms < done_ms:
                return WorkloadStatus(assignment.id, "stopping", stopped_ms, assignment.gpus)
            return WorkloadStatus(assignment.id, "stopped", done_ms, assignment.gpus)
        if now_ms < pulling:
            return WorkloadStatus(assignment.id, "pending", workload.started_ms, assignment.gpus)
        if now_ms < pulled:
            return WorkloadStatus(assignment.id, "pulling", pulling, assignment.gpus)
        if workload.fails:
            subject = assignment.model if assignment.kind == "deployment" else assignment.image
            reason = f"pull failed: {subject}: manifest unknown"
            fault = NODE_FAULT if assignment.kind == "deployment" else BUYER_FAULT
            return WorkloadStatus(
                assignment.id, "failed", pulled, assignment.gpus, reason=reason, fault=fault
            )
        if now_ms < running:
            return WorkloadStatus(assignment.id, "starting", pulled, assignment.gpus)
        host = self.settings.host
        endpoint = ""
        ports = dict(workload.host_ports)
        if assignment.kind == "deployment":
            endpoint = f"http://{host}:{ports.pop(0)}/v1"
        return WorkloadStatus(
            assignment.id,
            "running",
            running,
            assignment.gpus,
            host=host,
            ports=ports,
            endpoint=endpoint,
        )

    def status(self, now_ms: int) -> list[WorkloadStatus]:
        statuses = (self._status(workload, now_ms) for workload in self.workloads.values())
        return sorted((s for s in statuses if s is not None), key=lambda s: s.id)

    def next_change_ms(self, now_ms: int) -> int | None:
        upcoming: list[int] = []
        for workload in self.workloads.values():
            pulling, pulled, running = self._milestones(workload)
            moments = [pulling, pulled] if workload.fails else [pulling, pulled, running]
            if workload.stopped_ms is not None:
                stop_done = workload.stopped_ms + self.settings.stop_ms
                if workload.fails and workload.stopped_ms >= pulled:
                    stop_done = workload.stopped_ms
                moments = [m for m in moments if m < workload.stopped_ms]
                moments += [stop_done, stop_done + self.settings.retention_ms]
            upcoming.extend(moment for moment in moments if moment > now_ms)
        return min(upcoming, default=None)

    def _spans_of(self, workload: SimulatedWorkload) -> list[RunningSpan]:
        if workload.fails:
            return []
        _, _, running = self._milestones(workload)
        end = workload.stopped_ms
        if end is not None and end <= running:
            return []
        return [RunningSpan(workload.assignment.id, workload.assignment.gpus, running, end)]

    def spans(self) -> list[RunningSpan]:
        spans = list(self.past_spans)
        for workload in self.workloads.values():
            spans.extend(self._spans_of(workload))
        return spans
