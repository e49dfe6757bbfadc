"""Template helpers for the partner pages."""

from __future__ import annotations

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

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


@register.simple_tag
def node_status(node: object) -> str:
    """The node's status badge. A node enrolled but never polled yet reads "Awaiting first
    poll" (neutral) rather than a red "Unreachable": nothing has failed yet."""
    status = getattr(node, "status", "")
    if (
        status == NodeStatus.UNREACHABLE
        and getattr(node, "enrolled_at", None) is not None
        and getattr(node, "last_successful_poll_at", None) is None
    ):
        return mark_safe('<span class="badge badge-neutral">Awaiting first poll</span>')
    return format_html(
        '<span class="badge {}">{}</span>',
        node_status_badge(status),
        node.get_status_display(),  # type: ignore[attr-defined]
    )
