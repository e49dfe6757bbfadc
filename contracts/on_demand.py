"""On demand: enable on-demand GPU or an inference product on a contract, and its API keys.

An on-demand line has no allocations: it is billed from metered usage attributed to the
organization API keys linked to it (``contracts.attribution``). Keys are ordinary
organization keys (``accounts.services.api_key_create``) plus a link to the line;
revoking one (``accounts.services.api_key_revoke``) stops its attribution.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import services as account_services
from accounts.audit import audit, record
from accounts.models import ApiKey, Organization, User
from capacity.models import Offer
from contracts import lifecycle
from contracts.checkout import open_contract_for_update
from contracts.models import (
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
)
from contracts.selectors import buyer_has_payment_method
from contracts.terms import add_months


@transaction.atomic
def on_demand_enable(
    *,
    buyer: Organization,
    actor: User | None,
    offer: Offer | None = None,
    inference_product: InferenceProduct | None = None,
    now: datetime | None = None,
) -> ContractLine:
    """Add an on-demand GPU line (``offer``) or an inference line (``inference_product``)
    to the buyer's open contract, creating a monthly contract when there is none. The
    price is the offer's or product's price now. One current line per offer or product."""
    now = now or timezone.now()
    if (offer is None) == (inference_product is None):
        raise ValidationError("Choose either an offer (on-demand GPU) or an inference product.")
    if not buyer.is_buyer:
        raise ValidationError("Only buyer organizations can buy on demand.", code="not_buyer")
    if not buyer_has_payment_method(buyer):
        raise ValidationError("Add a payment method first.", code="no_payment_method")
    if offer is not None and not offer.is_active:
        raise ValidationError("This offer is no longer listed.", code="offer_inactive")
    if inference_product is not None and not inference_product.is_active:
        raise ValidationError("This product is no longer sold.", code="product_inactive")
    currency = offer.currency if offer is not None else inference_product.currency  # type: ignore[union-attr]
    contract, created = open_contract_for_update(
        buyer=buyer,
        currency=currency,
        starts_at=now,
        ends_at=add_months(now, 1),
        term_months=1,
        now=now,
    )
    if contract.state == ContractState.SUSPENDED:
        raise ValidationError("Your contract is suspended.", code="suspended")
    existing = ContractLine.objects.current().filter(
        contract=contract, offer=offer, inference_product=inference_product
    )
    if existing.exclude(kind=LineKind.RESERVED).exists():
        raise ValidationError("This is already enabled on your contract.", code="duplicate")
    if offer is not None:
        line = ContractLine.objects.create(
            contract=contract,
            kind=LineKind.ON_DEMAND_GPU,
            offer=offer,
            price_per_gpu_hour=offer.on_demand_price_per_gpu_hour,
            starts_at=now,
        )
    else:
        assert inference_product is not None
        line = ContractLine.objects.create(
            contract=contract,
            kind=LineKind.INFERENCE,
            inference_product=inference_product,
            input_price_per_million_tokens=inference_product.input_price_per_million_tokens,
            output_price_per_million_tokens=inference_product.output_price_per_million_tokens,
            starts_at=now,
        )
    audit(
        action="contract_line.on_demand_enabled",
        actor=actor,
        organization=buyer,
        target=line,
        contract_id=contract.pk,
        kind=line.kind,
        offer_id=offer.pk if offer else None,
        inference_product=inference_product.slug if inference_product else None,
    )
    if created:
        record(lifecycle.signed_activation_event(contract=contract, actor=actor))
    elif contract.state == ContractState.DRAFT:
        # A draft made elsewhere (staff): enabling this line signs it.
        lifecycle.contract_activate(contract=contract, actor=actor, now=now)
    return line


@transaction.atomic
def line_api_key_create(*, line: ContractLine, name: str, actor: User) -> tuple[ApiKey, str]:
    """Create an organization API key for an on-demand line; return it with its secret
    (shown once). Owners and admins only (``api_key_create`` checks)."""
    if line.kind == LineKind.RESERVED:
        raise ValidationError("API keys belong to on-demand lines.", code="reserved_line")
    if line.ended_at is not None or line.contract.state != ContractState.ACTIVE:
        raise ValidationError(
            "This line is not active; keys can only be created for active lines.",
            code="inactive_line",
        )
    api_key, secret = account_services.api_key_create(
        organization=line.contract.buyer, name=name, created_by=actor
    )
    LineApiKey.objects.create(line=line, api_key=api_key)
    audit(
        action="contract_line.api_key_linked",
        actor=actor,
        organization=line.contract.buyer,
        target=line,
        api_key_id=api_key.pk,
        prefix=api_key.prefix,
    )
    return api_key, secret
