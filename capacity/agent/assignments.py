"""Assignments (agent protocol v1.1): what the platform wants running on a node's GPUs.

The platform sends the node's whole desired state with ``PUT /v1/assignments``: a body
of canonical JSON (``protocol.canonical_json``) signed with the platform's Ed25519 key
(the key that signs gateway receipts) in ``X-Platform-Signature``, carrying a
generation the platform increases on every change. The agent holds only the public
half, so it can check an assignment and cannot make one; it accepts only a generation
above the one it holds (the same generation with the same bytes again is a no-op),
writes what it accepted to disk before answering, and converges to it after a restart.
docs/workloads.md is the contract.

The platform builds and signs bodies with ``assignments_body`` and ``sign_assignments``;
the agent checks them with ``parse_assignments``. Only the standard library and
``cryptography``: both sides import this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from capacity.agent.identity import write_private_file
from capacity.agent.protocol import canonical_json, encode_body, parse_time

PLATFORM_SIGNATURE_HEADER = "X-Platform-Signature"
ASSIGNMENTS_VERSION = 1
ASSIGNMENT_KINDS = ("container", "deployment")
# Bounds on what one body may carry: far above any node, low enough to refuse abuse.
MAX_BODY_BYTES = 1_000_000
MAX_ASSIGNMENTS = 256
MAX_PORTS = 32
MAX_ENV = 128
MAX_TEXT = 4096
_ASSIGNMENT_ID = re.compile(r"^[0-9a-f]{32}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@+-]{0,254}$")
_SLUG = re.compile(r"^[-a-zA-Z0-9_.]{1,128}$")
_BODY_KEYS = frozenset({"v", "node", "agent", "generation", "issued_at", "assignments"})
_KIND_KEYS = {
    "container": frozenset({"id", "kind", "gpus", "image", "ports", "env", "ssh_public_key"}),
    "deployment": frozenset({"id", "kind", "gpus", "model", "served_model_name"}),
}


class InvalidAssignments(ValueError):
    """The body is not a set of assignments this agent can accept (answered 400)."""


class BadPlatformSignature(ValueError):
    """The body is unsigned or not signed by the platform's key (answered 403)."""


@dataclass(frozen=True)
class Assignment:
    """One workload on its GPUs, as the platform describes it; the wire's field names."""

    id: str
    kind: str
    gpus: tuple[str, ...]
    # container: the image, the ports it listens on, its environment, the buyer's key.
    image: str = ""
    ports: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ssh_public_key: str = ""
    # deployment: the catalogue model and the private name the gateway calls it by.
    model: str = ""
    served_model_name: str = ""

    def to_wire(self) -> dict[str, object]:
        if self.kind == "deployment":
            return {
                "id": self.id,
                "kind": self.kind,
                "gpus": list(self.gpus),
                "model": self.model,
                "served_model_name": self.served_model_name,
            }
        return {
            "id": self.id,
            "kind": self.kind,
            "gpus": list(self.gpus),
            "image": self.image,
            "ports": list(self.ports),
            "env": dict(self.env),
            "ssh_public_key": self.ssh_public_key,
        }


@dataclass(frozen=True)
class AssignmentSet:
    """A node's desired state as accepted: the signed bytes and what they say."""

    generation: int
    issued_at: str
    assignments: tuple[Assignment, ...]
    body: bytes
    signature: str

    @property
    def by_id(self) -> dict[str, Assignment]:
        return {assignment.id: assignment for assignment in self.assignments}


EMPTY_SET = AssignmentSet(generation=0, issued_at="", assignments=(), body=b"", signature="")


def assignments_body(
    node_id: int,
    agent_public_key_b64: str,
    generation: int,
    issued_at: str,
    assignments: Sequence[Mapping[str, object]],
) -> bytes:
    """The canonical body the platform signs for one node (docs/workloads.md)."""
    payload = {
        "v": ASSIGNMENTS_VERSION,
        "node": node_id,
        "agent": agent_public_key_b64,
        "generation": generation,
        "issued_at": issued_at,
        "assignments": [dict(assignment) for assignment in assignments],
    }
    return encode_body(payload)


