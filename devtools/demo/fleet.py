"""Demo fleet: partner sites on four continents, nodes enrolled against the fleet simulator.

``seed_fleet`` is idempotent: sites, nodes and offers are found by name before anything
is created, and an enrolled node is left alone (its poll token is only re-sent to the
fleet, which a fresh fleet process needs). Node ``i`` is ``{FLEET_URL}/n/<i>``; it is
enrolled through the same ``node_enroll`` service an agent's enroll call uses:

1. set a throw-away bootstrap token on fleet node ``i`` (loopback admin endpoint) and
   read its ``/v1/info`` with it — public key and GPU inventory;
2. create the node (``pending``) with that GPU model and count, which issues a code;
3. ``node_enroll`` with the code, the key, the URL and the inventory → the poll token;
4. hand the poll token's hash to the fleet.

Without a reachable fleet, nodes are created ``pending`` (8 x H100) with a warning; a
later run with the fleet up enrolls them.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.models import Organization
from capacity import selectors, services
from capacity.agent_client import AgentError, AgentInfo, fetch_info, fleet_set_poll_token
from capacity.enrollment import issue_enrollment_code, node_enroll
from capacity.models import (
    EnergySource,
    GpuModel,
    Interconnect,
    Node,
    NodeStatus,
    Offer,
    Region,
    Site,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

DEFAULT_NODE_COUNT = 24  # devtools.devrun starts the fleet with HASHGRID_DEMO_NODES=24
DEFAULT_GPU_MODEL = "H100 SXM 80GB"
DEFAULT_GPU_COUNT = 8


@dataclass(frozen=True)
class DemoSite:
    code: str  # prefix of its nodes' names
    name: str
    country: str
    region: str
    latitude: str
    longitude: str
    power_capacity_kw: int
    energy_source: str
    energy_price_per_kwh: str
    # Multiplier on the catalog list price (PRICES): cheap stranded energy (flare gas,
    # hydro) undercuts the list, grid power sells above it.
    price_factor: str


SITES = [
    DemoSite(
        "pmb",
        "Permian Basin Flare",
        "US",
        Region.NORTH_AMERICA,
        "31.845600",
        "-102.367600",
        4500,
        EnergySource.FLARE_GAS,
        "0.018000",
        "0.8800",
    ),
    DemoSite(
        "abl",
        "Abilene Grid",
        "US",
        Region.NORTH_AMERICA,
        "32.448700",
        "-99.733100",
        3000,
        EnergySource.GRID,
        "0.042000",
        "1.0800",
    ),
    DemoSite(
        "gpr",
        "Grande Prairie Gas",
        "CA",
        Region.NORTH_AMERICA,
        "55.170700",
        "-118.794700",
        2500,
        EnergySource.FLARE_GAS,
        "0.021000",
        "0.9100",
    ),
    DemoSite(
        "dqm",
        "Duqm Solar",
        "OM",
        Region.MIDDLE_EAST,
        "19.661900",
        "57.704600",
        2000,
        EnergySource.SOLAR,
        "0.034000",
        "0.9700",
    ),
    DemoSite(
        "ita",
        "Hernandarias Hydro",
        "PY",
        Region.SOUTH_AMERICA,
        "-25.405600",
        "-54.638100",
        5000,
        EnergySource.HYDRO,
        "0.029000",
        "0.9400",
    ),
    DemoSite(
        "gib",
        "Gibe Valley Hydro",
        "ET",
        Region.EAST_AFRICA,
        "7.926700",
        "37.555000",
        2000,
        EnergySource.HYDRO,
        "0.025000",
        "0.9200",
    ),
    DemoSite(
        "nvs",
        "Naivasha Geothermal",
        "KE",
        Region.EAST_AFRICA,
        "-0.716700",
        "36.433300",
        1500,
        EnergySource.MIXED,
        "0.058000",
        "1.0300",
    ),
]

# List prices per GPU-hour, USD, by catalog model: on demand, then reserved for 1, 3, 6 and
# 12 months (each no dearer than the one before). A site sells at list x its price_factor.
PRICES = {
    "H100 SXM 80GB": ("2.4900", "2.1900", "1.9900", "1.8900", "1.6900"),
    "H200 141GB": ("3.2900", "2.9900", "2.7900", "2.5900", "2.3900"),
    "A100 80GB": ("1.4900", "1.2900", "1.1900", "1.0900", "0.9900"),
    "L40S 48GB": ("0.9900", "0.8900", "0.8200", "0.7600", "0.6900"),
    "RTX 4090 24GB": ("0.4900", "0.4400", "0.4000", "0.3700", "0.3400"),
}

SECOND_PARTNER = {"slug": "rift-valley-hash", "name": "Rift Valley Hash"}


def _site_for(organization: Organization, spec: DemoSite) -> Site:
    site = Site.objects.filter(organization=organization, name=spec.name).first()
    if site is not None:
        return site
    return services.site_create(
        organization=organization,
        actor=None,
        name=spec.name,
        country=spec.country,
        region=spec.region,
        latitude=Decimal(spec.latitude),
        longitude=Decimal(spec.longitude),
        power_capacity_kw=spec.power_capacity_kw,
        energy_source=spec.energy_source,
        energy_price_per_kwh=Decimal(spec.energy_price_per_kwh),
    )


def _probe(agent_url: str) -> AgentInfo:
    """Point fleet node ``agent_url`` at a throw-away token and read its /v1/info."""
    bootstrap = secrets.token_urlsafe(32)
    fleet_set_poll_token(agent_url, poll_token=bootstrap)
    return fetch_info(agent_url, poll_token=bootstrap)


def _enroll(node: Node, agent_url: str, info: AgentInfo) -> None:
    issued = issue_enrollment_code(node=node)
    result = node_enroll(
        code=issued.code,
        public_key=info.public_key,
        url=agent_url,
        gpus=info.gpus,
        agent_version=info.agent_version,
    )
    fleet_set_poll_token(agent_url, poll_token=result.poll_token)


def _node_for(index: int, site: Site, spec: DemoSite, out: SupportsWrite[str]) -> tuple[Node, bool]:
    """Node ``index`` (found or created and enrolled); True when the fleet answered."""
    agent_url = f"{settings.FLEET_URL.rstrip('/')}/n/{index}"
    name = f"{spec.code}-{index:03d}"
    node = Node.objects.filter(site=site, name=name).select_related("gpu_model").first()
    if node is not None and node.poll_token_ciphertext:
        try:  # a fresh fleet forgets tokens: remind it, changing nothing here
            fleet_set_poll_token(agent_url, poll_token=node.poll_token())
        except AgentError:
            return node, False
        return node, True
    try:
        info = _probe(agent_url)
    except AgentError:
        info = None
    if node is None:
        gpu_model = GpuModel.objects.get(name=DEFAULT_GPU_MODEL)
        gpu_count = DEFAULT_GPU_COUNT
        if info is not None and info.gpus:
            reported = str(info.gpus[0].get("model", ""))
            gpu_model = selectors.gpu_model_for_reported_name(reported) or gpu_model
            gpu_count = len(info.gpus)
        node = services.node_create(
            site=site,
            actor=None,
            name=name,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            cpu_cores=64,
            ram_gib=1024,
            # What buyers see on the offer page (issue 16): a typical 8-GPU server.
            cpu_model="AMD EPYC 9354",
            disk_gib=7680,
            network_gbps=100,
            interconnect=Interconnect.NVLINK if gpu_count >= 4 else Interconnect.PCIE,
            driver_version="550.54.15",
            cuda_version="12.4",
        ).node
    if info is None:
        return node, False
    try:
        _enroll(node, agent_url, info)
    except (ValidationError, AgentError) as error:
        out.write(f"warning: could not enroll {name} at {agent_url}: {error}\n")
    return node, True


def site_prices(gpu_model_name: str, spec: DemoSite) -> tuple[Decimal, ...]:
    """The model's list prices scaled by the site's factor, rounded to whole cents.

    Rounding a common scale keeps the list's order: reserved <= on demand, longer <= shorter.
    """
    factor = Decimal(spec.price_factor)
    return tuple(
        (Decimal(price) * factor).quantize(Decimal("0.01")).quantize(Decimal("0.0001"))
        for price in PRICES[gpu_model_name]
    )


def _offers_for(site: Site, spec: DemoSite) -> None:
    models_here = (
        Node.objects.active().filter(site=site).values_list("gpu_model", flat=True).distinct()
    )
    for gpu_model in GpuModel.objects.filter(pk__in=models_here):
        if Offer.objects.filter(site=site, gpu_model=gpu_model).exists():
            continue
        capacity = selectors.site_gpu_capacity(site=site, gpu_model=gpu_model)
        on_demand, one, three, six, twelve = site_prices(gpu_model.name, spec)
        services.offer_create(
            site=site,
            actor=None,
            gpu_model=gpu_model,
            gpu_count=capacity,
            on_demand_price_per_gpu_hour=on_demand,
            reserved_price_1m_per_gpu_hour=one,
            reserved_price_3m_per_gpu_hour=three,
            reserved_price_6m_per_gpu_hour=six,
            reserved_price_12m_per_gpu_hour=twelve,
        )


def second_partner() -> Organization:
    """A second demo partner, so the marketplace shows more than one seller."""
    organization, _ = Organization.objects.get_or_create(
        slug=SECOND_PARTNER["slug"],
        defaults={"name": SECOND_PARTNER["name"], "is_buyer": False, "is_partner": True},
    )
    return organization


def seed_fleet(
    partner_orgs: Sequence[Organization],
    *,
    node_count: int = DEFAULT_NODE_COUNT,
    out: SupportsWrite[str] = sys.stdout,
) -> dict[str, int]:
    """Create the demo sites, nodes (enrolled when the fleet answers) and offers.

    Sites go round-robin to ``partner_orgs``; node ``i`` goes to site ``i % len(SITES)``.
    Returns counts for the caller's summary.
    """
    if not partner_orgs:
        raise ValueError("seed_fleet needs at least one partner organization")
    sites = [
        (_site_for(partner_orgs[index % len(partner_orgs)], spec), spec)
        for index, spec in enumerate(SITES)
    ]
    unreachable = 0
    for index in range(node_count):
        site, spec = sites[index % len(sites)]
        _node, reached = _node_for(index, site, spec, out)
        unreachable += not reached
    if unreachable:
        out.write(
            f"warning: the fleet at {settings.FLEET_URL} did not answer for {unreachable} of "
            f"{node_count} nodes; they stay pending until seeding runs again with the fleet up\n"
        )
    for site, spec in sites:
        _offers_for(site, spec)
    enrolled = Node.objects.filter(
        site__in=[site for site, _ in sites], enrolled_at__isnull=False
    ).exclude(status=NodeStatus.RETIRED)
    return {"sites": len(sites), "nodes": node_count, "enrolled": enrolled.count()}
