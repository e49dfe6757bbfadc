"""Assignment bodies made the way docs/workloads.md describes the wire, with ``json`` and
``cryptography`` directly (not the agent's helpers), and the reads tests make of
``/v1/workloads``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.capacity.agent.verification import signed_json

SIGNATURE_HEADER = "X-Platform-Signature"


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def container(
    assignment_id: str,
    gpus: list[str],
    *,
    image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
    ports: tuple[int, ...] = (22, 8888),
) -> dict[str, Any]:
    return {
        "id": assignment_id,
        "kind": "container",
        "gpus": gpus,
        "image": image,
        "ports": list(ports),
        "env": {"JUPYTER_TOKEN": "s3cret"},
        "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuyer buyer@laptop",
    }


def body(
    *,
    agent: str,
    generation: int,
    assignments: list[dict[str, Any]],
    node: int = 12,
    issued_at: str = "2026-12-04T10:00:00Z",
) -> bytes:
    return canonical(
        {
            "v": 1,
            "node": node,
            "agent": agent,
            "generation": generation,
            "issued_at": issued_at,
            "assignments": assignments,
        }
    )


def signature(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode("ascii")


def put(
    client: httpx.Client,
    base_url: str,
    payload: bytes,
    *,
    key: Ed25519PrivateKey | None,
    token: str,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if key is not None:
        headers[SIGNATURE_HEADER] = signature(key, payload)
    return client.put(f"{base_url}/v1/assignments", content=payload, headers=headers)


def workloads(client: httpx.Client, base_url: str, agent: str) -> dict[str, Any]:
    response = client.get(f"{base_url}/v1/workloads")
    assert response.status_code == 200
    return dict(signed_json(response, agent))


def digest(workload_list: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical(workload_list)).hexdigest()


def watch_states(
    client: httpx.Client,
    base_url: str,
    agent: str,
    assignment_id: str,
    *,
    until: set[str | None],
    timeout_s: float = 20.0,
) -> tuple[list[str | None], dict[str, Any] | None]:
    """The distinct states the workload went through (None: not listed) until one of
    ``until``, and its last entry."""
    seen: list[str | None] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = {w["id"]: w for w in workloads(client, base_url, agent)["workloads"]}
        entry = listed.get(assignment_id)
        state = None if entry is None else entry["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in until:
            return seen, entry
        time.sleep(0.05)
    raise AssertionError(f"{assignment_id} went through {seen} and never reached {until}")


def records_until(
    fetch: Callable[[], list[dict[str, Any]]],
    enough: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout_s: float = 20.0,
) -> list[dict[str, Any]]:
    """Fetch the records again until ``enough`` says they include what a test waits for."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = fetch()
        if enough(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)
