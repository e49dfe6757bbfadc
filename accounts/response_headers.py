"""Headers that protect what a response carries: no caching of secrets, and a
Content-Security-Policy on every page.

**Secrets.** A response that shows a key, code or token once (an API key, a node's
enrollment code, an agent's poll token, a Stripe client secret, MFA secrets) must not be
kept by a browser's or proxy's cache, where the back button or the next user of the
machine would find it. Pages mark themselves by rendering ``components/secret.html`` (or
``{% carries_secret %}``, from ``accounts.templatetags.secret_responses``); API views wrap
their response in :func:`no_store`; allauth's MFA pages are named in
``_SECRET_URL_NAMES``. :class:`ResponseHeadersMiddleware` then sends ``Cache-Control:
no-store`` (with Django's other never-cache directives) and ``Pragma: no-cache``.

**Content-Security-Policy.** Scripts and styles come from our own origin, plus Stripe.js
(``STRIPE_JS_URL``) and what it talks to; the few inline ``<script>``/``<style>`` blocks
carry the request's nonce (``{{ csp_nonce }}``, also what ``django_htmx`` reads). No
``unsafe-inline``, no ``eval``, no framing by other sites, forms post only to us.
``CSP_ENABLED`` (``HASHGRID_CSP``) switches it; in ``DEBUG`` Django's technical error pages
(inline styles and scripts) are left without it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import add_never_cache_headers

R = TypeVar("R", bound=HttpResponseBase)

_CARRIES_SECRET_ATTR = "_hashgrid_carries_secret"  # noqa: S105 (an attribute name)
_NONCE_ATTR = "_hashgrid_csp_nonce"

# allauth's pages that show a TOTP secret or recovery codes (the download and the list
# already send never-cache headers of their own).
_SECRET_URL_NAMES = frozenset({"mfa_activate_totp", "mfa_generate_recovery_codes"})

# Swagger UI (the API reference) applies inline styles as it renders: its page alone
# allows them. Scripts stay nonce-only there too, and the page shows no user content.
_INLINE_STYLE_URL_NAMES = frozenset({"api-docs"})

# Stripe's own hosts beside Stripe.js: its API (card confirmation) and 3-D Secure frames.
_STRIPE_API_ORIGIN = "https://api.stripe.com"
_STRIPE_HOOKS_ORIGIN = "https://hooks.stripe.com"
# Where "Set up payouts with Stripe" (a form post) redirects: Stripe-hosted Connect
# onboarding. Browsers apply form-action to a form's redirects too.
_STRIPE_CONNECT_ORIGIN = "https://connect.stripe.com"


def no_store(response: R) -> R:
    """Keep ``response`` out of every cache: it carries a secret shown once."""
    add_never_cache_headers(response)
    response["Pragma"] = "no-cache"
    return response


def mark_carries_secret(request: HttpRequest) -> None:
    """Note that the response to ``request`` shows a secret (the middleware adds no-store)."""
    setattr(request, _CARRIES_SECRET_ATTR, True)


def csp_nonce(request: HttpRequest) -> str:
    """The request's nonce for inline ``<script>`` and ``<style>`` blocks, made on first use."""
    nonce = getattr(request, _NONCE_ATTR, None)
    if nonce is None:
        nonce = secrets.token_urlsafe(18)
        setattr(request, _NONCE_ATTR, nonce)
    return nonce  # type: ignore[no-any-return]


def csp_context(request: HttpRequest) -> dict[str, Any]:
    """Template context processor: ``csp_nonce`` for inline blocks (and django_htmx)."""
    return {"csp_nonce": csp_nonce(request)}


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(*, nonce: str, inline_styles: bool = False) -> str:
    """The policy for one response. Stripe's origins follow the settings, so development's
    localstripe (``STRIPE_JS_URL`` and ``STRIPE_API_BASE`` on loopback) is allowed as
    Stripe is in production."""
    stripe_js = _origin(settings.STRIPE_JS_URL or "https://js.stripe.com/v3/")
    stripe_api = _origin(settings.STRIPE_API_BASE) or _STRIPE_API_ORIGIN
    stripe_frames = [stripe_js, _STRIPE_HOOKS_ORIGIN]
    directives: dict[str, list[str | None]] = {
        "default-src": ["'self'"],
        "script-src": ["'self'", f"'nonce-{nonce}'", stripe_js],
        # A nonce would make browsers ignore 'unsafe-inline': one or the other.
        "style-src": ["'self'", "'unsafe-inline'" if inline_styles else f"'nonce-{nonce}'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        # The inference playground streams from the gateway (its own origin).
        "connect-src": ["'self'", stripe_js, stripe_api, _origin(settings.GATEWAY_URL)],
        "frame-src": stripe_frames,
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        # The payout set-up form redirects to Connect onboarding: Stripe's, or in
        # development the emulator's (its own origin, ``STRIPE_CONNECT_API_BASE``).
        "form-action": [
            "'self'",
            _STRIPE_CONNECT_ORIGIN,
            _origin(getattr(settings, "STRIPE_CONNECT_API_BASE", "")),
        ],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(
        f"{name} {' '.join(dict.fromkeys(source for source in sources if source))}"
        for name, sources in directives.items()
    )


class ResponseHeadersMiddleware:
    """Adds no-store to responses that carry a secret and the Content-Security-Policy to
    every response that has none of its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        url_name = match.url_name if match is not None else None
        if getattr(request, _CARRIES_SECRET_ATTR, False) or url_name in _SECRET_URL_NAMES:
            no_store(response)
        technical_page = settings.DEBUG and response.status_code >= 400
        if (
            settings.CSP_ENABLED
            and not technical_page
            and "Content-Security-Policy" not in response
        ):
            response["Content-Security-Policy"] = content_security_policy(
                nonce=csp_nonce(request), inline_styles=url_name in _INLINE_STYLE_URL_NAMES
            )
        return response
