"""Contracts: what a buyer agreed to buy, and the GPUs its reservations hold.

A ``Contract`` is the recurring agreement between a buyer organization and the platform,
billed monthly. Its ``ContractLine``\\ s are reserved capacity (N GPUs of an offer for a
term), on-demand GPU, or on-demand inference. A reserved line holds ``Allocation`` rows,
one GPU device for one time range each; an exclusion constraint makes double booking a
database impossibility. Money stored here is integer minor units with the contract's
currency; unit prices are ``Decimal`` snapshots of the offer or product at signing.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Self, TypedDict

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import DateTimeRangeField, RangeOperators
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiKey, Organization, TenantQuerySet
from capacity.metering.validation import MAX_TOKENS_PER_GPU_SECOND
from capacity.models import Currency, GpuDevice, Node, NodeWindow, Offer


class _DecimalOptions(TypedDict):
    """``DecimalField`` keyword arguments, typed so ``**_PRICE`` checks against its signature."""

    max_digits: int
    decimal_places: int


# Unit prices: Decimal, 4 decimals (offers use the same precision); rounded once, by billing.
_PRICE: _DecimalOptions = {"max_digits": 12, "decimal_places": 4}
# Reserved terms a buyer may sign, in calendar months.
TERM_MONTHS = (1, 3, 6, 12)


class InferenceProduct(models.Model):
    """A model served on partner nodes that opted in, sold per million tokens."""

    # Matches the ``workload.ref`` agents report for its inference windows.
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    input_price_per_million_tokens = models.DecimalField(**_PRICE)
    output_price_per_million_tokens = models.DecimalField(**_PRICE)
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    # Partner nodes that opted in to serve this model. Metering accepts this product's
    # inference tokens only from them (``capacity.metering.validation``).
    nodes = models.ManyToManyField(Node, blank=True, related_name="inference_products")
    # Most tokens (input + output) one GPU can serve per second of this model: the bound
    # on what a node may report per window until tokens are tied to gateway receipts.
    max_tokens_per_second_per_gpu = models.PositiveIntegerField(
        default=50_000,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TOKENS_PER_GPU_SECOND)],
        help_text="Input + output tokens one GPU can serve per second; more is quarantined.",
    )
    # GPU memory one replica of the model needs (weights plus KV cache), summed over a
    # node's GPUs: only nodes with at least this much may opt in to serve it.
    memory_required_mib = models.PositiveIntegerField(default=20_480)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(input_price_per_million_tokens__gt=0)
                & Q(output_price_per_million_tokens__gt=0),
                name="inferenceproduct_prices_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_tokens_per_second_per_gpu__gt=0)
                & Q(max_tokens_per_second_per_gpu__lte=MAX_TOKENS_PER_GPU_SECOND),
                name="inferenceproduct_throughput_bounded",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SlaPolicy(models.Model):
    """An availability target and the credit tiers that apply below it."""

    name = models.CharField(max_length=80, unique=True)
    # Availability promised, in percent (99.50 = 99.5 %).
    target_percent = models.DecimalField(max_digits=5, decimal_places=2)
    # The policy new contracts get (exactly one; a partial unique constraint).
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "SLA policies"
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="slapolicy_one_default"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.target_percent} %)"


class SlaCreditTier(models.Model):
    """Credit for a reserved line whose availability is at least ``min_availability_percent``
    (and below the next tier up). The tier at 0 % catches everything below the others."""

    policy = models.ForeignKey(SlaPolicy, on_delete=models.CASCADE, related_name="tiers")
    min_availability_percent = models.DecimalField(max_digits=5, decimal_places=2)
    # Credit on the reserved line's charge for the month, in percent.
    credit_percent = models.DecimalField(max_digits=5, decimal_places=2)

    class Meta:
        ordering = ["policy", "-min_availability_percent"]
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "min_availability_percent"], name="slatier_unique_threshold"
            ),
            models.CheckConstraint(
                condition=Q(min_availability_percent__gte=0)
                & Q(min_availability_percent__lte=100)
                & Q(credit_percent__gte=0)
                & Q(credit_percent__lte=100),
                name="slatier_percent_ranges",
            ),
        ]

    def __str__(self) -> str:
        return f"≥ {self.min_availability_percent} %: {self.credit_percent} % credit"


class ContractState(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


# States in which a contract is still the buyer's current one (a checkout adds lines to it).
OPEN_STATES = (ContractState.DRAFT, ContractState.ACTIVE, ContractState.SUSPENDED)


class ContractQuerySet(TenantQuerySet):
    tenant_path = "buyer"

    def open(self) -> Self:
        return self.filter(state__in=OPEN_STATES)


class Contract(models.Model):
    """A buyer's recurring agreement with the platform, billed monthly in arrears.

    State changes only through ``contracts.lifecycle`` (conditional updates from the
    expected state). A buyer has at most one open contract per currency: checkouts add
    lines to it, so one invoice per month carries everything the buyer bought.
    """

    buyer = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="contracts")
    state = models.CharField(
        max_length=16, choices=ContractState.choices, default=ContractState.DRAFT
    )
    currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    # Start of the first term; set at signing.
    starts_at = models.DateTimeField()
    # Length of a term in months; renewal adds one term.
    term_months = models.PositiveSmallIntegerField(default=1)
    # End of the current term (exclusive): renewal, expiry and cancel-at-term-end happen here.
    term_ends_at = models.DateTimeField()
    auto_renew = models.BooleanField(default=True)
    # Monthly minimum commitment in minor units (cents); 0 = none. Billing adds a true-up
    # line for the shortfall.
    monthly_commitment_minor = models.PositiveBigIntegerField(default=0)
    # Early-termination fee as a percentage of the reserved charge left in the term.
    early_termination_fee_percent = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal("25.00")
    )
    # Fee charged when cancelled early, in minor units (billing invoices it); 0 otherwise.
    early_termination_fee_minor = models.PositiveBigIntegerField(default=0)
    sla_policy = models.ForeignKey(
        SlaPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="contracts"
    )
    # The buyer asked to end the contract when the current term ends (no renewal).
    cancel_at_term_end = models.BooleanField(default=False)
    # Why it is suspended (e.g. "payment overdue"), shown to the buyer.
    suspension_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    activated_at = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)  # cancelled or expired
    renewal_count = models.PositiveIntegerField(default=0)
    # Hard cap on the contract's inference spend per calendar month, minor units of its
    # currency; null = no cap. The gateway reserves each request's worst case against it.
    inference_monthly_cap_minor = models.PositiveBigIntegerField(null=True, blank=True)

    objects = ContractQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["state", "term_ends_at"], name="contract_state_term_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["buyer", "currency"],
                condition=Q(state__in=[s.value for s in OPEN_STATES]),
                name="contract_one_open_per_buyer_currency",
            ),
            models.CheckConstraint(
                condition=Q(term_ends_at__gt=F("starts_at")), name="contract_term_ordered"
            ),
            models.CheckConstraint(
                condition=Q(early_termination_fee_percent__gte=0)
                & Q(early_termination_fee_percent__lte=100),
                name="contract_fee_percent_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Contract #{self.pk} ({self.get_state_display()})"

    @property
    def reference(self) -> str:
        return f"HG-C{self.pk:06d}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


class LineKind(models.TextChoices):
    RESERVED = "reserved", "Reserved GPUs"
    ON_DEMAND_GPU = "on_demand_gpu", "On-demand GPU"
    INFERENCE = "inference", "On-demand inference"


class ContractLineQuerySet(TenantQuerySet):
    tenant_path = "contract__buyer"

    def current(self) -> Self:
        return self.filter(ended_at__isnull=True)


class ContractLine(models.Model):
    """One thing the contract buys, at the price in force when it was added."""

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=16, choices=LineKind.choices)
    # Reserved and on-demand GPU lines: the offer (site + GPU model) they buy from.
    offer = models.ForeignKey(
        Offer, null=True, blank=True, on_delete=models.PROTECT, related_name="contract_lines"
    )
    inference_product = models.ForeignKey(
        InferenceProduct,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="contract_lines",
    )
    # Reserved: GPUs currently held (allocations are the billing truth, amendments change it).
    gpu_count = models.PositiveIntegerField(default=0)
    # Reserved: the term in months the rate was quoted for.
    term_months = models.PositiveSmallIntegerField(null=True, blank=True)
    # Reserved: rate per GPU-hour; on-demand GPU: rate per GPU-hour an instance holds.
    price_per_gpu_hour = models.DecimalField(null=True, blank=True, **_PRICE)
    # Inference: prices per million input and output tokens.
    input_price_per_million_tokens = models.DecimalField(null=True, blank=True, **_PRICE)
    output_price_per_million_tokens = models.DecimalField(null=True, blank=True, **_PRICE)
    starts_at = models.DateTimeField()
    # Reserved: end of the reserved period (exclusive); null for on-demand lines.
    ends_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Set when the line stops (cancelled, removed by an amendment, contract ended).
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = ContractLineQuerySet.as_manager()

    class Meta:
        ordering = ["contract", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(
                        kind="reserved",
                        offer__isnull=False,
                        ends_at__isnull=False,
                        price_per_gpu_hour__isnull=False,
                        term_months__isnull=False,
                    )
                    | Q(kind="on_demand_gpu", offer__isnull=False, price_per_gpu_hour__isnull=False)
                    | Q(
                        kind="inference",
                        inference_product__isnull=False,
                        input_price_per_million_tokens__isnull=False,
                        output_price_per_million_tokens__isnull=False,
                    )
                ),
                name="contractline_fields_match_kind",
            ),
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gt=F("starts_at")),
                name="contractline_period_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on contract {self.contract_id}"

    @property
    def is_in_force(self) -> bool:
        """Whether the line buys something now: begun, not ended and, a reservation, not
        past its period (whose end leaves ``ended_at`` empty). Workloads start only on one."""
        now = timezone.now()
        return (
            self.ended_at is None
            and self.starts_at <= now
            and (self.ends_at is None or now < self.ends_at)
        )


class AllocationQuerySet(TenantQuerySet):
    tenant_path = "line__contract__buyer"


class WorkloadKind(models.TextChoices):
    CONTAINER = "container", "Container"
    DEPLOYMENT = "deployment", "Model deployment"


class WorkloadState(models.TextChoices):
    """Where a workload stands. ``requested``: the platform wants it, the agent has not
    reported it yet; ``pending`` … ``failed``: as the agent reports it (docs/workloads.md);
    ``lost``: its node stopped answering while it ran (the platform's verdict)."""

    REQUESTED = "requested", "Waiting for the node"
    PENDING = "pending", "Pending"
    PULLING = "pulling", "Pulling the image"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    LOST = "lost", "Lost with its node"


class WorkloadFault(models.TextChoices):
    """Whose fault a workload's failure was (docs/workloads.md "Whose fault"). ``node``:
    the node could not run what the buyer asked (a pull that failed for want of network
    or disk, a GPU the runtime could not give, a container that vanished, a deployment's
    engine); ``buyer``: what the buyer asked for could not run anywhere (their image does
    not exist or is private, their container exited on its own)."""

    NODE = "node", "The node"
    BUYER = "buyer", "The workload"


# States after which a workload never runs again (its GPUs are released).
ENDED_WORKLOAD_STATES = (WorkloadState.STOPPED, WorkloadState.FAILED, WorkloadState.LOST)
# Bounds of what a buyer may ask a workload to carry (the agent is told all of it).
MAX_WORKLOAD_PORTS = 16
MAX_WORKLOAD_ENV_VARS = 64
MAX_WORKLOAD_ENV_BYTES = 16_384
MAX_SSH_PUBLIC_KEY_LENGTH = 4096
SSH_PUBLIC_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}( [^\r\n]{0,200})?$"
)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._\-/:@]{0,299}$")


