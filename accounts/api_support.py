"""Helpers every app's API views share: refusals, pagination (the caller's organization
and user: ``accounts.requests``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

IDEMPOTENCY_HEADER = "Idempotency-Key"
# A key from a client that sends 16 to 64 characters of its own choosing.
_IDEMPOTENCY_KEY_LENGTHS = range(16, 65)


def refusal(error: DjangoValidationError) -> exceptions.ValidationError:
    """A service's refusal as a 400 body with field keys (``detail`` when it has none)."""
    if hasattr(error, "error_dict"):
        return exceptions.ValidationError(error.message_dict)
    return exceptions.ValidationError({"detail": error.messages})


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn a service's ``ValidationError`` raised inside the block into a 400."""
    try:
        yield
    except DjangoValidationError as error:
        raise refusal(error) from None


def idempotency_key(request: Request, *, what: str) -> str | None:
    """The request's ``Idempotency-Key`` (None without one); refused (400) unless it has
    16 to 64 characters. ``what`` names what one key creates, for the refusal."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and len(key) not in _IDEMPOTENCY_KEY_LENGTHS:
        raise exceptions.ValidationError(
            {IDEMPOTENCY_HEADER: [f"Send 16 to 64 characters, new for each {what}."]}
        )
    return key


def paginated_response(request: Request, view: APIView, items: Any, serializer: type) -> Response:
    """One page of ``items`` with the view's paginator, serialized by ``serializer``."""
    paginator = view.pagination_class()  # type: ignore[attr-defined]
    page = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)
