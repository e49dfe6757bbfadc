"""The agent's workload supervisor: accepts assignments and converges the runtime to them.

``offer`` applies the wire's rules to a ``PUT /v1/assignments`` body (signature, shape,
this agent, generation) and writes an accepted set to disk before it returns, so the
answer the platform gets is a promise that survives a restart. ``run`` is the converge
loop (one asyncio task): it starts what is assigned and not started, stops what was
started and is no longer assigned, and lets the runtime look at its workloads, at once
after each accepted set and every ``REFRESH_SECONDS`` otherwise. On start the supervisor
reloads the accepted set from disk, so the loop's first pass converges to it.

``workloads`` is the body of ``GET /v1/workloads``; it and its digest (for ``/v1/usage``)
are cached until the runtime changes or its clock-driven next change comes, so a poll
costs a comparison. A usage answer embeds the list itself when the platform's digest
(the query's ``workloads``) is another (``usage_member``). ``coverage`` tells the usage
recorder which assignment held a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from capacity.agent.assignments import (
    EMPTY_SET,
    AssignmentSet,
    AssignmentStore,
    BadPlatformSignature,
    InvalidAssignments,
    is_repeat,
    parse_assignments,
    workloads_digest,
)
from capacity.agent.recorder import unix_ms_now
from capacity.agent.runtime.base import Runtime, WorkloadStatus, covering_assignment

REFRESH_SECONDS = 1.0


@dataclass
class WorkloadView:
    """``/v1/workloads``'s body and digest, cached while nothing can have changed."""

    payload: dict[str, object]
    digest: str
    runtime_version: int
    generation: int
    valid_until_ms: int | None


def workloads_view(
    *, generation: int, statuses: list[WorkloadStatus], version: int, next_change_ms: int | None
) -> WorkloadView:
    workloads = [status.to_wire() for status in statuses]
    return WorkloadView(
        payload={"generation": generation, "workloads": workloads},
        digest=workloads_digest(workloads),
        runtime_version=version,
        generation=generation,
        valid_until_ms=next_change_ms,
    )


# The view of an agent that never accepted any assignment.
EMPTY_VIEW = workloads_view(generation=0, statuses=[], version=0, next_change_ms=None)


def usage_member(view: WorkloadView, *, platform_digest: str | None) -> dict[str, object]:
    """The ``assignments`` member of a ``/v1/usage`` answer: the generation and the
    digest, plus the ``workloads`` list itself when the platform said it holds another
    digest (``platform_digest``, the query's ``workloads``: empty when it holds none;
    None, not asked, from platforms before the parameter), so the platform never has to
    ``GET /v1/workloads`` to learn what moved."""
    member: dict[str, object] = {"generation": view.generation, "digest": view.digest}
    if platform_digest is not None and platform_digest != view.digest:
        member["workloads"] = view.payload["workloads"]
    return member


class CachedWorkloads:
    """The view of one runtime at one generation, rebuilt only when it may differ."""

    def __init__(self) -> None:
        self._view: WorkloadView | None = None

    def get(self, runtime: Runtime, generation: int, now_ms: int) -> WorkloadView:
        view = self._view
        if (
            view is None
            or view.runtime_version != runtime.version
            or view.generation != generation
            or (view.valid_until_ms is not None and now_ms >= view.valid_until_ms)
        ):
            view = self._view = workloads_view(
                generation=generation,
                statuses=runtime.status(now_ms),
                version=runtime.version,
                next_change_ms=runtime.next_change_ms(now_ms),
            )
        return view


@dataclass
class WorkloadSupervisor:
    runtime: Runtime
    store: AssignmentStore | None
    platform_key: Ed25519PublicKey | None
    agent_public_key: str
    gpu_uuids: list[str]
    # The platform's id for this node when the agent knows it (enrolled); None: unchecked.
    platform_node_id: int | None = None
    held: AssignmentSet = EMPTY_SET
    # Assignment ids handed to the runtime and not stopped since.
    started: set[str] = field(default_factory=set)
    cache: CachedWorkloads = field(default_factory=CachedWorkloads)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def load(self) -> None:
        """Take back the set accepted before a restart (checked again, as when it came)."""
        saved = self.store.load() if self.store is not None else None
        if saved is None:
            return
        if self.platform_key is None:
            print("warning: saved assignments ignored: no platform key", file=sys.stderr)
            return
        body, signature = saved
        try:
            self.held = self._parse(body, signature)
        except (InvalidAssignments, BadPlatformSignature) as error:
            print(f"warning: saved assignments ignored: {error}", file=sys.stderr)

    def _parse(self, body: bytes, signature: str | None) -> AssignmentSet:
        if self.platform_key is None:
            raise BadPlatformSignature("this agent has no platform key")
        return parse_assignments(
            body,
            signature,
            platform_key=self.platform_key,
            agent_public_key=self.agent_public_key,
            gpu_uuids=self.gpu_uuids,
            node_id=self.platform_node_id,
        )

    def offer(self, body: bytes, signature: str | None) -> AssignmentSet:
        """Accept a new desired state, written to disk before this returns.

        Raises ``BadPlatformSignature``, ``InvalidAssignments`` or ``StaleGeneration``
        with nothing changed.
        """
        offered = self._parse(body, signature)
        if is_repeat(self.held, offered):
            return self.held
        if self.store is not None:
            self.store.save(offered)
        self.held = offered
        self._wake.set()
        return offered

    async def converge(self) -> None:
        desired = self.held.by_id
        for assignment_id in sorted(self.started - desired.keys()):
            await self.runtime.stop(assignment_id)
            self.started.discard(assignment_id)
        for assignment_id, assignment in sorted(desired.items()):
            if assignment_id not in self.started:
                await self.runtime.start(assignment)
                self.started.add(assignment_id)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.converge()
            await self.runtime.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=REFRESH_SECONDS)

    def view(self, now_ms: int | None = None) -> WorkloadView:
        return self.cache.get(self.runtime, self.held.generation, now_ms or unix_ms_now())

    def usage_member(self, *, platform_digest: str | None) -> dict[str, object]:
        """The ``assignments`` member of ``/v1/usage`` answers (``usage_member``)."""
        return usage_member(self.view(), platform_digest=platform_digest)

    def coverage(self, gpu_uuid: str, start_ms: int, end_ms: int) -> tuple[str, int] | None:
        return covering_assignment(self.runtime.spans(), gpu_uuid, start_ms, end_ms)
