"""Reads of the contracts domain: free GPUs, contracts and their lines, the seams.

Every function takes the organization (or an object already scoped to it) and returns
querysets with the joins their callers render, so list pages run a fixed number of queries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from accounts.models import ApiKey, Organization
from capacity.models import GpuDevice, Node, NodeStatus, Offer
from capacity.selectors import ServedProduct
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
    SlaCreditTier,
    SlaPolicy,
)


def window(start: datetime, end: datetime) -> DateTimeTZRange:
    """The half-open range ``[start, end)`` every allocation and search window uses."""
    return DateTimeTZRange(start, end, "[)")


def _pool_devices(*, site_id: int, gpu_model_id: int) -> QuerySet[GpuDevice]:
    """GPU devices of a site's non-retired nodes of one GPU model: what an offer sells."""
    return GpuDevice.objects.filter(node__site_id=site_id, node__gpu_model_id=gpu_model_id).exclude(
        node__status=NodeStatus.RETIRED
    )


def _free_in(
    devices: QuerySet[GpuDevice], *, start: datetime, end: datetime
) -> QuerySet[GpuDevice]:
    busy = Allocation.objects.filter(gpu_device=OuterRef("pk"), period__overlap=window(start, end))
    return devices.filter(~Exists(busy))


def free_devices(*, offer: Offer, start: datetime, end: datetime) -> QuerySet[GpuDevice]:
    """Devices of the offer's pool with no allocation overlapping ``[start, end)``.

    Ordered by node and index, so a reservation packs onto as few nodes as it can.
    """
    devices = _pool_devices(site_id=offer.site_id, gpu_model_id=offer.gpu_model_id)
    return _free_in(devices, start=start, end=end).order_by("node_id", "index")


_LOCK_FREE_DEVICES_SQL = """
SELECT device.id FROM {devices} AS device JOIN {nodes} AS node ON node.id = device.node_id
WHERE node.site_id = %s AND node.gpu_model_id = %s AND node.status <> %s
  AND NOT EXISTS (
    SELECT 1 FROM {allocations} AS allocation
    WHERE allocation.gpu_device_id = device.id AND allocation.period && tstzrange(%s, %s, '[)')
  )
ORDER BY device.node_id, device.index
LIMIT %s
FOR NO KEY UPDATE OF device SKIP LOCKED
"""


