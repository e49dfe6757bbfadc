"""The default SLA policy (the product sheet's tiers) and a starter inference catalog.

Slugs match the ``workload.ref`` the reference agent reports for inference windows.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

DEFAULT_TIERS = (
    # (availability at least, credit percent)
    (Decimal("99.50"), Decimal("0")),
    (Decimal("99.00"), Decimal("10")),
    (Decimal("95.00"), Decimal("25")),
    (Decimal("0.00"), Decimal("50")),
)

PRODUCTS = (
    ("llama-3.1-8b-instruct", "Llama 3.1 8B Instruct", "0.0500", "0.0800"),
    ("llama-3.1-70b-instruct", "Llama 3.1 70B Instruct", "0.3500", "0.4000"),
    ("mistral-small-24b-instruct", "Mistral Small 24B Instruct", "0.1000", "0.3000"),
    ("qwen2.5-coder-32b-instruct", "Qwen2.5 Coder 32B Instruct", "0.0700", "0.1600"),
)


def ensure_defaults(*, sla_policy: Any, sla_credit_tier: Any, inference_product: Any) -> None:
    """Reference data of contracts (see config.reference_data). Takes the model classes
    ``SlaPolicy``, ``SlaCreditTier`` and ``InferenceProduct``."""
    policy, _ = sla_policy.objects.get_or_create(
        name="Standard", defaults={"target_percent": Decimal("99.50"), "is_default": True}
    )
    for threshold, credit in DEFAULT_TIERS:
        sla_credit_tier.objects.get_or_create(
            policy=policy, min_availability_percent=threshold, defaults={"credit_percent": credit}
        )
    # Only the slugs are read, so a database migrated to an older schema (whose rows the
    # catalogue migration already holds) is not asked for today's columns.
    existing = set(inference_product.objects.values_list("slug", flat=True))
    for slug, name, input_price, output_price in PRODUCTS:
        if slug not in existing:
            inference_product.objects.create(
                slug=slug,
                name=name,
                input_price_per_million_tokens=Decimal(input_price),
                output_price_per_million_tokens=Decimal(output_price),
            )
