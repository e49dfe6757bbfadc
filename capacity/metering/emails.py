"""Emails metering sends to a partner's owners and admins. Called on commit, never inside."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mass_mail
from django.template.loader import render_to_string

from accounts.models import MANAGER_ROLES, Membership
from capacity.models import Node


def _recipients(node: Node) -> list[str]:
    return sorted(
        Membership.objects.filter(
            organization_id=node.site.organization_id, role__in=MANAGER_ROLES
        ).values_list("user__email", flat=True)
    )


def _send(template: str, *, node_id: int, context: dict[str, object]) -> int:
    node = Node.objects.select_related("site__organization").get(pk=node_id)
    recipients = _recipients(node)
    if not recipients:
        return 0
    context = {"node": node, "site": node.site, "site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"email/metering/{template}_subject.txt", context).strip()
    body = render_to_string(f"email/metering/{template}_message.txt", context)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "[Hashgrid] ")
    # One message per person: partners' staff do not see each other's addresses.
    messages = [(prefix + subject, body, None, [email]) for email in recipients]
    return send_mass_mail(messages, fail_silently=False)


def send_node_unreachable(*, node_id: int, since: object) -> int:
    return _send("node_unreachable", node_id=node_id, context={"since": since})


def send_node_recovered(*, node_id: int) -> int:
    return _send("node_recovered", node_id=node_id, context={})


def send_node_integrity_problem(*, node_id: int, problem: str) -> int:
    return _send("node_integrity", node_id=node_id, context={"problem": problem})
