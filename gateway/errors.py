"""OpenAI's error bodies (docs/gateway.md "Errors"), ready to send."""

from __future__ import annotations

import orjson


def error_body(*, message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


class GatewayError(Exception):
    """A refusal the buyer sees: an HTTP status and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        *,
        message: str,
        type: str,
        code: str | None,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message=message, type=type, code=code, param=param)
        self.retry_after_s = retry_after_s


def invalid_api_key() -> GatewayError:
    return GatewayError(
        401,
        message="Incorrect API key provided.",
        type="invalid_request_error",
        code="invalid_api_key",
    )


def permission_denied(message: str) -> GatewayError:
    return GatewayError(403, message=message, type="permission_error", code="permission_denied")


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        message=f"The model '{model}' does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def invalid_request(message: str, *, param: str | None) -> GatewayError:
    return GatewayError(
        400,
        message=message,
        type="invalid_request_error",
        code="invalid_request_error",
        param=param,
    )


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        message=f"Request body is larger than {limit} bytes.",
        type="invalid_request_error",
        code="request_too_large",
    )


def rate_limited(message: str, *, retry_after_s: int) -> GatewayError:
    return GatewayError(
        429,
        message=message,
        type="requests",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


def insufficient_quota(message: str, *, retry_after_s: int) -> GatewayError:
    return GatewayError(
        429,
        message=message,
        type="insufficient_quota",
        code="insufficient_quota",
        retry_after_s=retry_after_s,
    )


def no_healthy_node(model: str) -> GatewayError:
    return GatewayError(
        503,
        message=f"No node can serve '{model}' right now; retry shortly.",
        type="server_error",
        code="no_healthy_node",
    )


def upstream_timeout() -> GatewayError:
    return GatewayError(
        504,
        message="The node serving this request did not answer in time.",
        type="server_error",
        code="upstream_timeout",
    )


def not_found(path: str) -> GatewayError:
    return GatewayError(
        404, message=f"Unknown endpoint {path}.", type="invalid_request_error", code="not_found"
    )


def method_not_allowed() -> GatewayError:
    return GatewayError(
        405, message="Method not allowed.", type="invalid_request_error", code="method_not_allowed"
    )


def internal_error() -> GatewayError:
    return GatewayError(
        500,
        message="The gateway failed to handle this request; retry shortly.",
        type="server_error",
        code="internal_error",
    )


def openai_shaped(body: bytes) -> bytes:
    """An error body from the node as OpenAI's shape: the engine's own errors already
    are; the agent's (``{"error": "<code>"}``, docs/gateway.md) are wrapped."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error_body(
            message="The node refused the request.", type="invalid_request_error", code=None
        )
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return body
    code = error if isinstance(error, str) else None
    return error_body(
        message=f"The node refused the request ({code or 'no reason given'}).",
        type="invalid_request_error",
        code=code,
    )
