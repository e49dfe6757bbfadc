"""Enrollment: one-time codes, and the agent's registration that consumes one.

A partner creates a node and gets a code (shown once, stored as sha256). The agent calls
``POST /api/v1/agents/enroll`` with it; :func:`node_enroll` checks everything the agent
says (it is untrusted), records the public key, URL (public addresses only, outside
development) and GPU inventory, and issues the
poll token — stored encrypted, returned in plaintext exactly once.

After enrollment the node is ``unreachable``: enrolled, but the platform has not yet
reached it. Metering's first successful poll makes it ``online``; ``pending`` keeps its
one meaning, "no agent enrolled".
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit
from capacity.agent_client import AgentUrlRefused, check_agent_url, private_urls_allowed
from capacity.models import (
    ENROLLMENT_CODE_LIFETIME,
    EnrollmentCode,
    GpuDevice,
    Node,
    NodeStatus,
    hash_enrollment_code,
)
from config import crypto

# Codes are typed by people: no 0/O or 1/I/L. 20 characters of 31 ≈ 99 bits.
_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_CODE_GROUPS, _CODE_GROUP_LENGTH = 5, 4

MESSAGE_CODE_UNKNOWN = "enrollment code is not valid"
MESSAGE_CODE_USED = "enrollment code already used"
MESSAGE_CODE_EXPIRED = "enrollment code expired"
MESSAGE_CODE_REPLACED = "enrollment code was replaced by a newer one"

_GPU_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]{1,64}$")
# A reported GPU may show a little less memory than the data sheet (driver reservations),
# never more, and not less than this fraction of it.
_MIN_MEMORY_FRACTION = 0.85


def new_enrollment_code() -> str:
    """A fresh human-typeable code, e.g. ``K7QM-3XPA-…``."""
    groups = (
        "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_GROUP_LENGTH))
        for _ in range(_CODE_GROUPS)
    )
    return "-".join(groups)


@dataclass(frozen=True)
class IssuedCode:
    # Plaintext: shown once, stored only as a hash.
    code: str
    expires_at: datetime


def issue_enrollment_code(*, node: Node) -> IssuedCode:
    """Revoke the node's live code, if any, and store a new one; return its plaintext.

    Callers hold a transaction (the revoke and the insert go together).
    """
    now = timezone.now()
    EnrollmentCode.objects.filter(node=node, used_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=now
    )
    code = new_enrollment_code()
    row = EnrollmentCode.objects.create(
        node=node,
        code_hash=hash_enrollment_code(code),
        created_at=now,
        expires_at=now + ENROLLMENT_CODE_LIFETIME,
    )
    return IssuedCode(code=code, expires_at=row.expires_at)


@dataclass(frozen=True)
class ReportedGpu:
    uuid: str
    model: str
    memory_mib: int


@dataclass(frozen=True)
class EnrollmentResult:
    node: Node
    # Plaintext, returned once to the agent; only its ciphertext is stored.
    poll_token: str

    @property
    def poll_interval_seconds(self) -> int:
        return int(settings.METERING_POLL_INTERVAL_SECONDS)


def _code_refusal(row: EnrollmentCode | None, *, now: datetime) -> str | None:
    """Why ``row`` cannot be consumed at ``now``, or None when it can."""
    if row is None:
        return MESSAGE_CODE_UNKNOWN
    if row.used_at is not None:
        return MESSAGE_CODE_USED
    if row.revoked_at is not None:
        return MESSAGE_CODE_REPLACED
    if row.expires_at <= now:
        return MESSAGE_CODE_EXPIRED
    return None


def _validate_public_key(public_key: object) -> str:
    if not isinstance(public_key, str):
        raise ValidationError({"public_key": "public key must be a base64 string"})
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValidationError({"public_key": "public key is not valid base64"}) from error
    if len(raw) != 32:
        raise ValidationError(
            {"public_key": f"public key must be a raw 32-byte Ed25519 key, got {len(raw)} bytes"}
        )
    return base64.b64encode(raw).decode("ascii")


def _validate_url(url: object) -> str:
    """The agent's base URL, normalized (no userinfo, query or fragment) and, outside
    development, resolving to public addresses only (``agent_client.check_agent_url``;
    polls check again when they connect)."""
    if not isinstance(url, str) or len(url) > 300:
        raise ValidationError({"url": "agent URL must be a string of at most 300 characters"})
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError as error:
        raise ValidationError({"url": "agent URL must be an http(s) URL"}) from error
    try:
        return check_agent_url(url, allow_private=private_urls_allowed())
    except AgentUrlRefused as error:
        raise ValidationError({"url": str(error)}) from error


def _validate_gpus(node: Node, gpus: Sequence[Mapping[str, Any]]) -> list[ReportedGpu]:
    if not isinstance(gpus, Sequence) or isinstance(gpus, str):
        raise ValidationError({"gpus": "gpus must be a list"})
    if len(gpus) != node.gpu_count:
        raise ValidationError(
            {
                "gpus": f"node {node.name} has {node.gpu_count} GPUs but the agent reported {len(gpus)}"
            }
        )
    catalog = node.gpu_model
    reported: list[ReportedGpu] = []
    errors: list[str] = []
    for index, gpu in enumerate(gpus):
        uuid = gpu.get("uuid") if isinstance(gpu, Mapping) else None
        model = gpu.get("model") if isinstance(gpu, Mapping) else None
        memory = gpu.get("memory_mib") if isinstance(gpu, Mapping) else None
        if not isinstance(uuid, str) or not _GPU_UUID.match(uuid):
            errors.append(f"GPU {index}: uuid must be 1-64 letters, digits or dashes")
            continue
        if not isinstance(model, str) or not _PRINTABLE.match(model):
            errors.append(f"GPU {index}: model must be 1-64 printable characters")
            continue
        if catalog.family.upper() not in model.upper():
            errors.append(
                f"GPU {index} reports model {model!r}, but node {node.name} is registered "
                f"with {catalog.name}"
            )
            continue
        if not isinstance(memory, int) or isinstance(memory, bool):
            errors.append(f"GPU {index}: memory_mib must be an integer")
            continue
        if not catalog.memory_mib * _MIN_MEMORY_FRACTION <= memory <= catalog.memory_mib:
            errors.append(
                f"GPU {index} reports {memory} MiB, implausible for {catalog.name} "
                f"({catalog.memory_mib} MiB)"
            )
            continue
        reported.append(ReportedGpu(uuid=uuid, model=model, memory_mib=memory))
    uuids = [gpu.uuid for gpu in reported]
    if len(set(uuids)) != len(uuids):
        errors.append("GPU uuids must be distinct")
    if errors:
        raise ValidationError({"gpus": errors})
    return reported


def _store_inventory(node: Node, reported: list[ReportedGpu]) -> None:
    """Create the node's GpuDevice rows; on re-enrollment the inventory must not change.

    Devices are what reservations and usage point at, so a changed inventory is a new
    node (retire this one), never a silent swap.
    """
    existing = {device.uuid: device for device in node.gpus.all()}
    uuids = [gpu.uuid for gpu in reported]
    if existing:
        if set(existing) != set(uuids):
            raise ValidationError(
                {
                    "gpus": "GPU inventory differs from the enrolled one; retire this node and create a new one"
                }
            )
        return
    taken = set(GpuDevice.objects.filter(uuid__in=uuids).values_list("uuid", flat=True))
    if taken:
        raise ValidationError(
            {"gpus": [f"GPU {uuid} is already enrolled on another node" for uuid in sorted(taken)]}
        )
    GpuDevice.objects.bulk_create(
        GpuDevice(node=node, uuid=gpu.uuid, index=index, memory_mib=gpu.memory_mib, model=gpu.model)
        for index, gpu in enumerate(reported)
    )


@transaction.atomic
def node_enroll(
    *,
    code: str,
    public_key: str,
    url: str,
    gpus: Sequence[Mapping[str, Any]],
    agent_version: str,
) -> EnrollmentResult:
    """Enroll an agent with a one-time code; return the node and its new poll token.

    Input is validated before the code is consumed, so an agent with a typo may retry;
    consuming is one conditional UPDATE, so two agents racing with one code get exactly
    one success. Everything happens in one transaction: a failure consumes nothing.
    """
    if not isinstance(code, str) or not code.strip():
        raise ValidationError({"code": MESSAGE_CODE_UNKNOWN})
    code_hash = hash_enrollment_code(code)
    lookup = EnrollmentCode.objects.select_related("node__gpu_model").filter(code_hash=code_hash)
    row = lookup.first()
    # Early, friendly refusal; the conditional UPDATE below is what enforces single use.
    refusal = _code_refusal(row, now=timezone.now())
    if refusal is not None or row is None:
        raise ValidationError({"code": refusal or MESSAGE_CODE_UNKNOWN})
    node = row.node
    if node.status == NodeStatus.RETIRED:
        raise ValidationError({"code": "node is retired"})
    normalized_key = _validate_public_key(public_key)
    agent_url = _validate_url(url)
    if (
        not isinstance(agent_version, str)
        or not _PRINTABLE.match(agent_version)
        or len(agent_version) > 32
    ):
        raise ValidationError({"agent_version": "agent_version must be 1-32 printable characters"})
    reported = _validate_gpus(node, gpus)

    now = timezone.now()
    consumed = EnrollmentCode.objects.filter(
        pk=row.pk, used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now
    ).update(used_at=now)
    if consumed != 1:
        raise ValidationError({"code": _code_refusal(lookup.first(), now=now) or MESSAGE_CODE_USED})

    node = (
        Node.objects.select_for_update(of=("self",))
        .select_related("gpu_model", "site__organization")
        .get(pk=node.pk)
    )
    _store_inventory(node, reported)
    poll_token = secrets.token_urlsafe(32)
    node.agent_public_key = normalized_key
    node.agent_url = agent_url
    node.agent_version = agent_version
    node.poll_token_ciphertext = crypto.encrypt_str(poll_token)
    node.enrolled_at = now
    node.status = NodeStatus.UNREACHABLE
    node.save(
        update_fields=[
            "agent_public_key",
            "agent_url",
            "agent_version",
            "poll_token_ciphertext",
            "enrolled_at",
            "status",
            "updated_at",
        ]
    )
    audit(
        action="node.enrolled",
        actor=None,
        organization=node.site.organization,
        target=node,
        agent_url=agent_url,
        agent_version=agent_version,
        gpu_uuids=[gpu.uuid for gpu in reported],
    )
    return EnrollmentResult(node=node, poll_token=poll_token)
