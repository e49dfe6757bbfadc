"""What the gateway knows without asking the database: keys, lines, products and routes.

``load_catalog`` reads everything the request path needs in a handful of queries and
returns an immutable ``Catalog``; the request path only reads the current one. A
background task (``CatalogRefresher``) asks the database for a fingerprint of those
rows every second (one cheap aggregate, ``catalog_fingerprint``) and reloads when it
changes, so a revoked key, a suspended contract or a node taken out of service stops
being used within about a second, and reloads at least every 30 s anyway (month spends
for the budgets' seeds, windows that began). Everything here runs in the gateway's
database thread (``gateway.db``), never on the event loop.

Besides the catalogue's products, the buyers' **deployments** (a catalogue model served
on their reserved GPUs, ``contracts.models.Workload`` of kind deployment): each is a
private model named ``d-<public id>`` that only keys of its buyer organization see,
routed only to its own node, and only while the node reports it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection
from django.db.models import Q

from accounts.models import OPERATOR_ROLES, ApiKey
from capacity.models import NodeStatus, NodeWindow
from contracts.inference_spend import inference_month_spend
from contracts.models import (
    ContractLine,
    ContractState,
    InferenceProduct,
    LineKind,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from gateway import db
from gateway.bounds import MICROS_PER_MINOR, price_ticks

logger = logging.getLogger(__name__)

# Node states that serve: online, or degraded (a GPU complains, the engine may still run).
SERVING_STATES = (NodeStatus.ONLINE, NodeStatus.DEGRADED)
# A deployment's private model name: ``d-`` and its workload's public id.
DEPLOYMENT_MODEL = re.compile(r"^d-[0-9a-f]{32}$")
FINGERPRINT_INTERVAL_SECONDS = 1.0
FULL_RELOAD_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class InferenceLine:
    """A contract's live inference line: what a request for its product bills."""

    line_id: int
    product_slug: str
    product_name: str
    input_price_ticks: int
    output_price_ticks: int
    product_created: int  # Unix seconds, for /v1/models


@dataclass(frozen=True, slots=True)
class ContractView:
    contract_id: int
    is_active: bool
    currency: str
    cap_micros: int | None
    lines: dict[str, InferenceLine]  # by product slug


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """An active API key as the gateway sees it."""

    key_id: int
    organization_id: int
    # False when the key's creator can no longer operate (left, or only reads).
    may_operate: bool
    # The contract of the key's inference line; None = a key without one.
    contract_id: int | None
    cap_micros: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True, slots=True)
