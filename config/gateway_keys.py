"""The platform's receipt-signing key (``settings.GATEWAY_SIGNING_KEY``) and its public half.

The gateway signs receipts with the private key; enrollment hands the public key to every
agent, and metering checks receipts with it. Outside production, when no key is
configured, the seed is derived from ``SECRET_KEY`` so the web, worker and gateway
processes of one checkout agree without any set-up.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from capacity.agent.protocol import public_key_b64


@functools.cache
def _private_key(configured: str, secret_key: str) -> Ed25519PrivateKey:
    if configured:
        try:
            seed = base64.b64decode(configured, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ImproperlyConfigured("HASHGRID_GATEWAY_SIGNING_KEY is not base64") from error
        if len(seed) != 32:
            raise ImproperlyConfigured("HASHGRID_GATEWAY_SIGNING_KEY is not 32 bytes")
    else:
        seed = hashlib.sha256(f"hashgrid-gateway-receipts|{secret_key}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def receipt_signing_key() -> Ed25519PrivateKey:
    """The private key that signs receipts (the gateway's only)."""
    return _private_key(settings.GATEWAY_SIGNING_KEY, settings.SECRET_KEY)


def receipt_public_key() -> Ed25519PublicKey:
    """The public key every agent and metering checks receipts with."""
    return receipt_signing_key().public_key()


def receipt_public_key_b64() -> str:
    """The public key as enrollment hands it to agents (base64 of the raw 32 bytes)."""
    return public_key_b64(receipt_signing_key())
