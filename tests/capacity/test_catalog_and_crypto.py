"""The GPU catalog migration and the encryption of secrets at rest."""

from __future__ import annotations

import pytest
from django.test import override_settings

from capacity.models import GpuModel
from config import crypto


@pytest.mark.django_db
def test_gpu_catalog_is_seeded_with_vendor_figures():
    rows = set(GpuModel.objects.values_list("name", "family", "memory_mib", "max_power_w"))
    assert {
        ("H100 SXM 80GB", "H100", 81920, 700),
        ("H200 141GB", "H200", 144384, 700),
        ("A100 80GB", "A100", 81920, 400),
        ("L40S 48GB", "L40S", 49152, 350),
        ("RTX 4090 24GB", "4090", 24576, 450),
    } <= rows


def test_encrypt_round_trip_and_fresh_ciphertext():
    first = crypto.encrypt_str("poll-token-123")
    second = crypto.encrypt_str("poll-token-123")
    assert first != second
    assert "poll-token-123" not in first
    assert crypto.decrypt_str(first) == "poll-token-123"


def test_other_key_cannot_decrypt_and_rotation_keeps_old_ciphertext():
    with override_settings(FIELD_ENCRYPTION_KEY="old-secret"):
        ciphertext = crypto.encrypt_str("s3cret")
    with (
        override_settings(FIELD_ENCRYPTION_KEY="new-secret"),
        pytest.raises(crypto.DecryptionError),
    ):
        crypto.decrypt_str(ciphertext)
    with override_settings(FIELD_ENCRYPTION_KEY="new-secret,old-secret"):
        assert crypto.decrypt_str(ciphertext) == "s3cret"