def sign_assignments(
    private_key: Ed25519PrivateKey, payload: Mapping[str, object] | bytes
) -> tuple[bytes, str]:
    """``(body bytes, X-Platform-Signature value)`` for a body (or a payload to encode)."""
    body = payload if isinstance(payload, bytes) else encode_body(payload)
    return body, base64.b64encode(private_key.sign(body)).decode("ascii")


def _verify(public_key: Ed25519PublicKey, body: bytes, signature_b64: str | None) -> None:
    if not signature_b64:
        raise BadPlatformSignature("no X-Platform-Signature")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, body)
    except (binascii.Error, ValueError, InvalidSignature) as error:
        raise BadPlatformSignature("X-Platform-Signature is not the platform's") from error


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**62:
        raise InvalidAssignments(f"{name} must be a positive integer")
    return value


def _text(value: object, name: str, pattern: re.Pattern[str] | None = None) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_TEXT
        or (pattern and not pattern.match(value))
    ):
        raise InvalidAssignments(f"{name} is not valid")
    return value


def _assignment(raw: object, known_gpus: frozenset[str]) -> Assignment:
    if not isinstance(raw, dict):
        raise InvalidAssignments("an assignment must be an object")
    kind = raw.get("kind")
    if kind not in ASSIGNMENT_KINDS:
        raise InvalidAssignments(f"kind must be one of {', '.join(ASSIGNMENT_KINDS)}")
    if set(raw) != _KIND_KEYS[kind]:
        raise InvalidAssignments(f"a {kind} assignment has exactly {sorted(_KIND_KEYS[kind])}")
    assignment_id = _text(raw["id"], "id", _ASSIGNMENT_ID)
    gpus = raw["gpus"]
    if not isinstance(gpus, list) or not gpus or len(set(map(str, gpus))) != len(gpus):
        raise InvalidAssignments(f"assignment {assignment_id}: gpus must list distinct GPUs")
    for gpu in gpus:
        if not isinstance(gpu, str) or gpu not in known_gpus:
            raise InvalidAssignments(f"assignment {assignment_id}: unknown GPU {gpu!r}")
    if kind == "deployment":
        return Assignment(
            id=assignment_id,
            kind=kind,
            gpus=tuple(gpus),
            model=_text(raw["model"], "model", _SLUG),
            served_model_name=_text(raw["served_model_name"], "served_model_name", _SLUG),
        )
    ports, env = raw["ports"], raw["env"]
    if (
        not isinstance(ports, list)
        or len(ports) > MAX_PORTS
        or len(set(ports)) != len(ports)
        or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports
        )
    ):
        raise InvalidAssignments(f"assignment {assignment_id}: ports must list distinct ports")
    if (
        not isinstance(env, dict)
        or len(env) > MAX_ENV
        or not all(
            _ENV_NAME.match(k) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in env.items()
        )
    ):
        raise InvalidAssignments(f"assignment {assignment_id}: env must map names to strings")
    ssh_key = _text(raw["ssh_public_key"], "ssh_public_key")
    if "\n" in ssh_key or "\r" in ssh_key:
        raise InvalidAssignments(f"assignment {assignment_id}: ssh_public_key is one line")
    return Assignment(
        id=assignment_id,
        kind=kind,
        gpus=tuple(gpus),
        image=_text(raw["image"], "image", _IMAGE),
        ports=tuple(ports),
        env=dict(env),
        ssh_public_key=ssh_key,
    )


