"""Client for the platform's enrollment endpoint: the agent's only outbound call.

``POST {platform}/api/v1/agents/enroll`` with the one-time code, the agent's public key,
its URL and GPU inventory; the platform answers with the node's poll token, of which the
agent keeps only the SHA-256, and (protocol v1.1) the platform's public key, with which
the agent checks the gateway's receipts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from capacity.agent import AGENT_VERSION
from capacity.agent.protocol import GpuInfo
from capacity.agent.receipts import public_key_from_b64

ENROLL_PATH = "/api/v1/agents/enroll"
ENROLL_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


class EnrollmentError(RuntimeError):
    """Enrollment failed; the message is fit for the operator."""


@dataclass(frozen=True)
class EnrollmentResult:
    poll_token: str
    node_id: str | None
    # Base64 of the platform's raw receipt key; None from a platform older than v1.1.
    platform_public_key: str | None = None


def enrollment_request(
    *, code: str, public_key: str, agent_url: str, gpus: Sequence[GpuInfo]
) -> dict[str, object]:
    """The JSON body the platform expects."""
    return {
        "code": code,
        "public_key": public_key,
        "url": agent_url,
        "gpus": [gpu.to_wire() for gpu in gpus],
        "agent_version": AGENT_VERSION,
    }


def enroll(
    *,
    platform_url: str,
    code: str,
    public_key: str,
    agent_url: str,
    gpus: Sequence[GpuInfo],
    timeout: httpx.Timeout = ENROLL_TIMEOUT,
) -> EnrollmentResult:
    """Register with the platform and return the poll token it issued."""
    url = platform_url.rstrip("/") + ENROLL_PATH
    body = enrollment_request(code=code, public_key=public_key, agent_url=agent_url, gpus=gpus)
    try:
        response = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as error:
        raise EnrollmentError(f"could not reach {url}: {error}") from error
    if response.status_code not in (200, 201):
        raise EnrollmentError(
            f"platform refused enrollment: HTTP {response.status_code} {response.text[:300]}"
        )
    try:
        data = response.json()
    except ValueError as error:
        raise EnrollmentError("platform answered with something other than JSON") from error
    token = data.get("poll_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise EnrollmentError("platform answer has no poll_token")
    node_id = data.get("node_id")
    platform_key = data.get("platform_public_key")
    if platform_key is not None:
        try:
            public_key_from_b64(str(platform_key))
        except ValueError as error:
            raise EnrollmentError(f"platform_public_key is unusable: {error}") from error
    return EnrollmentResult(
        poll_token=token,
        node_id=None if node_id is None else str(node_id),
        platform_public_key=None if platform_key is None else str(platform_key),
    )
