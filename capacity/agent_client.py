"""Adapter for talking to node agents over HTTP: the one module using httpx for it.

Everything an agent says is untrusted: responses are size-checked, parsed defensively and
signature-checked. Failures surface as :class:`AgentError` subclasses, never as httpx's
exceptions. Metering extends this module with its async polling client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from capacity.agent.protocol import SIGNATURE_HEADER, hash_token, verify_signature

# Agents are on partners' networks: fail fast rather than hold a worker.
TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# No legitimate /v1/info body is anywhere near this.
MAX_INFO_BYTES = 256 * 1024


class AgentError(Exception):
    """The agent could not be used; the message is fit for an operator."""


class AgentUnreachable(AgentError):
    """Connection refused, timed out, or an HTTP error status."""


class AgentProtocolError(AgentError):
    """The agent answered, but not as the protocol says (bad JSON, bad signature…)."""


@dataclass(frozen=True)
class AgentInfo:
    """``GET /v1/info``, parsed. ``gpus`` keeps the wire form for ``node_enroll``."""

    node_id: str
    agent_version: str
    boot_id: str
    journal_epoch: str
    public_key: str
    gpus: list[dict[str, object]]


def _bearer(poll_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {poll_token}"}


def fetch_info(agent_url: str, *, poll_token: str, client: httpx.Client | None = None) -> AgentInfo:
    """Fetch and check ``{agent_url}/v1/info`` (signed with the key it announces)."""
    url = agent_url.rstrip("/") + "/v1/info"
    try:
        if client is not None:
            response = client.get(url, headers=_bearer(poll_token), timeout=TIMEOUT)
        else:
            response = httpx.get(url, headers=_bearer(poll_token), timeout=TIMEOUT)
    except httpx.HTTPError as error:
        raise AgentUnreachable(f"{url}: {error.__class__.__name__}") from error
    if response.status_code != 200:
        raise AgentUnreachable(f"{url}: HTTP {response.status_code}")
    body = response.content
    if len(body) > MAX_INFO_BYTES:
        raise AgentProtocolError(f"{url}: response too large")
    try:
        data = json.loads(body)
    except ValueError as error:
        raise AgentProtocolError(f"{url}: not JSON") from error
    if not isinstance(data, dict):
        raise AgentProtocolError(f"{url}: not a JSON object")
    fields = ("node_id", "agent_version", "boot_id", "journal_epoch", "public_key")
    if not all(isinstance(data.get(name), str) for name in fields) or not isinstance(
        data.get("gpus"), list
    ):
        raise AgentProtocolError(f"{url}: missing or mistyped fields")
    if not verify_signature(data["public_key"], body, response.headers.get(SIGNATURE_HEADER, "")):
        raise AgentProtocolError(f"{url}: signature does not match the announced key")
    return AgentInfo(
        node_id=data["node_id"],
        agent_version=data["agent_version"],
        boot_id=data["boot_id"],
        journal_epoch=data["journal_epoch"],
        public_key=data["public_key"],
        gpus=[gpu for gpu in data["gpus"] if isinstance(gpu, dict)],
    )


def fleet_set_poll_token(
    agent_url: str, *, poll_token: str, client: httpx.Client | None = None
) -> None:
    """Tell the fleet simulator (loopback admin endpoint) which token node ``agent_url`` accepts.

    Only the token's SHA-256 travels, as a real agent would keep it. For the demo and
    tests; real agents learn their token by enrolling.
    """
    url = agent_url.rstrip("/") + "/_admin/token"
    payload = {"poll_token_sha256": hash_token(poll_token)}
    try:
        if client is not None:
            response = client.post(url, json=payload, timeout=TIMEOUT)
        else:
            response = httpx.post(url, json=payload, timeout=TIMEOUT)
    except httpx.HTTPError as error:
        raise AgentUnreachable(f"{url}: {error.__class__.__name__}") from error
    if response.status_code != 200:
        raise AgentUnreachable(f"{url}: HTTP {response.status_code}")
