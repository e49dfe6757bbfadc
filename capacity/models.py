"""Capacity: the GPU catalog, partners' sites and nodes, their GPUs, enrollment, windows, offers.

Units are in field names or comments: power in watts or kilowatts, memory in MiB/GiB,
prices are ``Decimal`` per GPU-hour or per kWh in the row's currency. Everything a partner
owns is reachable from its ``Organization`` through ``site``; the querysets below say how
(``tenant_path``), so ``accounts.tenancy`` can scope them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal
from typing import Self

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import DateTimeRangeField, RangeOperators
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organization, TenantQuerySet
from config import crypto

# An enrollment code is valid this long after it is issued.
ENROLLMENT_CODE_LIFETIME = timedelta(hours=24)


class Currency(models.TextChoices):
    USD = "USD", "US dollar"
    EUR = "EUR", "Euro"


class GpuModel(models.Model):
    """A GPU product in the catalog (seeded by a data migration; staff extend it in the admin)."""

    name = models.CharField(max_length=64, unique=True)  # e.g. "H100 SXM 80GB"
    vendor = models.CharField(max_length=32, default="NVIDIA")
    # Fragment of the name the driver (NVML) reports, e.g. "H100" in "NVIDIA H100 80GB HBM3":
    # enrollment checks each reported GPU against it.
    family = models.CharField(max_length=16)
    # Board memory in MiB (80 GiB = 81920 MiB); agents report the same unit.
    memory_mib = models.PositiveIntegerField()
    # Vendor's maximum board power in watts: metering quarantines energy above it.
    max_power_w = models.PositiveIntegerField()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(memory_mib__gt=0), name="gpumodel_memory_positive"),
            models.CheckConstraint(condition=Q(max_power_w__gt=0), name="gpumodel_power_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Region(models.TextChoices):
    NORTH_AMERICA = "north-america", "North America"
    SOUTH_AMERICA = "south-america", "South America"
    EUROPE = "europe", "Europe"
    MIDDLE_EAST = "middle-east", "Middle East"
    EAST_AFRICA = "east-africa", "East Africa"
    AFRICA = "africa", "Africa (other)"
    ASIA_PACIFIC = "asia-pacific", "Asia Pacific"


class EnergySource(models.TextChoices):
    GRID = "grid", "Grid"
    HYDRO = "hydro", "Hydro"
    SOLAR = "solar", "Solar"
    WIND = "wind", "Wind"
    FLARE_GAS = "flare-gas", "Flare gas"
    MIXED = "mixed", "Mixed"


# What a partner may enter for a site or a node: beyond these no real site or server
# exists, and the columns would refuse the value with a database error (a 500) instead
# of a message. The services check them (``capacity.services``); forms and the API parse.
SITE_MAX_POWER_CAPACITY_KW = 1_000_000  # 1 GW, several times the largest mining site
SITE_MAX_ENERGY_PRICE_PER_KWH = Decimal("100")  # in any currency we settle in
# The services' messages for out-of-range site figures; forms and the API give the same
# one for a number too long to parse, instead of a count of digits.
SITE_FIGURE_MESSAGES = {
    "latitude": "Latitude must be between -90 and 90 degrees.",
    "longitude": "Longitude must be between -180 and 180 degrees.",
    "energy_price_per_kwh": (
        f"The energy price must be between 0 and {SITE_MAX_ENERGY_PRICE_PER_KWH} per kWh."
    ),
}


def site_figure_errors(name: str) -> dict[str, str]:
    """Error messages of a site's decimal figure in forms and the API: a number too long
    to parse gets its range message (``SITE_FIGURE_MESSAGES``), never a count of digits.
    Django's and DRF's decimal fields use the same codes."""
    message = SITE_FIGURE_MESSAGES[name]
    return {
        "max_digits": message,
        "max_whole_digits": message,
        "max_decimal_places": "At most 6 decimals.",
    }


NODE_MAX_GPUS = 64
NODE_MAX_CPU_CORES = 4096
NODE_MAX_RAM_GIB = 65_536  # 64 TiB


class SiteQuerySet(TenantQuerySet):
    tenant_path = "organization"


class Site(models.Model):
    """A partner's mining site: where nodes draw power under the site's energy contract."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="sites")
    name = models.CharField(max_length=120)
    # ISO 3166-1 alpha-2, upper case ("US", "OM", "PY").
    country = models.CharField(max_length=2)
    region = models.CharField(max_length=24, choices=Region.choices)
    # WGS 84 degrees, 6 decimals (~0.1 m).
    latitude = models.DecimalField(max_digits=8, decimal_places=6)
    longitude = models.DecimalField(max_digits=9, decimal_places=6)
    # Power the site can give to GPU nodes, in kilowatts.
    power_capacity_kw = models.PositiveIntegerField()
    energy_source = models.CharField(max_length=16, choices=EnergySource.choices)
    # Price the partner pays per kWh, in energy_currency (informative: shown to buyers).
    energy_price_per_kwh = models.DecimalField(max_digits=10, decimal_places=6)
    energy_currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SiteQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], name="site_unique_name_per_org"
            ),
            models.CheckConstraint(
                condition=Q(latitude__gte=-90) & Q(latitude__lte=90), name="site_latitude_range"
            ),
            models.CheckConstraint(
                condition=Q(longitude__gte=-180) & Q(longitude__lte=180),
                name="site_longitude_range",
            ),
            models.CheckConstraint(
                condition=Q(country__regex=r"^[A-Z]{2}$"), name="site_country_alpha2"
            ),
            models.CheckConstraint(
                condition=Q(energy_price_per_kwh__gte=0), name="site_energy_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class NodeStatus(models.TextChoices):
    # Created; no agent has enrolled yet.
    PENDING = "pending", "Pending"
    ONLINE = "online", "Online"
    DEGRADED = "degraded", "Degraded"
    # Enrolled but the last poll failed — or no poll has succeeded yet (fresh enrollment).
    UNREACHABLE = "unreachable", "Unreachable"
    MAINTENANCE = "maintenance", "Maintenance"
    CURTAILED = "curtailed", "Curtailed"
    # Out of service for good; never polled, never allocated.
    RETIRED = "retired", "Retired"


class NodeQuerySet(TenantQuerySet):
    tenant_path = "site__organization"

    def active(self) -> Self:
        return self.exclude(status=NodeStatus.RETIRED)


class Node(models.Model):
    """A containerized GPU server at a site, reporting through its node agent."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=120)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="nodes")
    gpu_count = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    cpu_cores = models.PositiveSmallIntegerField()
    ram_gib = models.PositiveIntegerField()
    # Base URL of the agent (".../v1/info" is appended); set by enrollment.
    agent_url = models.URLField(max_length=300, blank=True)
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.PENDING)
    # Base64 of the agent's raw 32-byte Ed25519 public key; verifies every response body.
    agent_public_key = models.CharField(max_length=64, blank=True)
    # Fernet ciphertext of the bearer token sent on every poll (config.crypto); never the
    # plaintext. Empty before enrollment and after retirement.
    poll_token_ciphertext = models.TextField(blank=True)
    agent_version = models.CharField(max_length=32, blank=True)
    # Agent's boot identifier and journal epoch as last seen in /v1/info (metering updates them).
    boot_id = models.CharField(max_length=64, blank=True)
    journal_epoch = models.CharField(max_length=64, blank=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_successful_poll_at = models.DateTimeField(null=True, blank=True)
    # Mean GPU utilization in percent at the last successful poll (metering); null = unknown.
    gpu_utilization_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["site__name", "name", "pk"]
        indexes = [models.Index(fields=["status", "site"], name="node_status_site_idx")]
        constraints = [
            models.UniqueConstraint(fields=["site", "name"], name="node_unique_name_per_site"),
            models.CheckConstraint(
                condition=Q(gpu_count__gte=1) & Q(gpu_count__lte=64), name="node_gpu_count_range"
            ),
            models.CheckConstraint(
                condition=Q(gpu_utilization_pct__isnull=True) | Q(gpu_utilization_pct__lte=100),
                name="node_gpu_utilization_pct_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_enrolled(self) -> bool:
        return self.enrolled_at is not None

    @property
    def is_retired(self) -> bool:
        return self.status == NodeStatus.RETIRED

    def poll_token(self) -> str:
        """The plaintext poll token, for the ``Authorization`` header of a poll. Never log it."""
        if not self.poll_token_ciphertext:
            raise ValueError(f"node {self.pk} has no poll token")
        return crypto.decrypt_str(self.poll_token_ciphertext)


class GpuDeviceQuerySet(TenantQuerySet):
    tenant_path = "node__site__organization"


class GpuDevice(models.Model):
    """One physical GPU of a node, as its agent reported it at enrollment."""

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="gpus")
    # NVIDIA's GPU UUID ("GPU-…"): globally unique, the key usage records carry.
    uuid = models.CharField(max_length=64, unique=True)
    # Position in the node's inventory (NVML index), 0-based.
    index = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    # Model name as the agent reported it (may differ in spelling from the catalog name).
    model = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = GpuDeviceQuerySet.as_manager()

    class Meta:
        ordering = ["node", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "index"], name="gpudevice_unique_index_per_node"
            )
        ]

    def __str__(self) -> str:
        return self.uuid


def hash_enrollment_code(code: str) -> str:
    """sha256 hex of a normalized code (upper case, no spaces): the only form stored."""
    normalized = "".join(code.split()).upper()
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


class EnrollmentCodeQuerySet(TenantQuerySet):
    tenant_path = "node__site__organization"


class EnrollmentCode(models.Model):
    """A one-time code that lets an agent enroll as a node. Shown once, stored hashed.

    Single use is a database fact: consuming is ``UPDATE … WHERE used_at IS NULL AND
    revoked_at IS NULL AND expires_at > now()``, and a partial unique constraint allows one
    live (unused, unrevoked) code per node.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="enrollment_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    # Set when a newer code replaced this one, or the node was retired.
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = EnrollmentCodeQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["node"],
                condition=Q(used_at__isnull=True, revoked_at__isnull=True),
                name="enrollmentcode_one_live_per_node",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("created_at")),
                name="enrollmentcode_expires_after_created",
            ),
        ]

    def __str__(self) -> str:
        return f"enrollment code for node {self.node_id}"


