"""Which node serves a request: least outstanding requests among healthy nodes.

Ties go to the node picked least recently (round robin among equals), so the order is
deterministic for a given sequence of requests.

Each gateway process counts the requests it has in flight per node and keeps a circuit
breaker per node: ``FAILURES_TO_OPEN`` consecutive failures (refused connection, 5xx,
timeout, an agent refusing its receipt) set the node aside for ``cooldown_s``; then one
request is let through as a probe, and its outcome closes the breaker or opens it again.
Routes come from the catalog (nodes opted in, serving, not in a maintenance or
curtailment window); state is in memory, per process, on purpose: it is about what this
process saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.catalog import NodeRoute


@dataclass(slots=True)
class NodeHealth:
    outstanding: int = 0
    consecutive_failures: int = 0
    # Monotonic time until which the node is set aside; 0 = closed.
    open_until: float = 0.0
    probing: bool = False
    # Sequence number of the last time this node was picked (0 = never).
    last_picked: int = 0


class Router:
    def __init__(self, *, failures_to_open: int, cooldown_s: float) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._health: dict[int, NodeHealth] = {}
        self._picks = 0

    def health(self, node_id: int) -> NodeHealth:
        health = self._health.get(node_id)
        if health is None:
            health = self._health[node_id] = NodeHealth()
        return health

    def candidates(
        self, routes: tuple[NodeRoute, ...], *, exclude: set[int], now: float, wall: float
    ) -> list[NodeRoute]:
        """Usable nodes, best first (least outstanding, then least recently picked)."""
        usable: list[tuple[int, int, int, NodeRoute]] = []
        for position, route in enumerate(routes):
            if route.node_id in exclude or (route.blocked and route.is_blocked(wall)):
                continue
            health = self.health(route.node_id)
            if health.open_until and (now < health.open_until or health.probing):
                continue
            usable.append((health.outstanding, health.last_picked, position, route))
        usable.sort(key=lambda item: item[:3])
        return [item[3] for item in usable]

    def acquire(self, node_id: int) -> None:
        health = self.health(node_id)
        health.outstanding += 1
        self._picks += 1
        health.last_picked = self._picks
        if health.open_until and time.monotonic() >= health.open_until:
            health.probing = True

    def release(self, node_id: int, *, ok: bool | None) -> None:
        """End of an attempt: ``ok`` None when the outcome says nothing about the node."""
        health = self.health(node_id)
        health.outstanding -= 1
        if ok is None:
            health.probing = False
            return
        if ok:
            health.consecutive_failures = 0
            health.open_until = 0.0
            health.probing = False
            return
        health.consecutive_failures += 1
        if health.probing or health.consecutive_failures >= self.failures_to_open:
            health.open_until = time.monotonic() + self.cooldown_s
        health.probing = False

    def is_open(self, node_id: int) -> bool:
        return self.health(node_id).open_until > 0