def validate_ports(ports: object) -> None:
    """A JSON list of at most ``MAX_WORKLOAD_PORTS`` distinct TCP ports, 1..65535."""
    if not isinstance(ports, list) or not all(
        isinstance(port, int) and not isinstance(port, bool) for port in ports
    ):
        raise ValidationError("Ports are a list of whole numbers.", code="invalid_ports")
    if len(ports) > MAX_WORKLOAD_PORTS:
        raise ValidationError(f"At most {MAX_WORKLOAD_PORTS} ports.", code="too_many_ports")
    if any(not 1 <= port <= 65535 for port in ports) or len(set(ports)) != len(ports):
        raise ValidationError(
            "Each port is a distinct number from 1 to 65535.", code="invalid_ports"
        )


def validate_env(env: object) -> None:
    """A JSON object of at most ``MAX_WORKLOAD_ENV_VARS`` variables, names as a shell has
    them, string values, ``MAX_WORKLOAD_ENV_BYTES`` in all."""
    if not isinstance(env, dict) or not all(isinstance(value, str) for value in env.values()):
        raise ValidationError("Environment variables are names with text values.", code="env")
    if len(env) > MAX_WORKLOAD_ENV_VARS:
        raise ValidationError(f"At most {MAX_WORKLOAD_ENV_VARS} environment variables.", code="env")
    bad = sorted(name for name in env if not ENV_NAME_RE.match(name))
    if bad:
        raise ValidationError(f"Not a variable name: {bad[0][:40]!r}.", code="env")
    if sum(len(name) + len(value.encode()) for name, value in env.items()) > MAX_WORKLOAD_ENV_BYTES:
        raise ValidationError(
            f"The environment is limited to {MAX_WORKLOAD_ENV_BYTES:,} bytes.", code="env"
        )