# How far ahead a window may be announced and how long one may last: plans beyond a year
# are not plans, and an outage longer than a month is a retirement. Enforced by
# ``capacity.services.window_schedule`` (they depend on now, so not by a constraint).
WINDOW_MAX_LEAD = timedelta(days=365)
WINDOW_MAX_LENGTH = timedelta(days=31)


class WindowKind(models.TextChoices):
    MAINTENANCE = "maintenance", "Maintenance"
    CURTAILMENT = "curtailment", "Power curtailment"


class NodeWindowQuerySet(TenantQuerySet):
    tenant_path = "node__site__organization"

    def scheduled(self) -> Self:
        return self.filter(cancelled_at__isnull=True)


class NodeWindow(models.Model):
    """A maintenance or curtailment window a partner announced for a node.

    One table for both kinds so a window has one id (``/api/v1/windows/<id>``); the proxy
    models below give each kind its own name. Windows of one kind never overlap on a
    node (exclusion constraint, cancelled windows excepted). Cancelled windows stay, for
    the SLA's "announced at least 7 days ahead" rule and the audit trail.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="windows")
    kind = models.CharField(max_length=16, choices=WindowKind.choices)
    # [start, end) in UTC. Bounded at both ends and non-empty (check constraint); PostgreSQL
    # itself refuses a range whose start is after its end.
    period = DateTimeRangeField()
    reason = models.CharField(max_length=200, blank=True)
    # When the partner announced it: the SLA excludes maintenance announced ≥ 7 days ahead.
    announced_at = models.DateTimeField(default=timezone.now)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    objects = NodeWindowQuerySet.as_manager()

    class Meta:
        ordering = ["period", "pk"]
        indexes = [models.Index(fields=["node", "kind"], name="nodewindow_node_kind_idx")]
        constraints = [
            ExclusionConstraint(
                name="nodewindow_no_overlap_per_node_kind",
                expressions=[
                    ("node", RangeOperators.EQUAL),
                    ("kind", RangeOperators.EQUAL),
                    ("period", RangeOperators.OVERLAPS),
                ],
                condition=Q(cancelled_at__isnull=True),
            ),
            models.CheckConstraint(
                condition=Q(period__isempty=False)
                & Q(period__lower_inf=False)
                & Q(period__upper_inf=False),
                name="nodewindow_period_bounded_not_empty",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of node {self.node_id}"

    @property
    def start(self):  # type: ignore[no-untyped-def]
        return self.period.lower

    @property
    def end(self):  # type: ignore[no-untyped-def]
        return self.period.upper

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled_at is not None


class MaintenanceWindowManager(models.Manager):
    def get_queryset(self) -> NodeWindowQuerySet:
        return NodeWindowQuerySet(self.model, using=self._db).filter(kind=WindowKind.MAINTENANCE)


class CurtailmentWindowManager(models.Manager):
    def get_queryset(self) -> NodeWindowQuerySet:
        return NodeWindowQuerySet(self.model, using=self._db).filter(kind=WindowKind.CURTAILMENT)


class MaintenanceWindow(NodeWindow):
    """A node's planned maintenance (a ``NodeWindow`` of kind maintenance)."""

    objects = MaintenanceWindowManager()  # type: ignore[assignment,misc]

    class Meta:
        proxy = True

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.kind = WindowKind.MAINTENANCE
        super().save(*args, **kwargs)