def parse_assignments(
    body: bytes,
    signature_b64: str | None,
    *,
    platform_key: Ed25519PublicKey,
    agent_public_key: str,
    gpu_uuids: Sequence[str],
    node_id: int | None = None,
) -> AssignmentSet:
    """Check a ``PUT /v1/assignments`` body and return what it assigns.

    Raises ``BadPlatformSignature`` before looking inside an unsigned or forged body, and
    ``InvalidAssignments`` for a body meant for another agent (``agent`` is not this
    agent's key, or ``node`` not its platform id when it knows it), of the wrong shape,
    naming a GPU it does not have, or putting one GPU in two assignments.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidAssignments(f"body is over {MAX_BODY_BYTES} bytes")
    _verify(platform_key, body, signature_b64)
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidAssignments("body is not JSON") from error
    if not isinstance(payload, dict) or set(payload) != _BODY_KEYS:
        raise InvalidAssignments(f"body has exactly the keys {sorted(_BODY_KEYS)}")
    if payload["v"] != ASSIGNMENTS_VERSION:
        raise InvalidAssignments(f"v must be {ASSIGNMENTS_VERSION}")
    if payload["agent"] != agent_public_key:
        raise InvalidAssignments("agent is not this agent's public key")
    node = _positive_int(payload["node"], "node")
    if node_id is not None and node != node_id:
        raise InvalidAssignments("node is not this node")
    generation = _positive_int(payload["generation"], "generation")
    issued_at = payload["issued_at"]
    try:
        parse_time(issued_at if isinstance(issued_at, str) else "")
    except ValueError as error:
        raise InvalidAssignments("issued_at is not an RFC 3339 UTC time") from error
    raw_assignments = payload["assignments"]
    if not isinstance(raw_assignments, list) or len(raw_assignments) > MAX_ASSIGNMENTS:
        raise InvalidAssignments(f"assignments must be a list of at most {MAX_ASSIGNMENTS}")
    known = frozenset(gpu_uuids)
    assignments = tuple(_assignment(raw, known) for raw in raw_assignments)
    if len({a.id for a in assignments}) != len(assignments):
        raise InvalidAssignments("two assignments have the same id")
    held = [gpu for assignment in assignments for gpu in assignment.gpus]
    if len(set(held)) != len(held):
        raise InvalidAssignments("a GPU is in two assignments")
    return AssignmentSet(
        generation=generation,
        issued_at=str(issued_at),
        assignments=tuple(sorted(assignments, key=lambda a: a.id)),
        body=body,
        signature=str(signature_b64),
    )


class StaleGeneration(Exception):
    """The generation is below the one held, or equal with other bytes (answered 409)."""

    def __init__(self, held: int) -> None:
        super().__init__(f"generation {held} is held")
        self.held = held


def is_repeat(held: AssignmentSet, offered: AssignmentSet) -> bool:
    """Apply the generation rule: True for a no-op repeat, raise when stale, else False."""
    if offered.generation > held.generation:
        return False
    if offered.generation == held.generation and offered.body == held.body:
        return True
    raise StaleGeneration(held.generation)


class AssignmentStore:
    """The accepted set on disk (``JOURNAL.assignments.json``): body and signature as sent.

    Written atomically (temporary file, fsync, rename, fsync of the directory) before
    the agent answers, so an acknowledged generation survives a power cut; read back and
    checked again on start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def path_for(journal_path: Path) -> Path:
        return Path(f"{journal_path}.assignments.json")

    def save(self, accepted: AssignmentSet) -> None:
        document = {"body": accepted.body.decode("utf-8"), "signature": accepted.signature}
        write_private_file(self.path, json.dumps(document).encode("utf-8"))
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self) -> tuple[bytes, str] | None:
        """The saved body and signature, or None when nothing was ever accepted."""
        if not self.path.exists():
            return None
        document = json.loads(self.path.read_text("utf-8"))
        return str(document["body"]).encode("utf-8"), str(document["signature"])


def workloads_digest(workloads: Sequence[Mapping[str, object]]) -> str:
    """``assignments.digest`` of ``/v1/usage``: sha256 hex of the workloads list's canonical JSON."""
    return hashlib.sha256(canonical_json(list(workloads)).encode("utf-8")).hexdigest()
