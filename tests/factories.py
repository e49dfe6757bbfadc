"""factory_boy factories for the marketplace models; apps add theirs beside these."""

from __future__ import annotations

import factory
from allauth.account.models import EmailAddress
from django.utils import timezone

from accounts.models import (
    INVITATION_LIFETIME,
    ApiKey,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.django.Password("correct-horse-battery")

    @factory.post_generation
    def verified_email(self, create: bool, extracted: bool | None, **kwargs: object) -> None:
        if create and extracted is not False:
            EmailAddress.objects.create(user=self, email=self.email, verified=True, primary=True)


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Organization {n}")
    slug = factory.Sequence(lambda n: f"organization-{n}")
    is_buyer = True
    is_partner = False


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.MEMBER


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """An API key; the full secret is on ``instance.key`` (only its hash is stored)."""

    class Meta:
        model = ApiKey

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"key {n}")
    key = factory.LazyFunction(lambda: ApiKey.generate()[0])
    prefix = factory.LazyAttribute(lambda o: o.key[:10])
    key_hash = factory.LazyAttribute(lambda o: ApiKey.hash_key(o.key))
    created_by = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class: type[ApiKey], *args: object, **kwargs: object) -> ApiKey:
        key = kwargs.pop("key")
        instance = super()._create(model_class, *args, **kwargs)
        instance.key = key
        return instance


