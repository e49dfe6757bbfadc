"""The agent's identity on disk: its Ed25519 key pair and its poll token's hash.

Both live next to the journal (``JOURNAL.key``, ``JOURNAL.state.json``), readable by
the agent's user only, so a restart keeps the identity the platform enrolled. The poll
token itself is never written anywhere: only its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)


class IdentityError(RuntimeError):
    """The key or state file exists but cannot be used."""


def key_path_for(journal_path: Path) -> Path:
    return Path(f"{journal_path}.key")


def state_path_for(journal_path: Path) -> Path:
    return Path(f"{journal_path}.state.json")


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to a file only its owner can read (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The agent's key pair from ``path`` (PKCS#8 PEM), created on first use."""
    if path.exists():
        key = load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{path} does not hold an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_private_file(path, pem)
    return key


def derive_private_key(*parts: object) -> Ed25519PrivateKey:
    """A key pair determined by ``parts`` (the fleet's, so 10,000 of them cost no disk)."""
    material = "|".join(str(part) for part in parts).encode()
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(material).digest())


@dataclass(frozen=True)
class EnrollmentState:
    """What enrollment leaves behind for ``run``."""

    poll_token_sha256: str
    platform: str
    node_id: str | None
    enrolled_at: str
    # The platform's receipt key (base64 of the raw 32 bytes), from enrollment's answer;
    # None for an agent enrolled before protocol v1.1 (enroll again, or --platform-key).
    platform_public_key: str | None = None

    def save(self, path: Path) -> None:
        body = json.dumps(self.__dict__, indent=2, sort_keys=True).encode() + b"\n"
        write_private_file(path, body)

    @classmethod
    def load(cls, path: Path) -> EnrollmentState | None:
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                poll_token_sha256=str(data["poll_token_sha256"]),
                platform=str(data["platform"]),
                node_id=None if data.get("node_id") is None else str(data["node_id"]),
                enrolled_at=str(data["enrolled_at"]),
                platform_public_key=None
                if data.get("platform_public_key") is None
                else str(data["platform_public_key"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise IdentityError(f"{path} is not a valid enrollment state: {error}") from error