def validate_ssh_public_key(key: str) -> None:
    """One OpenSSH public key line: ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp*, base64 body,
    optional comment; blank allowed (no SSH)."""
    if key and (len(key) > MAX_SSH_PUBLIC_KEY_LENGTH or not SSH_PUBLIC_KEY_RE.match(key)):
        raise ValidationError(
            "Paste one OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa-sha2-…).",
            code="invalid_ssh_key",
        )


def validate_image(image: str) -> None:
    if not IMAGE_RE.match(image):
        raise ValidationError(
            "An image reference such as pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime.",
            code="invalid_image",
        )


def new_public_id() -> str:
    return uuid.uuid4().hex


class WorkloadQuerySet(TenantQuerySet):
    tenant_path = "line__contract__buyer"

    def active(self) -> Self:
        """Workloads still meant to run or still running (not stopped, failed or lost)."""
        return self.exclude(state__in=ENDED_WORKLOAD_STATES)


class Workload(models.Model):
    """What a buyer asked to run on GPUs of one node (docs/workloads.md).

    A ``container`` (image, SSH key, ports, environment) or a ``deployment`` (a catalogue
    model served on reserved GPUs under the private name ``d-<public id>``). On an
    on-demand GPU line it is an *instance*: it holds its GPUs through ``Allocation`` rows
    of its own (open upper bound while it runs), billed per second held. On a reserved
    line it runs on GPUs the reservation's allocations hold (``gpus``), billed by the
    reservation. State changes only through ``contracts.workloads``.
    """

    # The assignment id the agent knows (32 hex); never the database id.
    public_id = models.CharField(max_length=32, unique=True, default=new_public_id, editable=False)
    line = models.ForeignKey(ContractLine, on_delete=models.PROTECT, related_name="workloads")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="workloads")
    # The GPUs it runs on, as the agent is told (an instance's are also its allocations').
    gpus = models.ManyToManyField(GpuDevice, related_name="workloads")
    kind = models.CharField(max_length=16, choices=WorkloadKind.choices)
    # Containers: the image reference; deployments: blank (the product names the model).
    image = models.CharField(max_length=300, blank=True)
    # Containers: TCP ports to publish (list of ints), environment ({name: value}).
    ports = models.JSONField(default=list, blank=True, validators=[validate_ports])
    env = models.JSONField(default=dict, blank=True, validators=[validate_env])
    ssh_public_key = models.CharField(
        max_length=MAX_SSH_PUBLIC_KEY_LENGTH, blank=True, validators=[validate_ssh_public_key]
    )
    # Deployments: the catalogue model served (reachable as ``served_model_name``).
    inference_product = models.ForeignKey(
        InferenceProduct, null=True, blank=True, on_delete=models.PROTECT, related_name="workloads"
    )
    state = models.CharField(
        max_length=16, choices=WorkloadState.choices, default=WorkloadState.REQUESTED
    )
    # When it entered ``state`` (the agent's ``since`` once it reports it).
    state_since = models.DateTimeField(default=timezone.now)
    # Why it failed or was lost (the agent's words, or the platform's), shown to the buyer.
    reason = models.CharField(max_length=500, blank=True)
    # Whose fault a failure (or loss) was; blank while it has not failed.
    fault = models.CharField(max_length=8, choices=WorkloadFault.choices, blank=True)
    # A reserved workload failed by the node's fault: when the buyer stopped it,
    # redeployed it or started another workload on its GPUs. Its GPUs count as down for
    # the SLA from ``ended_at`` until then (or until the reservation's allocation ends;
    # ``contracts.billable_usage.sla_minutes``).
    dismissed_at = models.DateTimeField(null=True, blank=True)
    # {"host": …, "ports": {"22": 40022}, "endpoint": …} as the agent reports it.
    connection = models.JSONField(default=dict, blank=True)
    # Asked for (the buyer's start; an instance is billed from here) and ended (stopped,
    # failed or lost: billing ends here).
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Instances: the start form's one-time key or the API request's ``Idempotency-Key``;
    # a repeated start with it gets this workload instead of another (unique per line,
    # looked up per buyer, ``contracts.workloads.instance_start``). Blank: none was sent.
    submission_key = models.CharField(max_length=64, blank=True, default="", editable=False)

    objects = WorkloadQuerySet.as_manager()

    # Not stored: set by ``instance_start`` on what it returns, True when a repeated
    # submission key found this workload instead of starting one (the API answers 200).
    replayed = False

    class Meta:
        ordering = ["-started_at", "-pk"]
        indexes = [models.Index(fields=["node", "state"], name="workload_node_state_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="container", inference_product__isnull=True) & ~Q(image="")
                | Q(kind="deployment", inference_product__isnull=False, image=""),
                name="workload_fields_match_kind",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=F("started_at")),
                name="workload_period_ordered",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True)
                | Q(state__in=[state.value for state in ENDED_WORKLOAD_STATES]),
                name="workload_ended_means_ended_state",
            ),
            models.UniqueConstraint(
                fields=["line", "submission_key"],
                condition=~Q(submission_key=""),
                name="workload_submission_once",
            ),
            models.CheckConstraint(
                condition=Q(dismissed_at__isnull=True)
                | Q(state="failed", fault="node", dismissed_at__gte=F("ended_at")),
                name="workload_dismissed_only_after_a_node_fault",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.public_id}"

    @property
    def served_model_name(self) -> str:
        """The private model name a deployment answers to at the gateway."""
        return f"d-{self.public_id}"

    @property
    def is_instance(self) -> bool:
        return self.kind == WorkloadKind.CONTAINER and self.line.kind == LineKind.ON_DEMAND_GPU

    @property
    def is_active(self) -> bool:
        return self.state not in ENDED_WORKLOAD_STATES

    # What the node reported of how to reach it (validated on the way in,
    # ``contracts.assignments.connection_details``), read one way by pages and API.
    @property
    def host(self) -> str:
        connection = self.connection if isinstance(self.connection, dict) else {}
        return str(connection.get("host") or "")

    @property
    def mapped_ports(self) -> dict[str, int]:
        """The workload's ports (as strings) → the node's public port numbers."""
        connection = self.connection if isinstance(self.connection, dict) else {}
        ports = connection.get("ports")
        return ports if isinstance(ports, dict) else {}

    @property
    def ssh_command(self) -> str:
        """``ssh -p <public port of 22> root@<host>`` once the node reported both, for a
        running workload that has the buyer's SSH key; '' otherwise."""
        ssh_port = self.mapped_ports.get("22")
        if not (self.is_active and self.host and ssh_port and self.ssh_public_key):
            return ""
        return f"ssh -p {ssh_port} root@{self.host}"


