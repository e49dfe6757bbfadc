"""Writes of the capacity domain: sites, nodes, windows, offers.

Every function is keyword-only, runs in one transaction, raises
``django.core.exceptions.ValidationError`` (with field keys where a field is at fault)
for a refused action — leaving nothing changed — and writes an audit event. Enrollment
(codes and the agent's registration) lives in ``capacity.enrollment``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.utils import timezone

from accounts.audit import audit
from accounts.models import Organization, User
from capacity import selectors
from capacity.countries import is_country_code, regions_of
from capacity.enrollment import IssuedCode, issue_enrollment_code, node_enroll
from capacity.models import (
    MAX_PRICE_PER_GPU_HOUR,
    NODE_MAX_CPU_CORES,
    NODE_MAX_GPUS,
    NODE_MAX_RAM_GIB,
    PRICE_BOUND_MESSAGE,
    SITE_FIGURE_MESSAGES,
    SITE_MAX_ENERGY_PRICE_PER_KWH,
    SITE_MAX_POWER_CAPACITY_KW,
    WINDOW_MAX_LEAD,
    WINDOW_MAX_LENGTH,
    Currency,
    EnergySource,
    EnrollmentCode,
    GpuModel,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Region,
    Site,
    WindowKind,
)

__all__ = [
    "IssuedCode",
    "NodeCreated",
    "enrollment_code_regenerate",
    "node_create",
    "node_enroll",
    "node_retire",
    "offer_create",
    "offer_deactivate",
    "offer_update",
    "register_window_listener",
    "site_create",
    "site_update",
    "window_cancel",
    "window_schedule",
]


def _constraint_name(error: IntegrityError) -> str | None:
    return getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)


def _save_unique(obj: models.Model, *, constraint: str, field: str, message: str) -> None:
    """Save ``obj``; a violation of the unique ``constraint`` becomes a field error."""
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError as error:
        if _constraint_name(error) == constraint:
            raise ValidationError({field: message}) from error
        raise


def _changes(obj: models.Model, data: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = set(data) - allowed
    if unknown:
        raise ValidationError(f"These fields cannot be changed: {', '.join(sorted(unknown))}")
    return {name: value for name, value in data.items() if getattr(obj, name) != value}


# ----------------------------------------------------------------------------- sites

SITE_FIELDS = frozenset(
    {
        "name",
        "country",
        "region",
        "latitude",
        "longitude",
        "power_capacity_kw",
        "energy_source",
        "energy_price_per_kwh",
        "energy_currency",
    }
)


def _validate_site(site: Site) -> None:
    errors: dict[str, str] = {}
    if not site.name.strip():
        errors["name"] = "Name is required."
    if not is_country_code(site.country):
        errors["country"] = (
            f"{site.country!r} is not an ISO 3166 alpha-2 country code (e.g. US, OM, PY)."
        )
    if site.region not in Region.values:
        errors["region"] = f"Unknown region {site.region!r}."
    elif "country" not in errors and site.region not in regions_of(site.country):
        allowed = " or ".join(sorted(Region(region).label for region in regions_of(site.country)))
        errors["region"] = (
            f"A site in {site.country} is in {allowed}, not {Region(site.region).label}."
        )
    if not Decimal(-90) <= Decimal(site.latitude) <= Decimal(90):
        errors["latitude"] = SITE_FIGURE_MESSAGES["latitude"]
    if not Decimal(-180) <= Decimal(site.longitude) <= Decimal(180):
        errors["longitude"] = SITE_FIGURE_MESSAGES["longitude"]
    if (
        site.power_capacity_kw is None
        or not 1 <= site.power_capacity_kw <= SITE_MAX_POWER_CAPACITY_KW
    ):
        errors["power_capacity_kw"] = (
            f"Power capacity must be between 1 and {SITE_MAX_POWER_CAPACITY_KW:,} kW."
        )
    if site.energy_source not in EnergySource.values:
        errors["energy_source"] = f"Unknown energy source {site.energy_source!r}."
    if not 0 <= Decimal(site.energy_price_per_kwh) <= SITE_MAX_ENERGY_PRICE_PER_KWH:
        errors["energy_price_per_kwh"] = SITE_FIGURE_MESSAGES["energy_price_per_kwh"]
    if site.energy_currency not in Currency.values:
        errors["energy_currency"] = f"Unsupported currency {site.energy_currency!r}."
    if errors:
        raise ValidationError(errors)


def _save_site(site: Site) -> None:
    _validate_site(site)
    _save_unique(
        site,
        constraint="site_unique_name_per_org",
        field="name",
        message="You already have a site with this name.",
    )


@transaction.atomic
def site_create(
    *,
    organization: Organization,
    actor: User | None,
    name: str,
    country: str,
    region: str,
    latitude: Decimal,
    longitude: Decimal,
    power_capacity_kw: int,
    energy_source: str,
    energy_price_per_kwh: Decimal,
    energy_currency: str = Currency.USD,
) -> Site:
    if not organization.is_partner:
        raise ValidationError("Only partner organizations operate sites.")
    site = Site(
        organization=organization,
        name=name.strip(),
        country=country.strip().upper(),
        region=region,
        latitude=latitude,
        longitude=longitude,
        power_capacity_kw=power_capacity_kw,
        energy_source=energy_source,
        energy_price_per_kwh=energy_price_per_kwh,
        energy_currency=energy_currency,
    )
    _save_site(site)
    audit(
        action="site.created", actor=actor, organization=organization, target=site, name=site.name
    )
    return site


@transaction.atomic
def site_update(*, site: Site, actor: User | None, data: Mapping[str, Any]) -> Site:
    """Change any of ``SITE_FIELDS``; unknown fields are refused."""
    site = Site.objects.select_for_update().get(pk=site.pk)
    data = dict(data)
    if "country" in data:
        data["country"] = str(data["country"]).strip().upper()
    if "name" in data:
        data["name"] = str(data["name"]).strip()
    changes = _changes(site, data, SITE_FIELDS)
    if not changes:
        return site
    for name, value in changes.items():
        setattr(site, name, value)
    _save_site(site)
    audit(
        action="site.updated",
        actor=actor,
        organization=site.organization,
        target=site,
        fields=sorted(changes),
    )
    return site


# ----------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class NodeCreated:
    node: Node
    # The one-time code (plaintext + expiry): show it once, it is stored only as a hash.
    enrollment: IssuedCode

    @property
    def enrollment_code(self) -> str:
        return self.enrollment.code


@transaction.atomic
def node_create(
    *,
    site: Site,
    actor: User | None,
    name: str,
    gpu_model: GpuModel,
    gpu_count: int,
    cpu_cores: int,
    ram_gib: int,
) -> NodeCreated:
    """Create a node in ``pending`` with a one-time enrollment code (valid 24 h)."""
    errors: dict[str, str] = {}
    if not name.strip():
        errors["name"] = "Name is required."
    if not 1 <= gpu_count <= NODE_MAX_GPUS:
        errors["gpu_count"] = f"A node has between 1 and {NODE_MAX_GPUS} GPUs."
    if not 1 <= cpu_cores <= NODE_MAX_CPU_CORES:
        errors["cpu_cores"] = f"A node has between 1 and {NODE_MAX_CPU_CORES:,} CPU cores."
    if not 1 <= ram_gib <= NODE_MAX_RAM_GIB:
        errors["ram_gib"] = f"A node has between 1 and {NODE_MAX_RAM_GIB:,} GiB of RAM."
    if errors:
        raise ValidationError(errors)
    node = Node(
        site=site,
        name=name.strip(),
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        cpu_cores=cpu_cores,
        ram_gib=ram_gib,
        status=NodeStatus.PENDING,
    )
    _save_unique(
        node,
        constraint="node_unique_name_per_site",
        field="name",
        message="This site already has a node with this name.",
    )
    issued = issue_enrollment_code(node=node)
    audit(
        action="node.created",
        actor=actor,
        organization=site.organization,
        target=node,
        site_id=site.pk,
        gpu_model=gpu_model.name,
        gpu_count=gpu_count,
    )
    return NodeCreated(node=node, enrollment=issued)


@transaction.atomic
def enrollment_code_regenerate(*, node: Node, actor: User | None) -> IssuedCode:
    """Replace the node's enrollment code (the old one stops working); return the new one.

    Also for an enrolled node: its agent may re-enroll (new key or URL, same GPUs).
    """
    node = Node.objects.select_for_update().select_related("site__organization").get(pk=node.pk)
    if node.status == NodeStatus.RETIRED:
        raise ValidationError("A retired node cannot enroll.")
    issued = issue_enrollment_code(node=node)
    audit(
        action="node.enrollment_code_regenerated",
        actor=actor,
        organization=node.site.organization,
        target=node,
    )
    return issued


@transaction.atomic
def node_retire(*, node: Node, actor: User | None) -> Node:
    """Take a node out of service for good: no polls, no enrollment, no allocations.

    Refused while reservations hold its GPUs, and while an active offer would list more
    GPUs than the site keeps without it.
    """
    site = Site.objects.select_for_update().get(pk=node.site_id)
    node = Node.objects.select_for_update().select_related("gpu_model").get(pk=node.pk)
    if node.status == NodeStatus.RETIRED:
        raise ValidationError("This node is already retired.")
    if selectors.node_has_future_allocations(node):
        raise ValidationError(
            "This node has current or future reservations; it can be retired once they end."
        )
    remaining = selectors.site_gpu_capacity(site=site, gpu_model=node.gpu_model) - node.gpu_count
    offer = (
        Offer.objects.active()
        .filter(site=site, gpu_model=node.gpu_model, gpu_count__gt=remaining)
        .order_by("pk")
        .first()
    )
    if offer is not None:
        raise ValidationError(
            f"Offer #{offer.pk} lists {offer.gpu_count} {node.gpu_model} GPUs; without this node "
            f"the site has {remaining}. Reduce or deactivate the offer first."
        )
    now = timezone.now()
    node.status = NodeStatus.RETIRED
    node.poll_token_ciphertext = ""
    node.save(update_fields=["status", "poll_token_ciphertext", "updated_at"])
    EnrollmentCode.objects.filter(node=node, used_at__isnull=True, revoked_at__isnull=True).update(
        revoked_at=now
    )
    audit(action="node.retired", actor=actor, organization=site.organization, target=node)
    return node


# --------------------------------------------------------------------------- windows

# Told on commit of every window scheduled or cancelled (``window_id=``, ``event=``
# "scheduled" or "cancelled"), by apps above capacity that tell people about it: contracts
# registers the buyers' notice in ``ContractsConfig.ready`` (capacity must not import it).
_window_listeners: list[Callable[..., object]] = []


def register_window_listener(listener: Callable[..., object]) -> None:
    """Called once by an app that tells someone about windows (contracts), at start-up."""
    if listener not in _window_listeners:
        _window_listeners.append(listener)


def _window_changed(window: NodeWindow, event: str) -> None:
    # Robust: the window is committed whatever a listener's mail server says (its failure
    # is logged, not the partner's error).
    for listener in _window_listeners:
        transaction.on_commit(partial(listener, window_id=window.pk, event=event), robust=True)


def _overlap_message(node: Node, kind: str, period: DateTimeTZRange) -> str:
    clash = (
        NodeWindow.objects.filter(
            node=node, kind=kind, cancelled_at__isnull=True, period__overlap=period
        )
        .order_by("period")
        .first()
    )
    label = WindowKind(kind).label.lower()
    if clash is None:
        return f"This window overlaps another {label} window of the node."
    return (
        f"This window overlaps the {label} window from {clash.start:%Y-%m-%d %H:%M} to "
        f"{clash.end:%Y-%m-%d %H:%M} UTC."
    )


@transaction.atomic
def window_schedule(
    *,
    node: Node,
    actor: User | None,
    kind: str,
    start: datetime,
    end: datetime,
    reason: str = "",
) -> NodeWindow:
    """Announce a maintenance or curtailment window ``[start, end)`` for a node."""
    if kind not in WindowKind.values:
        raise ValidationError({"kind": f"Unknown window kind {kind!r}."})
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise ValidationError("Window times must carry a time zone.")
    if node.status == NodeStatus.RETIRED:
        raise ValidationError("A retired node takes no windows.")
    now = timezone.now()
    if end <= start:
        raise ValidationError({"end": "The window must end after it starts."})
    if start < now:
        raise ValidationError({"start": "The window cannot start in the past."})
    if start > now + WINDOW_MAX_LEAD:
        raise ValidationError(
            {
                "start": f"A window starts within {WINDOW_MAX_LEAD.days} days from now "
                f"(by {now + WINDOW_MAX_LEAD:%Y-%m-%d %H:%M} UTC)."
            }
        )
    if end - start > WINDOW_MAX_LENGTH:
        raise ValidationError(
            {
                "end": f"A window lasts at most {WINDOW_MAX_LENGTH.days} days; this one lasts "
                f"{(end - start).days} days."
            }
        )
    period = DateTimeTZRange(start, end, "[)")
    window = NodeWindow(
        node=node, kind=kind, period=period, reason=reason.strip(), announced_at=now
    )
    try:
        with transaction.atomic():
            window.save()
    except IntegrityError as error:
        if _constraint_name(error) == "nodewindow_no_overlap_per_node_kind":
            raise ValidationError({"start": _overlap_message(node, kind, period)}) from error
        raise
    _window_changed(window, "scheduled")
    audit(
        action="window.scheduled",
        actor=actor,
        organization=node.site.organization,
        target=window,
        node_id=node.pk,
        kind=kind,
        start=start.isoformat(),
        end=end.isoformat(),
    )
    return window


@transaction.atomic
def window_cancel(*, window: NodeWindow, actor: User | None) -> NodeWindow:
    """Cancel a window that has not started yet (the row stays, marked cancelled)."""
    now = timezone.now()
    cancelled = NodeWindow.objects.filter(
        pk=window.pk, cancelled_at__isnull=True, period__startswith__gt=now
    ).update(cancelled_at=now)
    window = NodeWindow.objects.select_related("node__site__organization").get(pk=window.pk)
    if cancelled != 1:
        if window.cancelled_at is not None:
            raise ValidationError("This window is already cancelled.")
        raise ValidationError("This window has already started; it can no longer be cancelled.")
    _window_changed(window, "cancelled")
    audit(
        action="window.cancelled",
        actor=actor,
        organization=window.node.site.organization,
        target=window,
        node_id=window.node_id,
        kind=window.kind,
    )
    return window


# ---------------------------------------------------------------------------- offers

RESERVED_PRICE_FIELDS = {
    1: "reserved_price_1m_per_gpu_hour",
    3: "reserved_price_3m_per_gpu_hour",
    6: "reserved_price_6m_per_gpu_hour",
    12: "reserved_price_12m_per_gpu_hour",
}
OFFER_FIELDS = frozenset(
    {
        "gpu_count",
        "on_demand_price_per_gpu_hour",
        *RESERVED_PRICE_FIELDS.values(),
        "currency",
        "available_from",
        "available_until",
    }
)


def _validate_offer(offer: Offer) -> None:
    """Collect every problem of ``offer`` (its site row is locked by the caller)."""
    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    on_demand = offer.on_demand_price_per_gpu_hour
    if on_demand is None or on_demand <= 0:
        add("on_demand_price_per_gpu_hour", "The on-demand price must be greater than zero.")
    elif on_demand > MAX_PRICE_PER_GPU_HOUR:
        add("on_demand_price_per_gpu_hour", PRICE_BOUND_MESSAGE)
    for months, field in RESERVED_PRICE_FIELDS.items():
        price = getattr(offer, field)
        if price is None or price <= 0:
            add(field, f"The {months}-month reserved price must be greater than zero.")
        elif price > MAX_PRICE_PER_GPU_HOUR:
            add(field, PRICE_BOUND_MESSAGE)
        elif on_demand is not None and on_demand > 0 and price > on_demand:
            add(
                field,
                f"The {months}-month reserved price ({price}) is above the on-demand price "
                f"({on_demand}); a reservation must not cost more than on demand.",
            )
    if offer.currency not in Currency.values:
        add("currency", f"Unsupported currency {offer.currency!r}.")
    if offer.gpu_count is None or offer.gpu_count < 1:
        add("gpu_count", "An offer lists at least one GPU.")
    else:
        capacity = selectors.site_gpu_capacity(site=offer.site, gpu_model=offer.gpu_model)
        if offer.gpu_count > capacity:
            add(
                "gpu_count",
                f"{offer.site.name} has {capacity} {offer.gpu_model.name} GPUs on its nodes; "
                f"this offer lists {offer.gpu_count}.",
            )
    if offer.available_from is None:
        add("available_from", "The offer needs a start of availability.")
    elif offer.available_until is not None and offer.available_until <= offer.available_from:
        add("available_until", "The availability window must end after it starts.")
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def offer_create(
    *,
    site: Site,
    actor: User | None,
    gpu_model: GpuModel,
    gpu_count: int,
    on_demand_price_per_gpu_hour: Decimal,
    reserved_price_1m_per_gpu_hour: Decimal,
    reserved_price_3m_per_gpu_hour: Decimal,
    reserved_price_6m_per_gpu_hour: Decimal,
    reserved_price_12m_per_gpu_hour: Decimal,
    currency: str = Currency.USD,
    available_from: datetime | None = None,
    available_until: datetime | None = None,
) -> Offer:
    """List ``gpu_count`` GPUs of ``gpu_model`` at ``site`` (available now unless told)."""
    # The site row lock serializes this check with node_retire, which shrinks capacity.
    site = Site.objects.select_for_update().select_related("organization").get(pk=site.pk)
    offer = Offer(
        site=site,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        on_demand_price_per_gpu_hour=on_demand_price_per_gpu_hour,
        reserved_price_1m_per_gpu_hour=reserved_price_1m_per_gpu_hour,
        reserved_price_3m_per_gpu_hour=reserved_price_3m_per_gpu_hour,
        reserved_price_6m_per_gpu_hour=reserved_price_6m_per_gpu_hour,
        reserved_price_12m_per_gpu_hour=reserved_price_12m_per_gpu_hour,
        currency=currency,
        available_from=available_from or timezone.now(),
        available_until=available_until,
    )
    _validate_offer(offer)
    offer.save()
    audit(
        action="offer.created",
        actor=actor,
        organization=site.organization,
        target=offer,
        gpu_model=gpu_model.name,
        gpu_count=gpu_count,
        on_demand_price_per_gpu_hour=str(on_demand_price_per_gpu_hour),
        currency=currency,
    )
    return offer


@transaction.atomic
def offer_update(*, offer: Offer, actor: User | None, data: Mapping[str, Any]) -> Offer:
    """Change prices, size, currency or availability of an offer (``OFFER_FIELDS``).

    Live reservations are not changed by it: a contract line keeps the rate and currency
    it was sold at (new prices apply to new quotes), so the offer cannot list fewer GPUs
    than reservations hold at once, nor change its currency while any holds a GPU.
    """
    site = Site.objects.select_for_update().select_related("organization").get(pk=offer.site_id)
    offer = (
        Offer.objects.select_for_update(of=("self",)).select_related("gpu_model").get(pk=offer.pk)
    )
    offer.site = site
    changes = _changes(offer, data, OFFER_FIELDS)
    if not changes:
        return offer
    before = {name: str(getattr(offer, name)) for name in changes}
    for name, value in changes.items():
        setattr(offer, name, value)
    _validate_offer(offer)
    if "gpu_count" in changes or "currency" in changes:
        # Checkouts share-lock the offer row, so none is in flight while we hold it.
        committed = selectors.offer_committed_gpus(offer, now=timezone.now())
        if "gpu_count" in changes and offer.gpu_count < committed:
            raise ValidationError(
                {
                    "gpu_count": f"Reservations hold {committed} GPUs of this offer at once "
                    "(now or later); it cannot list fewer until they end."
                }
            )
        if "currency" in changes and committed:
            # A reservation keeps the currency (and rate) it was sold at; its renewals and
            # its partner's settlement stay in that currency too.
            raise ValidationError(
                {
                    "currency": f"Reservations of this offer were sold in {before['currency']} "
                    "and hold its GPUs now or later; its currency cannot change until they "
                    f"end. To sell in {offer.currency}, list a new offer."
                }
            )
    offer.save()
    audit(
        action="offer.updated",
        actor=actor,
        organization=site.organization,
        target=offer,
        before=before,
        after={name: str(value) for name, value in changes.items()},
    )
    return offer


@transaction.atomic
def offer_deactivate(*, offer: Offer, actor: User | None) -> Offer:
    """Withdraw an offer from the marketplace (existing contracts are unaffected)."""
    changed = Offer.objects.filter(pk=offer.pk, is_active=True).update(
        is_active=False, updated_at=timezone.now()
    )
    offer = Offer.objects.select_related("site__organization", "gpu_model").get(pk=offer.pk)
    if changed != 1:
        raise ValidationError("This offer is already inactive.")
    audit(
        action="offer.deactivated", actor=actor, organization=offer.site.organization, target=offer
    )
    return offer
