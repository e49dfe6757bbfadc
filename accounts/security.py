"""Staff must use multi-factor authentication.

A staff user without an active TOTP authenticator is sent to set one up before reaching
anything else (the admin included); the account pages stay reachable so they can.
allauth then asks for the code at every staff login.
"""

from __future__ import annotations

from collections.abc import Callable

from allauth.mfa.models import Authenticator
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

_ALWAYS_ALLOWED_PREFIXES = ("/accounts/", "/static/", "/healthz")


def staff_has_mfa(user: object) -> bool:
    return Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()


class StaffMfaRequiredMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            user.is_authenticated
            and user.is_staff
            and not request.path.startswith(_ALWAYS_ALLOWED_PREFIXES)
            and not staff_has_mfa(user)
        ):
            messages.warning(
                request, "Staff accounts must set up two-factor authentication before continuing."
            )
            return redirect("mfa_activate_totp")
        return self.get_response(request)
