"""ASGI plumbing of the gateway's answers: JSON, errors, CORS for the playground."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON = (b"content-type", b"application/json")


def cors_headers(headers: dict[bytes, bytes], *, allowed_origin: bytes) -> Headers:
    """CORS headers for the playground's origin (none for any other)."""
    origin = headers.get(b"origin")
    if origin is None or origin != allowed_origin:
        return []
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", b"x-request-id, retry-after"),
        (b"vary", b"origin"),
    ]


async def send_preflight(send: Send, headers: dict[bytes, bytes], cors: Headers) -> None:
    response_headers = list(cors)
    if cors:
        response_headers += [
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (
                b"access-control-allow-headers",
                headers.get(b"access-control-request-headers", b"authorization, content-type"),
            ),
            (b"access-control-max-age", b"600"),
        ]
    await send({"type": "http.response.start", "status": 204, "headers": response_headers})
    await send({"type": "http.response.body", "body": b""})


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    cors: Headers,
    request_id: str,
    extra: Headers | None = None,
) -> None:
    headers = [_JSON, (b"x-request-id", request_id.encode()), *cors]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: GatewayError, cors: Headers, request_id: str) -> None:
    extra = []
    if error.retry_after_s is not None:
        extra.append((b"retry-after", str(error.retry_after_s).encode()))
    await send_json(send, error.status, error.body, cors, request_id, extra)