class CurtailmentWindow(NodeWindow):
    """A node's announced power curtailment (the site sheds load for the grid)."""

    objects = CurtailmentWindowManager()  # type: ignore[assignment,misc]

    class Meta:
        proxy = True

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.kind = WindowKind.CURTAILMENT
        super().save(*args, **kwargs)


class OfferQuerySet(TenantQuerySet):
    tenant_path = "site__organization"

    def active(self) -> Self:
        return self.filter(is_active=True)


# The most an offer may ask per GPU-hour, in either currency: far above any GPU's market
# price (a few units today), low enough that a typo or a hostile partner cannot list a GPU
# at 999999.9999. A guard against absurd figures, not a pricing policy.
MAX_PRICE_PER_GPU_HOUR = Decimal("1000.0000")
PRICE_BOUND_MESSAGE = (
    f"A price per GPU-hour is at most {MAX_PRICE_PER_GPU_HOUR}; check the decimal point."
)
# Prices are stored with 4 decimals; more is refused, not rounded behind the partner's back.
PRICE_DECIMALS_MESSAGE = "A price per GPU-hour has at most 4 decimals, e.g. 2.1250."
PRICE_POSITIVE_MESSAGE = "A price per GPU-hour must be greater than zero."


def _price_per_gpu_hour() -> models.DecimalField:
    """Decimal per GPU-hour in the offer's currency, 4 decimals (billing rounds once, later)."""
    return models.DecimalField(
        max_digits=10,
        decimal_places=4,
        validators=[MaxValueValidator(MAX_PRICE_PER_GPU_HOUR, message=PRICE_BOUND_MESSAGE)],
    )


