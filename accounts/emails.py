"""Emails the marketplace sends. Called on commit by services, never inside a transaction."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import Invitation


def absolute_url(path: str) -> str:
    return settings.SITE_URL.rstrip("/") + path


def send_invitation(*, invitation: Invitation, token: str) -> None:
    """Email the invitation link; ``token`` is only in the link, never stored."""
    context = {
        "invitation": invitation,
        "organization": invitation.organization,
        "invited_by": invitation.invited_by,
        "accept_url": absolute_url(reverse("invitation_respond", kwargs={"token": token})),
    }
    subject = render_to_string("email/accounts/invitation_subject.txt", context).strip()
    body = render_to_string("email/accounts/invitation_message.txt", context)
    send_mail(settings.ACCOUNT_EMAIL_SUBJECT_PREFIX + subject, body, None, [invitation.email])
