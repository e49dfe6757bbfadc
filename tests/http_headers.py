"""What a response that carries a secret must send (``accounts.response_headers``)."""

from __future__ import annotations

from django.http import HttpResponseBase

NO_STORE = ("max-age=0, no-cache, no-store, must-revalidate, private", "no-cache")


def cache_headers(response: HttpResponseBase) -> tuple[str | None, str | None]:
    """``(Cache-Control, Pragma)`` of a response, None where absent."""
    return response.get("Cache-Control"), response.get("Pragma")