class NodeAssignments(models.Model):
    """The platform's side of one node's assignments (docs/workloads.md "Cheap polling").

    ``generation`` rises with every change of the node's desired workloads (in the same
    transaction as the change); the sweep pushes them only while ``generation`` exceeds
    ``agent_generation``, the one the agent reported holding, backing off while the node
    fails, and reads ``GET /v1/workloads`` only when the agent's digest differs from
    ``digest``.
    """

    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, primary_key=True, related_name="assignments"
    )
    generation = models.PositiveBigIntegerField(default=0)
    # The generation the agent last reported (usage answer) or accepted (PUT answer).
    agent_generation = models.PositiveBigIntegerField(default=0)
    # sha256 hex of the workloads list last read from the agent ('' = never read).
    digest = models.CharField(max_length=64, blank=True)
    # No push before this instant (backoff after a failed push); null = at once.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Failed pushes in a row (0 after a success) and the last one's error.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "node assignments"

    def __str__(self) -> str:
        return f"node {self.node_id} at generation {self.generation}"

    @property
    def is_pending(self) -> bool:
        """A change the agent has not accepted yet (the buyer sees "waiting for the node")."""
        return self.generation > self.agent_generation


class Allocation(models.Model):
    """One GPU device held by a line for ``period`` = [start, end).

    A reserved line's allocations are its reservation; an on-demand GPU line's belong to
    an instance (``workload``) and are open-ended (``[start, ∞)``) while it runs, closed
    when it stops, fails or is lost. ``EXCLUDE USING gist (gpu_device WITH =, period WITH
    &&)``: two allocations of one GPU never overlap, whatever the application does, so a
    GPU is never both reserved and in an instance. Ending early truncates the periods,
    which frees the GPUs from then on.
    """

    line = models.ForeignKey(ContractLine, on_delete=models.CASCADE, related_name="allocations")
    gpu_device = models.ForeignKey(GpuDevice, on_delete=models.PROTECT, related_name="allocations")
    period = DateTimeRangeField()
    # The instance holding the GPU (on-demand lines); null for a reservation's allocation.
    workload = models.ForeignKey(
        Workload, null=True, blank=True, on_delete=models.PROTECT, related_name="allocations"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = AllocationQuerySet.as_manager()

    class Meta:
        ordering = ["line", "gpu_device", "period"]
        constraints = [
            ExclusionConstraint(
                name="allocation_no_double_booking",
                expressions=[
                    ("gpu_device", RangeOperators.EQUAL),
                    ("period", RangeOperators.OVERLAPS),
                ],
            ),
            # Open-ended only while an instance runs (its workload set).
            models.CheckConstraint(
                condition=Q(period__isempty=False)
                & Q(period__lower_inf=False)
                & (Q(period__upper_inf=False) | Q(workload__isnull=False)),
                name="allocation_period_bounded_unless_instance",
            ),
        ]

    def __str__(self) -> str:
        return f"GPU {self.gpu_device_id} for line {self.line_id}"


class LineApiKeyQuerySet(TenantQuerySet):
    tenant_path = "line__contract__buyer"


class LineApiKey(models.Model):
    """An organization API key used for an on-demand line: its calls bill to that line."""

    line = models.ForeignKey(ContractLine, on_delete=models.CASCADE, related_name="api_keys")
    api_key = models.OneToOneField(
        ApiKey, on_delete=models.CASCADE, related_name="contract_line_link"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # The key's own hard monthly spend cap (minor units of the contract's currency) and
    # its rate limits; null = no key cap / the platform's default limits.
    monthly_cap_minor = models.PositiveBigIntegerField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    objects = LineApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["line", "pk"]

    def __str__(self) -> str:
        return f"key {self.api_key_id} → line {self.line_id}"


class InferenceCapAlert(models.Model):
    """The buyer was told that spend reached ``threshold_percent`` of a monthly cap: the
    contract's (``line_api_key`` null) or one key's. One row per cap, month and threshold
    (unique), claimed before the email is sent, so each is sent once whatever the number
    of beat runs or workers (``contracts.cap_alerts``)."""

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="cap_alerts")
    line_api_key = models.ForeignKey(
        LineApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="cap_alerts"
    )
    # First day of the calendar month (UTC) the spend belongs to.
    month = models.DateField()
    threshold_percent = models.PositiveSmallIntegerField()
    # The cap and the spend (minor units of the contract's currency) when it was reached.
    cap_minor = models.PositiveBigIntegerField()
    spent_minor = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["contract", "month", "threshold_percent"],
                condition=Q(line_api_key__isnull=True),
                name="capalert_once_per_contract_month",
            ),
            models.UniqueConstraint(
                fields=["line_api_key", "month", "threshold_percent"],
                condition=Q(line_api_key__isnull=False),
                name="capalert_once_per_key_month",
            ),
            models.CheckConstraint(
                condition=Q(threshold_percent__in=[80, 100]), name="capalert_known_threshold"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.threshold_percent} % of a cap of contract {self.contract_id} in {self.month}"