class Offer(models.Model):
    """A pool of a site's GPUs of one model listed for sale, on demand and reserved."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="offers")
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="offers")
    # GPUs of gpu_model at the site this offer lists.
    gpu_count = models.PositiveIntegerField()
    on_demand_price_per_gpu_hour = _price_per_gpu_hour()
    # Reserved prices per GPU-hour for terms of 1, 3, 6 and 12 months; never above on-demand.
    reserved_price_1m_per_gpu_hour = _price_per_gpu_hour()
    reserved_price_3m_per_gpu_hour = _price_per_gpu_hour()
    reserved_price_6m_per_gpu_hour = _price_per_gpu_hour()
    reserved_price_12m_per_gpu_hour = _price_per_gpu_hour()
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    available_from = models.DateTimeField()
    # Null: open-ended.
    available_until = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OfferQuerySet.as_manager()

    class Meta:
        ordering = ["site__name", "gpu_model__name", "pk"]
        indexes = [
            models.Index(fields=["is_active", "gpu_model"], name="offer_active_model_idx"),
            models.Index(fields=["site", "is_active"], name="offer_site_active_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="offer_gpu_count_positive"),
            models.CheckConstraint(
                condition=Q(on_demand_price_per_gpu_hour__gt=0)
                & Q(reserved_price_1m_per_gpu_hour__gt=0)
                & Q(reserved_price_3m_per_gpu_hour__gt=0)
                & Q(reserved_price_6m_per_gpu_hour__gt=0)
                & Q(reserved_price_12m_per_gpu_hour__gt=0),
                name="offer_prices_positive",
            ),
            # Reserved prices are bounded too, by offer_reserved_not_above_on_demand.
            models.CheckConstraint(
                condition=Q(on_demand_price_per_gpu_hour__lte=MAX_PRICE_PER_GPU_HOUR),
                name="offer_price_bounded",
                violation_error_message=PRICE_BOUND_MESSAGE,
            ),
            models.CheckConstraint(
                condition=Q(reserved_price_1m_per_gpu_hour__lte=F("on_demand_price_per_gpu_hour"))
                & Q(reserved_price_3m_per_gpu_hour__lte=F("on_demand_price_per_gpu_hour"))
                & Q(reserved_price_6m_per_gpu_hour__lte=F("on_demand_price_per_gpu_hour"))
                & Q(reserved_price_12m_per_gpu_hour__lte=F("on_demand_price_per_gpu_hour")),
                name="offer_reserved_not_above_on_demand",
            ),
            models.CheckConstraint(
                condition=Q(available_until__isnull=True)
                | Q(available_until__gt=F("available_from")),
                name="offer_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.gpu_count} x {self.gpu_model} at {self.site}"

    def reserved_prices(self) -> dict[int, Decimal]:
        """Reserved price per GPU-hour by term in months."""
        return {
            1: self.reserved_price_1m_per_gpu_hour,
            3: self.reserved_price_3m_per_gpu_hour,
            6: self.reserved_price_6m_per_gpu_hour,
            12: self.reserved_price_12m_per_gpu_hour,
        }
