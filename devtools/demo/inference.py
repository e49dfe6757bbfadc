"""Demo inference: fleet nodes serve the demo product; the demo buyer has a line and a key.

Idempotent. The first ``SERVING_NODES`` enrolled demo nodes opt in to
``DEMO_INFERENCE_PRODUCT`` (``contracts.serving``) and are polled once at once (metering's
own batch, as a sweep would), so they are online, the only state the gateway routes to,
before ``make run`` prints its curl line rather than a poll interval later; the demo buyer gets an inference line of it (``contracts.on_demand``) and a key
named "Demo key" whose plaintext is written to ``DEMO_API_KEY_FILE`` (mode 0600). A key
file whose key is still the line's active key is kept; otherwise the old demo key is
revoked and a new one written, so the file always holds a working key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Case, When
from django.test import override_settings
from django.utils import timezone

from accounts import services as account_services
from accounts.models import ApiKey, Organization, Role, User
from capacity.metering.batch import poll_and_store
from capacity.metering.models import NodePollState
from capacity.metering.sweep import ensure_poll_states
from capacity.models import Node, NodeStatus
from contracts import on_demand, serving
from contracts.models import ContractLine, InferenceProduct, LineApiKey, LineKind
from devtools.demo import DEMO_API_KEY_FILE, DEMO_INFERENCE_PRODUCT

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

SERVING_NODES = 4
DEMO_KEY_NAME = "Demo key"


def _serving_nodes(partners: list[Organization]) -> list[Node]:
    """Opt enrolled demo nodes in until ``SERVING_NODES`` serve the demo product, the first
    partner's (the demo partner login's) first, so its node pages show what they serve."""
    product = InferenceProduct.objects.get(slug=DEMO_INFERENCE_PRODUCT)
    serving_now = product.nodes.filter(site__organization__in=partners).count()
    nodes = list(
        Node.objects.filter(site__organization__in=partners, enrolled_at__isnull=False)
        .exclude(status=NodeStatus.RETIRED)
        .exclude(inference_products=product)
        .annotate(other_partner=Case(When(site__organization=partners[0], then=0), default=1))
        .select_related("site__organization", "gpu_model")
        .order_by("other_partner", "name")[: max(SERVING_NODES - serving_now, 0)]
    )
    for node in nodes:
        serving.node_serving_set(node=node, product=product, serving=True, actor=None)
    return list(product.nodes.all())


def _poll_now(nodes: list[Node]) -> int:
    """Poll ``nodes`` once (usage and health), as the next sweep would; how many are online.

    Enrollment leaves a node unreachable until metering first hears from it, and the
    gateway routes only to online (or degraded) nodes.
    """
    now = timezone.now()
    ensure_poll_states(now=now)
    node_ids = [node.pk for node in nodes]
    poll_and_store(
        node_ids,
        now=now,
        interval_seconds=int(settings.METERING_POLL_INTERVAL_SECONDS),
        always_check_health=True,
    )
    # Due again at once: beat's first sweep polls them with the rest of the fleet, so
    # from then on they are polled in step with its sweeps, not up to an interval later.
    NodePollState.objects.filter(node_id__in=node_ids).update(next_poll_at=now)
    return Node.objects.filter(pk__in=node_ids, status=NodeStatus.ONLINE).count()


def _line(buyer: Organization) -> ContractLine:
    existing = (
        ContractLine.objects.current()
        .filter(
            contract__buyer=buyer,
            kind=LineKind.INFERENCE,
            inference_product__slug=DEMO_INFERENCE_PRODUCT,
        )
        .select_related("contract__buyer", "inference_product")
        .first()
    )
    if existing is not None:
        return existing
    # The demo buyer has no card until someone saves one through localstripe: the demo
    # line is enabled as if it had (the development switch, for this call only).
    with override_settings(CONTRACTS_ASSUME_PAYMENT_METHOD=True):
        return on_demand.on_demand_enable(
            buyer=buyer,
            actor=_owner(buyer),
            inference_product=InferenceProduct.objects.get(slug=DEMO_INFERENCE_PRODUCT),
        )


def _owner(buyer: Organization) -> User:
    return buyer.memberships.filter(role=Role.OWNER).select_related("user").order_by("pk")[0].user


def _key(line: ContractLine, key_file: Path) -> str:
    if key_file.exists():
        secret = key_file.read_text().strip()
        if LineApiKey.objects.filter(
            line=line, api_key__key_hash=ApiKey.hash_key(secret), api_key__revoked_at__isnull=True
        ).exists():
            return secret
    owner = _owner(line.contract.buyer)
    for stale in ApiKey.objects.active().filter(
        organization=line.contract.buyer, name=DEMO_KEY_NAME
    ):
        account_services.api_key_revoke(api_key=stale, actor=owner)
    _api_key, secret = on_demand.line_api_key_create(line=line, name=DEMO_KEY_NAME, actor=owner)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    key_file.chmod(0o600)
    return secret


def seed_inference(
    *,
    buyer: Organization,
    partners: list[Organization],
    key_file: Path | None = None,
    out: SupportsWrite[str] = sys.stdout,
) -> dict[str, int | str]:
    """Opt demo nodes in, give the buyer a line and a key; returns a summary."""
    key_file = key_file or Path(settings.BASE_DIR) / DEMO_API_KEY_FILE
    nodes = _serving_nodes(partners)
    online = _poll_now(nodes) if nodes else 0
    if not nodes:
        out.write(
            f"warning: no enrolled demo node serves {DEMO_INFERENCE_PRODUCT}; "
            "run seed_demo again with the fleet up\n"
        )
    elif not online:
        out.write(
            f"warning: no demo node serving {DEMO_INFERENCE_PRODUCT} answered its first poll; "
            "the gateway routes to them once metering reaches them\n"
        )
    line = _line(buyer)
    _key(line, key_file)
    return {
        "serving_nodes": len(nodes),
        "online_nodes": online,
        "line": line.pk,
        "key_file": str(key_file),
    }