class CheckoutSubmissionQuerySet(TenantQuerySet):
    tenant_path = "buyer"


class CheckoutSubmission(models.Model):
    """One submission of a checkout: the key its form carried from when it was rendered (or
    the API request's ``Idempotency-Key``), claimed first in the checkout transaction.

    Unique per buyer: a second submission of the same form waits on the index for the
    first to commit and then gets the first's line instead of creating another one; if the
    first rolled back, the key is free again.
    """

    buyer = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    # The reserved line this submission created; set in the transaction that claimed the
    # key, so a committed row always has one.
    line = models.OneToOneField(
        ContractLine, null=True, on_delete=models.CASCADE, related_name="submission"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = CheckoutSubmissionQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["buyer", "key"], name="checkout_submission_key_unique")
        ]

    def __str__(self) -> str:
        return f"submission {self.key} → line {self.line_id}"


class WindowNoticeEvent(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    CANCELLED = "cancelled", "Cancelled"


class WindowNoticeQuerySet(TenantQuerySet):
    tenant_path = "buyer"


class WindowNotice(models.Model):
    """A buyer was told that a partner scheduled (or cancelled) a maintenance or
    curtailment window over GPUs the buyer's contract reserves: claimed before the email
    is sent, unique per window, buyer and event, so each buyer is told once per window."""

    window = models.ForeignKey(NodeWindow, on_delete=models.CASCADE, related_name="+")
    buyer = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    event = models.CharField(max_length=16, choices=WindowNoticeEvent.choices)
    # Recipients the email went to (members of the buyer when it was sent).
    recipient_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = WindowNoticeQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["window", "buyer", "event"], name="window_notice_once_per_buyer"
            )
        ]

    def __str__(self) -> str:
        return f"window {self.window_id} {self.event} → buyer {self.buyer_id}"
