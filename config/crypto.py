"""Symmetric encryption of secrets the platform must read back (agents' poll tokens).

Hashes are the right tool for secrets we only compare (API keys, enrollment codes); a
poll token is different: the platform sends it to the agent on every poll, so it keeps
the plaintext — encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

Keys come from ``settings.FIELD_ENCRYPTION_KEY``: a comma-separated list of secrets, the
first used to encrypt and all of them tried to decrypt (rotation: prepend the new one,
re-encrypt, drop the old one). Empty → derived from ``SECRET_KEY``. Each secret is
stretched to a Fernet key with HKDF-SHA256, so any long random string will do.
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

# Domain separation: a key derived here is useless for anything else derived from SECRET_KEY.
_HKDF_INFO = b"hashgrid field encryption v1"


class DecryptionError(Exception):
    """The ciphertext was not produced by any of the configured keys (or was tampered with)."""


def _derive_fernet_key(secret: str) -> bytes:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(raw)


@lru_cache(maxsize=4)
def _fernet_for(secrets: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_derive_fernet_key(secret)) for secret in secrets])


def _fernet() -> MultiFernet:
    configured = [part.strip() for part in (settings.FIELD_ENCRYPTION_KEY or "").split(",")]
    secrets = tuple(part for part in configured if part) or (settings.SECRET_KEY,)
    return _fernet_for(secrets)


def encrypt_str(plaintext: str) -> str:
    """Ciphertext (URL-safe ASCII) for ``plaintext``; a fresh IV each call."""
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_str(ciphertext: str) -> str:
    """Plaintext of ``ciphertext``, or :class:`DecryptionError` (never the key or the value)."""
    try:
        return _fernet().decrypt(ciphertext.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as error:
        raise DecryptionError("ciphertext cannot be decrypted with the configured keys") from error
