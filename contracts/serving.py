"""Serving: partners opt their nodes in to (and out of) serving inference products.

The gateway routes a product's requests only to nodes in ``InferenceProduct.nodes``, and
metering accepts that product's tokens only from them. A node may opt in only when its
GPUs can hold one replica of the model: the GPU model's memory x the node's GPU count is
at least the product's ``memory_required_mib``. Opting out is always allowed; requests
already routed finish, new ones go elsewhere within the gateway's cache interval.

The rule lives here (contracts owns ``InferenceProduct``); capacity never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from accounts.audit import audit
from accounts.models import User
from capacity.models import Node
from contracts.models import InferenceProduct


def node_memory_mib(node: Node) -> int:
    """Total GPU memory of ``node`` in MiB: its GPU model's memory x its GPU count."""
    return node.gpu_model.memory_mib * node.gpu_count


def memory_shortfall_message(*, node: Node, product: InferenceProduct) -> str | None:
    """Why ``node`` cannot hold ``product`` (plain words), or None when it can."""
    available = node_memory_mib(node)
    if available >= product.memory_required_mib:
        return None
    return (
        f"{product.name} needs {product.memory_required_mib:,} MiB of GPU memory; "
        f"{node.name} has {available:,} MiB ({node.gpu_count} x {node.gpu_model.name})."
    )


@dataclass(frozen=True)
class ServingOption:
    """One active product as a node's partner sees it."""

    product: InferenceProduct
    serving: bool
    # None when the node may serve it; otherwise why not.
    refusal: str | None

    @property
    def eligible(self) -> bool:
        return self.refusal is None


def node_serving_options(*, node: Node) -> list[ServingOption]:
    """Every active product (and any inactive one the node still serves), whether the
    node serves it and whether it may. Two queries."""
    served = set(
        InferenceProduct.nodes.through.objects.filter(node=node).values_list(
            "inferenceproduct_id", flat=True
        )
    )
    products = InferenceProduct.objects.filter(is_active=True) | InferenceProduct.objects.filter(
        pk__in=served
    )
    return [
        ServingOption(
            product=product,
            serving=product.pk in served,
            refusal=memory_shortfall_message(node=node, product=product),
        )
        for product in products.distinct().order_by("name")
    ]


def _check_can_serve(*, node: Node, product: InferenceProduct) -> None:
    if node.is_retired:
        raise ValidationError("A retired node cannot serve models.", code="node_retired")
    if not product.is_active:
        raise ValidationError(f"{product.name} is no longer sold.", code="product_inactive")
    shortfall = memory_shortfall_message(node=node, product=product)
    if shortfall is not None:
        raise ValidationError(shortfall, code="insufficient_memory")


@transaction.atomic
def node_serving_set(
    *, node: Node, product: InferenceProduct, serving: bool, actor: User | None
) -> bool:
    """Opt ``node`` in to serving ``product`` (``serving=True``) or out of it. Returns
    whether anything changed; a change is audited on the node's organization. Opting in
    is refused (``ValidationError``) for a retired node, an inactive product or a node
    whose GPU memory is below the product's need."""
    through = InferenceProduct.nodes.through
    if serving:
        _check_can_serve(node=node, product=product)
        # The through table's (product, node) unique index makes a repeat a no-op.
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {through._meta.db_table} (inferenceproduct_id, node_id) "  # noqa: S608
                "VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING id",
                [product.pk, node.pk],
            )
            changed = cursor.fetchone() is not None
    else:
        deleted, _ = through.objects.filter(
            inferenceproduct_id=product.pk, node_id=node.pk
        ).delete()
        changed = deleted > 0
    if changed:
        audit(
            action="node.inference_opted_in" if serving else "node.inference_opted_out",
            actor=actor,
            organization=node.site.organization,
            target=node,
            product=product.slug,
            node_memory_mib=node_memory_mib(node),
            memory_required_mib=product.memory_required_mib,
        )
    return changed
