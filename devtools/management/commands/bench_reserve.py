"""``manage.py bench_reserve --buyers 100 --gpus 16``: race concurrent checkouts for a pool.

Builds a throw-away partner site with ``--gpus`` free GPUs listed by one offer and
``--buyers`` buyer organizations, starts one thread per buyer (each with its own database
connection; spread over ``--processes`` forked worker processes, default 4, like several
web workers) that checks out ``--gpus-each`` GPUs at the same instant, and prints one JSON
object: allocated_gpus, overlaps, p50_ms, p95_ms (plus counts). Every buyer has a saved
card on record (the payment-method check runs for real). Everything it created is
deleted afterwards. Runs on the configured database (real PostgreSQL).
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEvent, Organization
from billing.models import BillingCustomer
from capacity.models import EnergySource, GpuDevice, GpuModel, Node, NodeStatus, Offer, Region, Site
from contracts.models import Allocation, Contract, ContractLine
from devtools.race import overlapping_allocation_pairs, race_checkouts

GPUS_PER_NODE = 8


class Command(BaseCommand):
    help = "Race concurrent reservation checkouts for a pool of free GPUs; print JSON figures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--buyers", type=int, default=100)
        parser.add_argument("--gpus", type=int, default=16)
        parser.add_argument("--gpus-each", type=int, default=1)
        parser.add_argument(
            "--processes",
            type=int,
            default=4,
            help="Worker processes the buyers' threads are spread over (forked, like several "
            "web workers; all released by one cross-process barrier; latency from the "
            "release instant). 1: every thread in this process, behind one GIL.",
        )
        parser.add_argument("--keep", action="store_true", help="Keep the data it created.")

    def handle(self, *args: Any, **options: Any) -> None:
        tag = f"bench-{secrets.token_hex(4)}"
        offer, buyers = self._build(tag=tag, gpus=options["gpus"], buyers=options["buyers"])
        try:
            started = time.perf_counter()
            result = race_checkouts(
                buyers=buyers,
                offer=offer,
                gpus_each=options["gpus_each"],
                processes=options["processes"],
                starts_at=timezone.now() + timedelta(minutes=1),
            )
            wall_ms = (time.perf_counter() - started) * 1000
            figures = {
                "buyers": len(buyers),
                "processes": options["processes"],
                "gpus": options["gpus"],
                "allocated_gpus": Allocation.objects.filter(line__offer=offer).count(),
                "overlaps": overlapping_allocation_pairs(),
                "succeeded": result.succeeded,
                "refused": result.refused,
                "errors": len(result.errors),
                "p50_ms": round(result.p50_ms, 1),
                "p95_ms": round(result.percentile(0.95), 1),
                "max_ms": round(max(result.latencies_ms, default=0.0), 1),
                "wall_ms": round(wall_ms, 1),
            }
            self.stdout.write(json.dumps(figures))
            for error in result.errors[:5]:
                self.stderr.write(error)
        finally:
            if not options["keep"]:
                self._clean(offer=offer, buyers=buyers)

    @transaction.atomic
    def _build(self, *, tag: str, gpus: int, buyers: int) -> tuple[Offer, list[Organization]]:
        partner = Organization.objects.create(name=tag, slug=tag, is_buyer=False, is_partner=True)
        site = Site.objects.create(
            organization=partner,
            name=tag,
            country="US",
            region=Region.NORTH_AMERICA,
            latitude=Decimal("31.968600"),
            longitude=Decimal("-102.077900"),
            power_capacity_kw=1000,
            energy_source=EnergySource.FLARE_GAS,
            energy_price_per_kwh=Decimal("0.03"),
        )
        model = GpuModel.objects.order_by("pk").first()
        assert model is not None, "the GPU catalog is empty: run migrate"
        created = 0
        while created < gpus:
            count = min(GPUS_PER_NODE, gpus - created)
            node = Node.objects.create(
                site=site,
                name=f"{tag}-n{created // GPUS_PER_NODE}",
                gpu_model=model,
                gpu_count=count,
                cpu_cores=64,
                ram_gib=512,
                status=NodeStatus.ONLINE,
            )
            GpuDevice.objects.bulk_create(
                GpuDevice(
                    node=node,
                    uuid=f"GPU-{tag}-{created + index}",
                    index=index,
                    memory_mib=model.memory_mib,
                    model=model.name,
                )
                for index in range(count)
            )
            created += count
        offer = Offer.objects.create(
            site=site,
            gpu_model=model,
            gpu_count=gpus,
            on_demand_price_per_gpu_hour=Decimal("2.4"),
            reserved_price_1m_per_gpu_hour=Decimal("2.1"),
            reserved_price_3m_per_gpu_hour=Decimal("1.9"),
            reserved_price_6m_per_gpu_hour=Decimal("1.8"),
            reserved_price_12m_per_gpu_hour=Decimal("1.6"),
            available_from=timezone.now() - timedelta(days=1),
        )
        organizations = Organization.objects.bulk_create(
            Organization(name=f"{tag} buyer {n}", slug=f"{tag}-buyer-{n}", is_buyer=True)
            for n in range(buyers)
        )
        # Each buyer has a saved card, as checkout requires (billing's customer record:
        # the payment-method check reads it; nothing here talks to Stripe).
        BillingCustomer.objects.bulk_create(
            BillingCustomer(
                organization=organization,
                stripe_customer_id=f"cus_{tag}_{n}",
                default_payment_method_id=f"pm_{tag}_{n}",
            )
            for n, organization in enumerate(organizations)
        )
        return offer, organizations

    @transaction.atomic
    def _clean(self, *, offer: Offer, buyers: list[Organization]) -> None:
        contracts = Contract.objects.filter(buyer__in=buyers)
        AuditEvent.objects.filter(organization__in=buyers).delete()
        BillingCustomer.objects.filter(organization__in=buyers).delete()
        Allocation.objects.filter(line__contract__in=contracts).delete()
        ContractLine.objects.filter(contract__in=contracts).delete()
        contracts.delete()
        site = offer.site
        offer.delete()
        GpuDevice.objects.filter(node__site=site).delete()
        Node.objects.filter(site=site).delete()
        partner = site.organization
        site.delete()
        Organization.objects.filter(pk__in=[b.pk for b in buyers] + [partner.pk]).delete()
