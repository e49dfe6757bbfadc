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


def count_sign_in_as_recent_authentication(
    sender: object, request: HttpRequest, user: object, **kwargs: object
) -> None:
    """allauth's ``user_logged_in`` receiver: the password typed to sign in counts as a
    recent authentication, so a page that asks for one (setting up TOTP, which staff are
    sent to at once) does not ask for the password again right after sign-in.

    allauth (65.x) counts only records it marked ``reauthenticated``, and records a
    sign-in without the mark; this marks the sign-in's own password record. The usual
    window still applies (``ACCOUNT_REAUTHENTICATION_TIMEOUT``): later, sensitive pages
    ask again. Any other record (a code, a password reset) is left as it is.
    """
    from allauth.account.internal.flows.login import (
        AUTHENTICATION_METHODS_SESSION_KEY,
        get_authentication_records,
    )

    records = [dict(record) for record in get_authentication_records(request, user)]
    if not records or records[-1].get("method") not in {"password", "mfa"}:
        return
    for record in reversed(records):
        if record.get("method") == "password":
            record["reauthenticated"] = True
            break
    request.session[AUTHENTICATION_METHODS_SESSION_KEY] = records
