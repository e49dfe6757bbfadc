"""Emails contracts sends to a buyer's members. Called on commit, never inside a
transaction, so a rolled-back change never mails anyone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail import send_mass_mail
from django.template.loader import render_to_string
from django.urls import reverse

from capacity.models import NodeWindow, WindowKind


def send_window_notice(
    *,
    window: NodeWindow,
    event: str,
    recipients: Sequence[str],
    contracts: Sequence[Any],
) -> int:
    """Tell a buyer's members of a window over their reserved GPUs (``window_notices``)."""
    site_url = settings.SITE_URL.rstrip("/")
    context = {
        "window": window,
        "event": event,
        "kind": WindowKind(window.kind).label,
        "is_maintenance": window.kind == WindowKind.MAINTENANCE,
        "contracts": [
            {
                "reference": contract.reference,
                "gpu_count": contract.gpu_count,
                "excluded": contract.excluded,
                "downtime": contract.downtime,
                "url": site_url + reverse("contracts:detail", args=[contract.contract_id]),
            }
            for contract in contracts
        ],
        "allowance_hours": settings.SLA_MAINTENANCE_ALLOWANCE_HOURS,
    }
    subject = render_to_string("email/contracts/window_notice_subject.txt", context).strip()
    body = render_to_string("email/contracts/window_notice_message.txt", context)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "[Hashgrid] ")
    # One message per person: members do not see each other's addresses.
    messages = [(prefix + subject, body, None, [email]) for email in recipients]
    return send_mass_mail(messages, fail_silently=False)
