"""Helpers for workload tests: what an agent reports, fed through the hook the sweep
calls after a poll (``capacity.metering.assignments.apply_reports``)."""

from __future__ import annotations

from datetime import UTC, datetime

from capacity.metering.assignments import AssignmentReport, apply_reports
from contracts.models import NodeAssignments, Workload

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5 buyer@laptop"
PYTORCH = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
HOST = "203.0.113.7"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_reports(
    workload: Workload,
    *,
    state: str,
    since: datetime,
    now: datetime,
    reason: str = "",
    fault: str = "",
    ports: dict[str, int] | None = None,
) -> None:
    """The node's agent took the latest generation and reports ``workload`` in ``state``
    since ``since`` (running: reachable at ``HOST`` on ``ports``), as a poll at ``now``
    would bring it back."""
    generation = NodeAssignments.objects.get(node_id=workload.node_id).generation
    item = {
        "id": workload.public_id,
        "state": state,
        "since": _rfc3339(since),
        "reason": reason,
        "fault": fault,
        "gpus": sorted(workload.gpus.values_list("uuid", flat=True)),
        "connection": {"host": HOST, "ports": ports or {}, "endpoint": ""}
        if state == "running"
        else {},
    }
    apply_reports(
        reports=[
            AssignmentReport(
                node_id=workload.node_id,
                polled_at=now,
                agent_generation=generation,
                agent_digest=f"digest-{generation}-{state}",
                workloads=[item],
            )
        ],
        now=now,
    )