class NodeRoute:
    node_id: int
    agent_url: str
    agent_public_key: str
    # Scheduled maintenance or curtailment [start, end) in Unix seconds: not routed then.
    blocked: tuple[tuple[float, float], ...] = ()

    def is_blocked(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.blocked)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A buyer's deployment: a private model only keys of ``organization_id`` may call.

    Billed by the reservation, so its ``line`` (the reserved line, which its receipts
    name) carries no token price: no spend is reserved for it, rate limits still apply.
    """

    model: str  # the private model name, ``d-<public id>``
    organization_id: int
    contract_id: int
    contract_is_active: bool
    line: InferenceLine
    # Its node, while the node reports it running and serves (online or degraded,
    # enrolled, with an agent); None before it runs (its owner gets 503 no_healthy_node).
    route: NodeRoute | None


@dataclass(frozen=True, slots=True)
class Catalog:
    keys: dict[str, KeyGrant]  # by sha256 hex of the key
    contracts: dict[int, ContractView]
    routes: dict[str, tuple[NodeRoute, ...]]  # by product slug
    month: str  # the month the spends are for ("YYYYMM", UTC)
    # Deployments that have not ended, by private model name, and per buyer organization.
    deployments: dict[str, Deployment] = field(default_factory=dict)
    deployments_by_organization: dict[int, tuple[Deployment, ...]] = field(default_factory=dict)
    key_spend_micros: dict[int, int] = field(default_factory=dict)
    contract_spend_micros: dict[int, int] = field(default_factory=dict)
    fingerprint: str = ""
    loaded_at: float = 0.0


EMPTY_CATALOG = Catalog(keys={}, contracts={}, routes={}, month="")


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}{moment.month:02d}"


def _micros(cap_minor: int | None) -> int | None:
    return None if cap_minor is None else cap_minor * MICROS_PER_MINOR


# One row per table the catalog reads: a sum of row hashes and a count, so any insert,
# update or delete of a column the catalog uses changes it.
_FINGERPRINT_SQL = """
SELECT concat_ws('/',
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, key_hash,
      organization_id, created_by_id), 0)), 0) FROM accounts_apikey WHERE revoked_at IS NULL),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, user_id,
      organization_id, role), 0)), 0) FROM accounts_membership),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, line_id,
      api_key_id, monthly_cap_minor, requests_per_minute, tokens_per_minute), 0)), 0)
      FROM contracts_lineapikey),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, contract_id,
      inference_product_id, input_price_per_million_tokens, output_price_per_million_tokens,
      ended_at, ends_at), 0)), 0) FROM contracts_contractline
      WHERE kind IN ('inference', 'reserved')),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, public_id,
      line_id, node_id, inference_product_id, state), 0)), 0) FROM contracts_workload
      WHERE kind = 'deployment' AND ended_at IS NULL),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, state, currency,
      inference_monthly_cap_minor), 0)), 0) FROM contracts_contract),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, slug, name,
      is_active), 0)), 0) FROM contracts_inferenceproduct),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id,
      inferenceproduct_id, node_id), 0)), 0) FROM contracts_inferenceproduct_nodes),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, status,
      agent_url, agent_public_key, enrolled_at), 0)), 0) FROM capacity_node),
  (SELECT count(*) || ':' || coalesce(sum(hashtextextended(concat_ws(',', id, node_id,
      period), 0)), 0) FROM capacity_nodewindow
      WHERE cancelled_at IS NULL AND upper(period) > now())
)
"""


def catalog_fingerprint() -> str:
    with connection.cursor() as cursor:
        cursor.execute(_FINGERPRINT_SQL)
        return str(cursor.fetchone()[0])


def load_catalog(*, now: datetime | None = None) -> Catalog:
    """Everything the request path needs, read in one go (the database thread)."""
    now = now or datetime.now(tz=UTC)
    fingerprint = catalog_fingerprint()
    lines = (
        ContractLine.objects.filter(
            kind=LineKind.INFERENCE, ended_at__isnull=True, inference_product__is_active=True
        )
        .select_related("contract", "inference_product")
        .order_by("pk")
    )
    contracts: dict[int, ContractView] = {}
    for line in lines:
        contract = line.contract
        view = contracts.get(contract.pk)
        if view is None:
            view = contracts[contract.pk] = ContractView(
                contract_id=contract.pk,
                is_active=contract.state == ContractState.ACTIVE,
                currency=contract.currency,
                cap_micros=_micros(contract.inference_monthly_cap_minor),
                lines={},
            )
        product = line.inference_product
        assert product is not None
        # One line per product and contract is the rule; the oldest wins if not.
        view.lines.setdefault(
            product.slug,
            InferenceLine(
                line_id=line.pk,
                product_slug=product.slug,
                product_name=product.name,
                input_price_ticks=price_ticks(line.input_price_per_million_tokens),  # type: ignore[arg-type]
                output_price_ticks=price_ticks(line.output_price_per_million_tokens),  # type: ignore[arg-type]
                product_created=int(product.created_at.timestamp()),
            ),
        )
    keys: dict[str, KeyGrant] = {}
    api_keys = (
        ApiKey.objects.active()
        .with_creator_role()
        .select_related("contract_line_link__line")
        .order_by("pk")
    )
    for api_key in api_keys:
        link = getattr(api_key, "contract_line_link", None)
        contract_id = (
            link.line.contract_id
            if link is not None and link.line.kind == LineKind.INFERENCE
            else None
        )
        keys[api_key.key_hash] = KeyGrant(
            key_id=api_key.pk,
            organization_id=api_key.organization_id,
            may_operate=getattr(api_key, "creator_role", None) in OPERATOR_ROLES,
            contract_id=contract_id,
            cap_micros=_micros(link.monthly_cap_minor) if link else None,
            requests_per_minute=link.requests_per_minute if link else None,
            tokens_per_minute=link.tokens_per_minute if link else None,
        )
    blocked = _blocked_windows(now)
    routes = _load_routes(blocked)
    deployments = _load_deployments(now, blocked)
    by_organization: dict[int, list[Deployment]] = {}
    for deployment in deployments.values():
        by_organization.setdefault(deployment.organization_id, []).append(deployment)
    spend = inference_month_spend(moment=now)
    return Catalog(
        keys=keys,
        contracts=contracts,
        routes=routes,
        deployments=deployments,
        deployments_by_organization={
            organization_id: tuple(owned) for organization_id, owned in by_organization.items()
        },
        month=month_of(now),
        key_spend_micros=spend.by_key_micros,
        contract_spend_micros=spend.by_contract_micros,
        fingerprint=fingerprint,
        loaded_at=time.monotonic(),
    )


def _blocked_windows(now: datetime) -> dict[int, list[tuple[float, float]]]:
    """Scheduled maintenance and curtailment not over yet, per node, in Unix seconds."""
    blocked: dict[int, list[tuple[float, float]]] = {}
    windows = NodeWindow.objects.scheduled().filter(period__endswith__gt=now)
    for window in windows.only("node_id", "period"):
        blocked.setdefault(window.node_id, []).append(
            (window.period.lower.timestamp(), window.period.upper.timestamp())
        )
    return blocked


def _load_routes(blocked: dict[int, list[tuple[float, float]]]) -> dict[str, tuple[NodeRoute, ...]]:
    routes: dict[str, tuple[NodeRoute, ...]] = {}
    through = InferenceProduct.nodes.through
    pairs = (
        through.objects.filter(
            inferenceproduct__is_active=True,
            node__status__in=SERVING_STATES,
            node__enrolled_at__isnull=False,
        )
        .exclude(Q(node__agent_url="") | Q(node__agent_public_key=""))
        .values_list(
            "inferenceproduct__slug", "node_id", "node__agent_url", "node__agent_public_key"
        )
        .order_by("node_id")
    )
    collected: dict[str, list[NodeRoute]] = {}
    for slug, node_id, agent_url, agent_key in pairs:
        collected.setdefault(slug, []).append(
            NodeRoute(
                node_id=node_id,
                agent_url=agent_url.rstrip("/"),
                agent_public_key=agent_key,
                blocked=tuple(blocked.get(node_id, ())),
            )
        )
    for slug, nodes in collected.items():
        routes[slug] = tuple(nodes)
    return routes


def _load_deployments(
    now: datetime, blocked: dict[int, list[tuple[float, float]]]
) -> dict[str, Deployment]:
    """Deployments that have not ended, on lines still in force (one query)."""
    workloads = (
        Workload.objects.active()
        .filter(kind=WorkloadKind.DEPLOYMENT)
        .filter(Q(line__ended_at__isnull=True) | Q(line__ended_at__gt=now))
        .filter(Q(line__ends_at__isnull=True) | Q(line__ends_at__gt=now))
        .select_related("line__contract", "inference_product", "node")
        .order_by("pk")
    )
    deployments: dict[str, Deployment] = {}
    for workload in workloads:
        product, node, contract = workload.inference_product, workload.node, workload.line.contract
        assert product is not None  # a deployment has one (check constraint)
        serves = (
            workload.state == WorkloadState.RUNNING
            and node.status in SERVING_STATES
            and node.enrolled_at is not None
            and bool(node.agent_url)
            and bool(node.agent_public_key)
        )
        deployments[workload.served_model_name] = Deployment(
            model=workload.served_model_name,
            organization_id=contract.buyer_id,
            contract_id=contract.pk,
            contract_is_active=contract.state == ContractState.ACTIVE,
            line=InferenceLine(
                line_id=workload.line_id,
                product_slug=product.slug,
                product_name=product.name,
                input_price_ticks=0,
                output_price_ticks=0,
                product_created=int(workload.created_at.timestamp()),
            ),
            route=NodeRoute(
                node_id=node.pk,
                agent_url=node.agent_url.rstrip("/"),
                agent_public_key=node.agent_public_key,
                blocked=tuple(blocked.get(node.pk, ())),
            )
            if serves
            else None,
        )
    return deployments


class CatalogRefresher:
    """Keeps ``current`` fresh: a fingerprint every second, a reload when it changes."""

    def __init__(self, *, on_reload: Callable[[Catalog], None] | None = None) -> None:
        self.current: Catalog = EMPTY_CATALOG
        self._on_reload = on_reload
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0

    async def start(self) -> None:
        self._set(await db.run(load_catalog))
        self._task = asyncio.create_task(self._run(), name="gateway-catalog")

    def _set(self, catalog: Catalog) -> None:
        self.current = catalog
        self.reloads += 1
        if self._on_reload is not None:
            self._on_reload(catalog)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FINGERPRINT_INTERVAL_SECONDS)
            try:
                stale = time.monotonic() - self.current.loaded_at > FULL_RELOAD_INTERVAL_SECONDS
                if stale or month_of(datetime.now(tz=UTC)) != self.current.month:
                    self._set(await db.run(load_catalog))
                    continue
                if await db.run(catalog_fingerprint) != self.current.fingerprint:
                    self._set(await db.run(load_catalog))
            except Exception:
                logger.exception("gateway catalog refresh failed; serving the last one")
                await db.run(db.reset_connection)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
