"""Page helpers shared by every app's views."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def render_confirm(
    request: HttpRequest,
    *,
    title: str,
    message: str,
    action_label: str,
    cancel_url: str,
    danger: bool,
) -> HttpResponse:
    """The confirmation page of a destructive or irreversible action: GET shows it, and
    its form POSTs back to the same URL, where the view performs the action."""
    return render(
        request,
        "components/confirm.html",
        {
            "title": title,
            "message": message,
            "action_label": action_label,
            "cancel_url": cancel_url,
            "danger": danger,
        },
    )