class InvitationFactory(factory.django.DjangoModelFactory):
    """A pending invitation; the link's token is on ``instance.token`` (only its hash is stored)."""

    class Meta:
        model = Invitation

    organization = factory.SubFactory(OrganizationFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    role = Role.MEMBER
    token = factory.LazyFunction(lambda: Invitation.new_token()[0])
    token_hash = factory.LazyAttribute(lambda o: Invitation.hash_token(o.token))
    invited_by = None
    expires_at = factory.LazyFunction(lambda: timezone.now() + INVITATION_LIFETIME)

    @classmethod
    def _create(cls, model_class: type[Invitation], *args: object, **kwargs: object) -> Invitation:
        token = kwargs.pop("token")
        instance = super()._create(model_class, *args, **kwargs)
        instance.token = token
        return instance


# -- capacity ----------------------------------------------------------------------------
from datetime import timedelta as _timedelta  # noqa: E402
from decimal import Decimal as _Decimal  # noqa: E402

from django.db.backends.postgresql.psycopg_any import DateTimeTZRange  # noqa: E402

from capacity.catalog import ensure_gpu_model  # noqa: E402
from capacity.models import (  # noqa: E402
    EnergySource,
    GpuModel,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Region,
    Site,
    WindowKind,
)


def catalog_gpu(name: str = "H100 SXM 80GB") -> GpuModel:
    """A GPU model of the seeded catalog (recreated if a transactional test flushed it)."""
    return ensure_gpu_model(GpuModel, name)


class SiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Site

    organization = factory.SubFactory(OrganizationFactory, is_buyer=False, is_partner=True)
    name = factory.Sequence(lambda n: f"Site {n}")
    country = "US"
    region = Region.NORTH_AMERICA
    latitude = _Decimal("31.968600")
    longitude = _Decimal("-102.077900")
    power_capacity_kw = 2000
    energy_source = EnergySource.FLARE_GAS
    energy_price_per_kwh = _Decimal("0.032000")


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    site = factory.SubFactory(SiteFactory)
    name = factory.Sequence(lambda n: f"node-{n:03d}")
    gpu_model = factory.LazyFunction(catalog_gpu)
    gpu_count = 8
    cpu_cores = 64
    ram_gib = 1024
    status = NodeStatus.PENDING


class OfferFactory(factory.django.DjangoModelFactory):
    """An offer; its site gets no node by itself (create one with enough GPUs)."""

    class Meta:
        model = Offer

    site = factory.SubFactory(SiteFactory)
    gpu_model = factory.LazyFunction(catalog_gpu)
    gpu_count = 8
    on_demand_price_per_gpu_hour = _Decimal("2.4000")
    reserved_price_1m_per_gpu_hour = _Decimal("2.1000")
    reserved_price_3m_per_gpu_hour = _Decimal("1.9000")
    reserved_price_6m_per_gpu_hour = _Decimal("1.8000")
    reserved_price_12m_per_gpu_hour = _Decimal("1.6000")
    available_from = factory.LazyFunction(timezone.now)


class NodeWindowFactory(factory.django.DjangoModelFactory):
    """A maintenance window starting in a week, lasting four hours."""

    class Meta:
        model = NodeWindow

    node = factory.SubFactory(NodeFactory)
    kind = WindowKind.MAINTENANCE
    period = factory.LazyFunction(
        lambda: DateTimeTZRange(
            timezone.now() + _timedelta(days=7), timezone.now() + _timedelta(days=7, hours=4), "[)"
        )
    )
    reason = "Firmware upgrade"


# -- contracts ---------------------------------------------------------------------------
from capacity.models import GpuDevice  # noqa: E402
from contracts.models import Contract, ContractState  # noqa: E402


class GpuDeviceFactory(factory.django.DjangoModelFactory):
    """One physical GPU of a node (what enrollment records from the agent's inventory)."""

    class Meta:
        model = GpuDevice

    node = factory.SubFactory(NodeFactory, status=NodeStatus.ONLINE)
    uuid = factory.Sequence(lambda n: f"GPU-{n:08x}-0000-4000-8000-000000000000")
    index = factory.Sequence(lambda n: n % 64)
    memory_mib = 81920
    model = "NVIDIA H100 80GB HBM3"


def gpu_pool(
    *,
    site: Site,
    gpus: int,
    per_node: int = 8,
    gpu_model: GpuModel | None = None,
    status: str = NodeStatus.ONLINE,
) -> list[GpuDevice]:
    """Online nodes at ``site`` holding ``gpus`` GPU devices in all (``per_node`` a node)."""
    devices: list[GpuDevice] = []
    model = gpu_model or catalog_gpu()
    while len(devices) < gpus:
        count = min(per_node, gpus - len(devices))
        node = NodeFactory(site=site, gpu_model=model, gpu_count=count, status=status)
        devices += [GpuDeviceFactory(node=node, index=i) for i in range(count)]
    return devices


class ContractFactory(factory.django.DjangoModelFactory):
    """An active one-month contract with no lines (checkout builds real ones)."""

    class Meta:
        model = Contract

    buyer = factory.SubFactory(OrganizationFactory, is_buyer=True)
    state = ContractState.ACTIVE
    starts_at = factory.LazyFunction(timezone.now)
    term_months = 1
    term_ends_at = factory.LazyAttribute(lambda o: o.starts_at + _timedelta(days=30))


import uuid  # noqa: E402
from datetime import datetime as _datetime  # noqa: E402

from django.db.models import F  # noqa: E402

from capacity.metering.models import HourlyUsage, UsageRecord  # noqa: E402


def stored_usage(
    *,
    gpu: GpuDevice,
    start: _datetime,
    kind: str,
    ref: str | None,
    busy_ms: int = 0,
    energy_mj: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    requests: int = 0,
    seq: int = 1,
) -> UsageRecord:
    """A one-minute usage record from ``start``, stored as ingest stores it: the record
    (``seq`` of a journal of its own), and its quantities added to the hourly rollup it
    belongs to (``x = x + excluded.x``). Not attributed (beat's attribution run does that)."""
    record = UsageRecord.objects.create(
        node_id=gpu.node_id,
        journal_epoch=uuid.uuid4().hex,
        seq=seq,
        record_hash="0" * 64,
        gpu=gpu,
        window_start=start,
        window_end=start + _timedelta(minutes=1),
        workload_kind=kind,
        workload_ref=ref or None,
        busy_ms=busy_ms,
        energy_mj=energy_mj,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests=requests,
    )
    row, _created = HourlyUsage.objects.get_or_create(
        gpu=gpu,
        workload_kind=kind,
        workload_ref=ref or "",
        hour=start.replace(minute=0, second=0, microsecond=0),
        defaults={"node_id": gpu.node_id},
    )
    HourlyUsage.objects.filter(pk=row.pk).update(
        busy_ms=F("busy_ms") + busy_ms,
        energy_mj=F("energy_mj") + energy_mj,
        input_tokens=F("input_tokens") + input_tokens,
        output_tokens=F("output_tokens") + output_tokens,
        requests=F("requests") + requests,
        record_count=F("record_count") + 1,
    )
    return record
