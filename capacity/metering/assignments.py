"""Assignments on the polls metering already makes (docs/workloads.md "Cheap polling").

Before a batch is polled, the contracts app says per node (``load_plans``, through the
hook ``ContractsConfig.ready`` registers; metering never imports contracts):

- which assignments cover which GPUs when (``AssignmentCover``): validation quarantines
  busy time or tokens no assignment covers (``unassigned``);
- the signed body to ``PUT /v1/assignments`` when the node's desired generation is
  higher than the one its agent last reported and no backoff holds it back;
- the digest of the workload list last read.

The poll (``polling.poll_node``) sends the digest last read with its first usage request
and reads the agent's ``{generation, digest}`` from the answer, which embeds the
workloads list itself when the digest changed; it pushes only when the agent holds an
older generation (``GET /v1/workloads`` only for agents that do not embed the list). After the batch stored its pages, what was
found goes back to contracts (``apply_reports``): the generation the agent holds, the
push's result (backoff while it fails), the workloads' states; and for a node whose poll
failed, that it failed, so contracts can mark its instances lost. A poll that learnt
nothing (``AssignmentReport.is_news``: no push, no read, no other generation, no
failure), most polls, is not passed on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from capacity.agent.assignments import workloads_digest
from capacity.metering.validation import AssignmentCover


@dataclass(frozen=True)
class AssignmentPush:
    """A signed ``PUT /v1/assignments`` body for one node."""

    generation: int
    body: bytes
    signature: str


# The digest of an empty workloads list: what an agent that runs nothing reports.
EMPTY_WORKLOADS_DIGEST = workloads_digest([])


@dataclass(frozen=True)
class NodeAssignmentPlan:
    """What one node's poll does about assignments."""

    covers: Mapping[str, AssignmentCover] = field(default_factory=dict)
    push: AssignmentPush | None = None
    # Digest of the workloads list last read ('' = read it on the next poll). A node the
    # platform never assigned anything is expected to list nothing, so an agent that
    # reports the empty list's digest is not asked for it (10,000 idle nodes, no reads).
    digest: str = EMPTY_WORKLOADS_DIGEST
    # The generation the platform last knew the agent to hold (0: none).
    agent_generation: int = 0


@dataclass
class AssignmentReport:
    """What one poll found about a node's assignments."""

    node_id: int
    polled_at: datetime
    # The poll failed (no usage answer): nothing below was learnt.
    poll_failed: bool = False
    # From the usage answer: the generation and digest the agent holds (None: not said);
    # once ``workloads`` is read, the digest of that list instead.
    agent_generation: int | None = None
    agent_digest: str | None = None
    # The push: the generation sent, and '' when accepted or why it failed.
    pushed_generation: int | None = None
    push_error: str = ""
    # The verified ``workloads`` list when read: embedded in the usage answer, or from
    # ``GET /v1/workloads`` (agents that do not embed it).
    workloads: list[object] | None = None

    def is_news(self, plan: NodeAssignmentPlan) -> bool:
        """Whether contracts must hear of this poll: it failed, pushed, read the
        workloads, or found the agent at another generation than the platform knew (newer,
        or older: an agent that lost its state holds 0 and must be told again). Most polls
        find none of it, and cost the database nothing here."""
        return (
            self.poll_failed
            or self.pushed_generation is not None
            or self.workloads is not None
            or (
                self.agent_generation is not None and self.agent_generation != plan.agent_generation
            )
        )


PlanLoader = Callable[..., dict[int, NodeAssignmentPlan]]
ReportApplier = Callable[..., None]
_loader: PlanLoader | None = None
_applier: ReportApplier | None = None


def register(*, load_plans: PlanLoader, apply_reports: ReportApplier) -> None:
    """Called once by the contracts app at start-up."""
    global _loader, _applier
    _loader, _applier = load_plans, apply_reports


def load_plans(*, node_ids: Sequence[int], now: datetime) -> dict[int, NodeAssignmentPlan]:
    """Each node's plan (absent: no assignments, nothing to push, digest unknown)."""
    if _loader is None:
        return {}
    return _loader(node_ids=node_ids, now=now)


def apply_reports(*, reports: Sequence[AssignmentReport], now: datetime) -> None:
    if _applier is not None and reports:
        _applier(reports=reports, now=now)