def lock_free_device_ids(*, offer: Offer, start: datetime, end: datetime, limit: int) -> list[int]:
    """Ids of up to ``limit`` devices of ``free_devices``, locked ``FOR NO KEY UPDATE SKIP
    LOCKED`` (inside a transaction). The same query as ``free_devices``, written out: it
    is checkout's hot path, where a race's losers must be refused in one cheap statement."""
    sql = _LOCK_FREE_DEVICES_SQL.format(
        devices=GpuDevice._meta.db_table,
        nodes=Node._meta.db_table,
        allocations=Allocation._meta.db_table,
    )
    params = (offer.site_id, offer.gpu_model_id, NodeStatus.RETIRED.value, start, end, limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


_FREE_GPUS_BY_POOL_SQL = """
SELECT node.site_id, node.gpu_model_id, count(*)
FROM {devices} AS device JOIN {nodes} AS node ON node.id = device.node_id
WHERE node.status <> %s {model_condition}
  AND NOT EXISTS (
    SELECT 1 FROM {allocations} AS allocation
    WHERE allocation.gpu_device_id = device.id AND allocation.period && tstzrange(%s, %s, '[)')
  )
GROUP BY node.site_id, node.gpu_model_id
"""


def free_gpus_by_pool(
    *, start: datetime, end: datetime, gpu_model_id: int | None = None
) -> dict[tuple[int, int], int]:
    """Free GPUs over ``[start, end)`` of every pool, by ``(site_id, gpu_model_id)``; pools
    with none free are absent. The ``free_devices`` rule for all pools at once: one pass
    over devices with a hash anti-join on the window's allocations, where a count per
    offer would probe the allocation index once per device of every pool."""
    sql = _FREE_GPUS_BY_POOL_SQL.format(
        devices=GpuDevice._meta.db_table,
        nodes=Node._meta.db_table,
        allocations=Allocation._meta.db_table,
        model_condition="AND node.gpu_model_id = %s" if gpu_model_id else "",
    )
    params: list[int | str | datetime] = [NodeStatus.RETIRED.value]
    if gpu_model_id:
        params.append(gpu_model_id)
    params += [start, end]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {(site_id, model_id): free for site_id, model_id, free in cursor.fetchall()}


def free_gpu_count(*, offer: Offer, start: datetime, end: datetime) -> int:
    """GPUs of ``offer`` free over the window, never more than the offer lists."""
    return min(offer.gpu_count, free_devices(offer=offer, start=start, end=end).count())


# -- contracts --------------------------------------------------------------------------


def contract_list(*, organization: Organization) -> QuerySet[Contract]:
    return Contract.objects.for_organization(organization).select_related("sla_policy")


def contract_lines(*, contract: Contract) -> QuerySet[ContractLine]:
    return (
        ContractLine.objects.filter(contract=contract)
        .select_related("offer__site", "offer__gpu_model", "inference_product")
        .prefetch_related(
            Prefetch(
                "api_keys",
                queryset=LineApiKey.objects.select_related("api_key").order_by("-created_at"),
            )
        )
        .order_by("pk")
    )


def buyer_inference_lines(*, organization: Organization) -> QuerySet[ContractLine]:
    """The buyer's current inference lines on active contracts: what the playground and
    the gateway can serve for it."""
    return (
        ContractLine.objects.for_organization(organization)
        .filter(
            kind=LineKind.INFERENCE,
            ended_at__isnull=True,
            contract__state=ContractState.ACTIVE,
        )
        .select_related("contract", "inference_product")
        .order_by("contract_id", "inference_product__name")
    )


def contract_allocations(*, contract: Contract) -> QuerySet[Allocation]:
    return (
        Allocation.objects.filter(line__contract=contract)
        .select_related("gpu_device__node__site", "line")
        .order_by("line_id", "gpu_device__node__name", "gpu_device__index", "period")
    )


def inference_products() -> QuerySet[InferenceProduct]:
    return InferenceProduct.objects.filter(is_active=True).order_by("name")


def served_inference_products(*, node_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{node id: {product slug: tokens per GPU-second}}: the products each node opted in
    to serve. Registered with metering (``capacity.metering.selectors``) at start-up:
    inference tokens count only from a node that serves the product, at most at its
    throughput."""
    served: dict[int, dict[str, int]] = {}
    for node_id, slug, tokens_per_second in InferenceProduct.nodes.through.objects.filter(
        node_id__in=list(node_ids)
    ).values_list(
        "node_id", "inferenceproduct__slug", "inferenceproduct__max_tokens_per_second_per_gpu"
    ):
        served.setdefault(node_id, {})[slug] = tokens_per_second
    return served


def node_served_products(*, node_id: int) -> list[ServedProduct]:
    """The inference products the node is opted in to serve, by name: one query.
    Registered with capacity (``capacity.selectors``) for the partner's node page."""
    fields = [field.name for field in dataclasses.fields(ServedProduct)]
    rows = InferenceProduct.objects.filter(nodes__id=node_id).order_by("name").values(*fields)
    return [ServedProduct(**row) for row in rows]


def node_has_future_allocations(*, node_id: int, now: datetime) -> bool:
    """Whether an allocation holds one of the node's GPUs at ``now`` or later.

    Registered with capacity (``capacity.selectors``) in ``ContractsConfig.ready``: capacity
    asks before retiring a node without importing contracts.
    """
    return Allocation.objects.filter(
        gpu_device__node_id=node_id, period__overlap=DateTimeTZRange(now, None, "[)")
    ).exists()


def offer_committed_gpus(*, offer_id: int, now: datetime) -> int:
    """The most GPUs of the offer that reservations hold at one moment from ``now`` on:
    the least the offer may list. A sweep over the allocations' periods (half-open, so one
    ending where another starts is not counted twice).

    Registered with capacity (``capacity.selectors``) in ``ContractsConfig.ready``: capacity
    asks before an offer is shrunk without importing contracts.
    """
    periods = Allocation.objects.filter(
        line__offer_id=offer_id, period__overlap=DateTimeTZRange(now, None, "[)")
    ).values_list("period", flat=True)
    steps: list[tuple[datetime, int]] = []
    for period in periods:
        # A running instance holds its GPUs until stopped: open-ended.
        steps += [
            (max(period.lower, now), 1),
            (period.upper or datetime.max.replace(tzinfo=UTC), -1),
        ]
    held = peak = 0
    for _, step in sorted(steps):  # at one instant an end (-1) sorts before a start (+1)
        held += step
        peak = max(peak, held)
    return peak


def api_key_refusal(api_key: ApiKey) -> str | None:
    """Why ``api_key`` must not authenticate now: it is linked to a line of a suspended
    contract (dunning's end). Registered with ``accounts.selectors`` at start-up."""
    if LineApiKey.objects.filter(
        api_key=api_key, line__contract__state=ContractState.SUSPENDED
    ).exists():
        return "This API key's contract is suspended until its overdue invoice is paid."
    return None


def api_key_uses(api_key_ids: list[int]) -> dict[int, str]:
    """{key id: "Inference: <product> on <contract>"} for keys linked to a line: what the
    keys page shows. Registered with ``accounts.selectors`` at start-up; one query."""
    links = LineApiKey.objects.filter(api_key_id__in=api_key_ids).select_related(
        "line__inference_product", "line__offer__gpu_model", "line__contract"
    )
    uses: dict[int, str] = {}
    for link in links:
        line = link.line
        what = (
            line.inference_product.name
            if line.inference_product
            else (line.offer.gpu_model.name if line.offer else "")
        )
        uses[link.api_key_id] = f"{line.get_kind_display()}: {what} on {line.contract.reference}"
    return uses


# The seam between checkout and payments. Billing keeps the buyer's Stripe customer and
# the card saved for it through a SetupIntent; it registers its answer here in
# ``BillingConfig.ready``, so contracts never imports billing.
_payment_method_checks: list[Callable[[Organization], bool]] = []


def register_payment_method_check(check: Callable[[Organization], bool]) -> None:
    """Called once by the app that keeps payment methods (billing), at start-up."""
    if check not in _payment_method_checks:
        _payment_method_checks.append(check)


def buyer_has_payment_method(organization: Organization) -> bool:
    """Whether the buyer can pay what they sign: a saved card (billing's answer).

    Without one, the setting ``CONTRACTS_ASSUME_PAYMENT_METHOD`` answers: on in
    development (``DEBUG``) so demos need no Stripe, off otherwise, so production cannot
    sign contracts nobody can pay.
    """
    if any(check(organization) for check in _payment_method_checks):
        return True
    return bool(getattr(settings, "CONTRACTS_ASSUME_PAYMENT_METHOD", settings.DEBUG))


@dataclass(frozen=True)
class ReservationTerms:
    """The terms a reservation signs up to, shown with its quote and confirmation: the
    buyer's open contract's when checkout would add the line to it, else a new
    contract's (what ``checkout.open_contract_for_update`` creates)."""

    # The open contract the line joins; None = checkout signs a new contract.
    contract: Contract | None
    auto_renew: bool
    # Percent of the reserved charge left in the term, charged when cancelled early.
    early_termination_fee_percent: Decimal
    sla_policy: SlaPolicy | None
    # The SLA's credit tiers, highest availability first.
    sla_tiers: list[SlaCreditTier]

    @property
    def sla_tier_rows(self) -> list[tuple[Decimal, Decimal | None, Decimal]]:
        """``(from percent, below percent or None for the top tier, credit percent)``."""
        uppers: list[Decimal | None] = [None]
        uppers += [tier.min_availability_percent for tier in self.sla_tiers[:-1]]
        return [
            (tier.min_availability_percent, upper, tier.credit_percent)
            for tier, upper in zip(self.sla_tiers, uppers, strict=True)
        ]


def reservation_terms(*, buyer: Organization | None, currency: str) -> ReservationTerms:
    """The terms of a reservation in ``currency`` for ``buyer`` (None: someone not signed
    in, who would sign a new contract). Three queries at most."""
    contract = (
        Contract.objects.filter(buyer=buyer, currency=currency)
        .open()
        .select_related("sla_policy")
        .first()
        if buyer is not None
        else None
    )
    if contract is not None:
        auto_renew = contract.auto_renew and not contract.cancel_at_term_end
        fee_percent = contract.early_termination_fee_percent
        policy = contract.sla_policy
    else:
        auto_renew = True  # checkout's default
        fee_percent = Contract._meta.get_field("early_termination_fee_percent").default
        policy = SlaPolicy.objects.filter(is_default=True).order_by("pk").first()
    tiers = list(policy.tiers.order_by("-min_availability_percent")) if policy else []
    return ReservationTerms(
        contract=contract,
        auto_renew=auto_renew,
        early_termination_fee_percent=fee_percent,
        sla_policy=policy,
        sla_tiers=tiers,
    )
