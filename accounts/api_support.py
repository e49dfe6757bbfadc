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


def paginated_response(request: Request, view: APIView, items: Any, serializer: type) -> Response:
    """One page of ``items`` with the view's paginator, serialized by ``serializer``."""
    paginator = view.pagination_class()  # type: ignore[attr-defined]
    page = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)
