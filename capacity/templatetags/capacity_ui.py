"""Template helpers for the partner pages."""

from __future__ import annotations

from django import template

from capacity.models import NodeStatus

register = template.Library()

_STATUS_BADGES = {
    NodeStatus.PENDING: "badge-neutral",
    NodeStatus.ONLINE: "badge-success",
    NodeStatus.DEGRADED: "badge-warning",
    NodeStatus.UNREACHABLE: "badge-danger",
    NodeStatus.MAINTENANCE: "badge-info",
    NodeStatus.CURTAILED: "badge-info",
    NodeStatus.RETIRED: "badge-neutral",
}


@register.filter
def node_status_badge(status: str) -> str:
    """Badge modifier class for a node status, e.g. ``online`` → ``badge-success``."""
    return _STATUS_BADGES.get(status, "badge-neutral")  # type: ignore[call-overload]
