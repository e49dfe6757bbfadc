"""Deployment checks of our own, run by ``manage.py check --deploy``."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

PER_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


@register(Tags.security, deploy=True)
def shared_default_cache(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Login rate limits (allauth) and the agent enrollment throttle live in the default
    cache: kept per process, they do not hold across web workers."""
    default = cast(dict[str, Any], settings.CACHES["default"])
    if default["BACKEND"] in PER_PROCESS_CACHES:
        return [
            Warning(
                "The default cache is each process's own memory: login rate limits and the "
                "agent enrollment throttle do not hold across web workers.",
                hint="Set CACHE_URL to a Redis database shared by the web processes "
                "(docs/operations.md).",
                id="hashgrid.W001",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def content_security_policy_on(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Pages without the Content-Security-Policy (``accounts.response_headers``) run any
    script an injection slips in."""
    if not settings.CSP_ENABLED:
        return [
            Warning(
                "HASHGRID_CSP is off: pages are sent without a Content-Security-Policy.",
                hint="Unset HASHGRID_CSP (it is on by default).",
                id="hashgrid.W002",
            )
        ]
    return []
