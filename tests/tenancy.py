"""Test helper: an object of organization B answers 404 to a member of organization A."""

from __future__ import annotations

from django.test import Client


def assert_hidden_from(
    client: Client, url: str, *, method: str = "get", data: dict | None = None
) -> None:
    """Assert that ``client`` (a member of another organization) gets 404 for ``url``.

    404, not 403: a foreign tenant's object must not even be confirmed to exist.
    """
    response = getattr(client, method)(url, data or {})
    assert response.status_code == 404, (
        f"{method.upper()} {url} answered {response.status_code} to a member of another "
        "organization; expected 404"
    )
