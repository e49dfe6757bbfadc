"""Metering's tables: poll state per node, usage records, quarantine, rollups, availability.

Usage quantities are integers in the units their names carry (milliseconds, millijoules,
tokens, requests), exactly as the agent reported them; times are UTC. A usage record is
unique on ``(node, journal_epoch, seq)``: the agent's journal names each record once
forever, so storing by that key makes every repeated, retried or concurrent poll a no-op.
Writes go through ``capacity.metering.ingest`` (one SQL statement per page), never
through these models' ``save()``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import TenantQuerySet
from capacity.agent.protocol import GENESIS_PREV_HASH
from capacity.models import GpuDevice, Node

MINUTES_PER_DAY = 1440


class MinuteBitmapField(models.Field):
    """A PostgreSQL ``bit(1440)``: bit ``m`` (0 = leftmost) is minute ``m`` of a UTC day.

    Read back as a string of ``0``/``1`` characters (psycopg's text form of ``bit``).
    """

    description = "1440-bit string, one bit per minute of a UTC day"

    def db_type(self, connection) -> str:  # type: ignore[no-untyped-def]
        return f"bit({MINUTES_PER_DAY})"


class NodePollState(models.Model):
    """Where metering stands with one node: the journal cursor, the schedule, the failures.

    One row per polled node, kept here so metering needs no columns on ``capacity.Node``.
    The cursor (``journal_epoch``, ``last_seq``, ``last_hash``) only ever moves by a
    conditional update from the exact value a page was fetched after, in the same
    statement that stores the page's records (``ingest.store_page``).
    """

    node = models.OneToOneField(
        Node, on_delete=models.CASCADE, primary_key=True, related_name="poll_state"
    )
    # Due for polling at or after this instant; a sweep's claim pushes it one interval
    # (the lease), the poll's result sets it for real (interval, or backoff on failure).
    next_poll_at = models.DateTimeField(default=timezone.now)
    # Journal epoch of the agent's usage journal the cursor belongs to ('' = never polled).
    journal_epoch = models.CharField(max_length=64, blank=True)
    # Highest seq stored for journal_epoch (0 = none yet) and that record's hash.
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_PREV_HASH)
    # {gpu_uuid: window_end of the GPU's latest stored record, Unix seconds}: a new record
    # of that GPU starting earlier overlaps (or rewrites) history and is quarantined.
    gpu_window_ends = models.JSONField(default=dict, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Delay before the next poll after the last failure, in seconds (0 after a success).
    backoff_seconds = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # First failed poll of the current outage; null while the node answers.
    unreachable_since = models.DateTimeField(null=True, blank=True)
    # When the partner was told about the current outage (once per outage).
    unreachable_notified_at = models.DateTimeField(null=True, blank=True)
    # Why the node is degraded, in words the partner sees ('' = nothing wrong).
    degraded_reason = models.TextField(blank=True)
    # When the partner was told that the agent's signature or hash chain failed; cleared
    # once the agent's answers verify again, so a new incident mails again.
    integrity_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["next_poll_at"], name="pollstate_next_poll_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(last_seq__gte=0), name="pollstate_last_seq_not_negative"
            )
        ]

    def __str__(self) -> str:
        return f"poll state of node {self.node_id}"


class WorkloadKind(models.TextChoices):
    # A workload the platform assigned (agent protocol v1.1): ref = its assignment id.
    ASSIGNMENT = "assignment", "Assigned workload"
    ALLOCATION = "allocation", "Reserved allocation"
    INFERENCE = "inference", "On-demand inference"
    IDLE = "idle", "Idle"


class UsageRecordQuerySet(TenantQuerySet):
    tenant_path = "node__site__organization"


class UsageRecord(models.Model):
    """One verified, valid agent record: one GPU over one window (at most 60 s).

    The proof of what was used; rating, settlement and reports read the hourly rollups
    below (on-demand rows stamped with their contract line by attribution).
    """

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="usage_records")
    journal_epoch = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    # sha256 hex of the record as the agent chained it (proof of what was stored).
    record_hash = models.CharField(max_length=64)
    gpu = models.ForeignKey(GpuDevice, on_delete=models.PROTECT, related_name="usage_records")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    workload_kind = models.CharField(max_length=16, choices=WorkloadKind.choices)
    # The agent's workload reference (allocation ref, inference product); null for idle.
    # Null, not "", because the protocol distinguishes them and the hash covers it.
    workload_ref = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    busy_ms = models.BigIntegerField()
    energy_mj = models.BigIntegerField()
    input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    requests = models.BigIntegerField()
    # Attribution seam (``attribution.attribute_records``): the contracts allocation this
    # GPU-window belongs to, or the organization API key whose work it was (the key the
    # ``ref`` names), and the contract line of either. Plain integers: metering never
    # imports contracts. ``line_id`` null = not attributed (yet). Whether a line pays for
    # the record's hour is ``contracts.billable_usage``'s rule, not these columns'.
    allocation_id = models.BigIntegerField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    line_id = models.BigIntegerField(null=True, blank=True)
    # The contracts ``Workload`` whose assignment the record names (``workload_kind =
    # 'assignment'``), checked against the node and GPU it was assigned to.
    workload_id = models.BigIntegerField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["node", "journal_epoch", "seq"]
        indexes = [models.Index(fields=["gpu", "window_start"], name="usage_gpu_window_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "journal_epoch", "seq"], name="usage_unique_node_epoch_seq"
            ),
            models.CheckConstraint(
                condition=Q(busy_ms__gte=0)
                & Q(energy_mj__gte=0)
                & Q(input_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(requests__gte=0),
                name="usage_quantities_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(window_end__gt=F("window_start")), name="usage_window_ordered"
            ),
        ]

    def __str__(self) -> str:
        return f"usage {self.journal_epoch[:8]}#{self.seq} of node {self.node_id}"


class QuarantineReason(models.TextChoices):
    BAD_SIGNATURE = "bad_signature", "Signature does not verify"
    BROKEN_CHAIN = "broken_chain", "Hash chain broken"
    MALFORMED = "malformed", "Malformed record"
    UNKNOWN_GPU = "unknown_gpu", "GPU not registered on this node"
    FUTURE_WINDOW = "future_window", "Window ends in the future"
    INVALID_WINDOW = "invalid_window", "Window ends before it starts"
    WINDOW_TOO_LONG = "window_too_long", "Window longer than 60 s"
    BUSY_EXCEEDS_WINDOW = "busy_exceeds_window", "Busy time longer than the window"
    ENERGY_EXCEEDS_MAX_POWER = "energy_exceeds_max_power", "Energy above the GPU's max power"
    OVERLAPPING_WINDOW = "overlapping_window", "Window overlaps an earlier one of the GPU"
    INVALID_QUANTITY = "invalid_quantity", "Quantity not a non-negative integer"
    UNKNOWN_WORKLOAD = "unknown_workload", "Unknown workload kind"
    QUANTITY_EXCEEDS_BOUND = "quantity_exceeds_bound", "Tokens or requests above any GPU's rate"
    PRODUCT_NOT_SERVED = "product_not_served", "Inference for a product the node does not serve"
    TOKENS_EXCEED_THROUGHPUT = "tokens_exceed_throughput", "Tokens above the product's throughput"
    RECEIPT_INVALID = "receipt_invalid", "Inference record without a valid gateway receipt"
    RECEIPT_OTHER_NODE = "receipt_other_node", "Gateway receipt issued for another node"
    RECEIPT_REPLAYED = "receipt_replayed", "Gateway receipt already metered"
    TOKENS_OVER_RECEIPT = "tokens_over_receipt", "Tokens above the receipt's bounds"
    UNASSIGNED = "unassigned", "Busy time or tokens no assignment of the GPU covers"


class QuarantinedRecordQuerySet(TenantQuerySet):
    tenant_path = "node__site__organization"


class QuarantinedRecord(models.Model):
    """A record the platform refused to bill, kept with why. Never billed, never dropped.

    Unique on ``(node, journal_epoch, seq)`` so polling the same bad record again (a
    broken chain is fetched again on every poll) stores it once.
    """

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="quarantined_records")
    # As the agent sent them ('' / 0 when the body could not be read at all).
    journal_epoch = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    reason = models.CharField(max_length=32, choices=QuarantineReason.choices)
    # What exactly failed, for the partner and finance ("busy_ms 61000 > window 60000 ms").
    detail = models.TextField()
    gpu_uuid = models.CharField(max_length=64, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    # The record exactly as received (or {"raw": ...} when it was not a JSON object).
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)

    objects = QuarantinedRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "node", "seq"]
        indexes = [models.Index(fields=["node", "-received_at"], name="quarantine_node_recent_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "journal_epoch", "seq"], name="quarantine_unique_node_epoch_seq"
            )
        ]

    def __str__(self) -> str:
        return f"quarantined #{self.seq} of node {self.node_id}: {self.reason}"


class HourlyUsage(models.Model):
    """Usage summed per (GPU, workload, UTC hour), incremented only by newly stored records.

    ``workload_ref`` is '' where the record's ref was null, so the unique key has no
    nulls and ``INSERT … ON CONFLICT DO UPDATE`` can add to it.

    On-demand work carries the API key and contract line its ``ref`` names, stamped by
    attribution (with the records it attributes) once: every record of a row names the
    same key, so the whole row is that line's, and later increments keep the stamp.
    Rating, settlement and the buyer's pages group by ``line_id``
    (``contracts.billable_usage``); nothing reads the ref again.
    """

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="hourly_usage")
    gpu = models.ForeignKey(GpuDevice, on_delete=models.PROTECT, related_name="hourly_usage")
    workload_kind = models.CharField(max_length=16, choices=WorkloadKind.choices)
    workload_ref = models.CharField(max_length=128, blank=True)
    # Start of the UTC hour the records' windows start in.
    hour = models.DateTimeField()
    busy_ms = models.BigIntegerField(default=0)
    energy_mj = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    record_count = models.PositiveIntegerField(default=0)
    # The organization API key and the contract line the row's ``ref`` names (on-demand
    # GPU time, inference); null for reserved, idle or unattributed work. Plain integers:
    # metering never imports contracts.
    api_key_id = models.BigIntegerField(null=True, blank=True)
    line_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["hour", "node", "gpu"]
        indexes = [
            models.Index(fields=["node", "hour"], name="hourly_node_hour_idx"),
            models.Index(
                fields=["line_id", "hour"],
                name="hourly_line_hour_idx",
                condition=Q(line_id__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["gpu", "workload_kind", "workload_ref", "hour"],
                name="hourly_unique_gpu_workload_hour",
            )
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.gpu_id} {self.workload_kind}"


class GpuAvailabilityDay(models.Model):
    """Which minutes of one UTC day a GPU was observed available, as a 1440-bit string.

    Why a bitmap: availability is asked per GPU per minute over 30 days. One row per GPU
    per day is 180 bytes of bits, so 30 days of 100,000 GPUs is 3 million small rows
    (~0.6 GB) instead of 4.3 billion minute rows, and a poll sets its minutes with a
    bitwise OR (``minutes | EXCLUDED.minutes``) that is idempotent: a repeated poll
    changes nothing, exactly like the usage records. ``bit_count`` sums a day in SQL.
    A multirange would be as compact for long runs but costs a merge on every write and
    grows with every gap; bits cost the same whatever the pattern.
    """

    gpu = models.ForeignKey(GpuDevice, on_delete=models.CASCADE, related_name="availability_days")
    day = models.DateField()
    minutes = MinuteBitmapField()

    class Meta:
        ordering = ["gpu", "day"]
        constraints = [
            models.UniqueConstraint(fields=["gpu", "day"], name="availability_unique_gpu_day")
        ]

    def __str__(self) -> str:
        return f"availability of {self.gpu_id} on {self.day}"

    @property
    def available_minutes(self) -> int:
        return str(self.minutes).count("1")


class NodeHealthDay(models.Model):
    """The agent's health answers about one node over one UTC day, summed for averages.

    Health (``/v1/health``) is a sample of the moment, asked every few polls; usage
    records say how busy and how hungry the GPUs were, but not how hot. Sums and a count
    per node and day (one upsert per health answer, adding to the day's row) give the
    node page a daily history without a row per sample. Not money: a sample counted
    twice after a retried batch moves an average, nothing billed.
    """

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_days")
    day = models.DateField()
    # Health answers summed into this row.
    samples = models.PositiveIntegerField(default=0)
    # Sum over the samples of the mean GPU utilization of the node (percent, 0-100).
    utilization_pct_sum = models.BigIntegerField(default=0)
    # Sum over the samples of the hottest GPU's temperature (deg C), and the day's peak.
    temperature_c_sum = models.BigIntegerField(default=0)
    temperature_c_max = models.IntegerField(default=0)
    # Sum over the samples of the node's power draw, all GPUs together (milliwatts).
    power_mw_sum = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["node", "day"]
        constraints = [
            models.UniqueConstraint(fields=["node", "day"], name="node_health_day_unique"),
            models.CheckConstraint(condition=Q(samples__gt=0), name="node_health_day_has_samples"),
        ]

    def __str__(self) -> str:
        return f"health of node {self.node_id} on {self.day}"


class PoolAvailability(models.Model):
    """The 30-day availability of one offered pool (a site's GPUs of one model) at
    ``computed_at``: what search sorts and filters by, refreshed by beat
    (``capacity.metering.pool_availability``) instead of read from 31 bitmap rows per GPU
    of every pool on every search."""

    site = models.ForeignKey("capacity.Site", on_delete=models.CASCADE, related_name="+")
    gpu_model = models.ForeignKey("capacity.GpuModel", on_delete=models.CASCADE, related_name="+")
    # Observed-available GPU-minutes over the 30 days before ``computed_at`` out of the
    # minutes the pool's GPUs existed, percent; null while metering has no data.
    percent = models.DecimalField(max_digits=5, decimal_places=2, null=True)
    # The instant the figure is for; search serves it only while it is recent.
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["site", "gpu_model"], name="pool_availability_unique_pool"
            )
        ]

    def __str__(self) -> str:
        return f"availability of site {self.site_id} / model {self.gpu_model_id}"


class AttributionCursor(models.Model):
    """How far (by ``UsageRecord`` id) attribution has run: one row, advanced in the same
    transaction as the attribution it records (``attribution.attribute_new_records``)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="attribution_cursor_one_row")]

    def __str__(self) -> str:
        return f"attributed through usage record {self.last_id}"


class InferenceRequest(models.Model):
    """One inference request the gateway routed to a node: both witnesses side by side.

    The gateway creates the row from its request log (its receipt's claims and what it
    relayed to the buyer); metering fills the agent's side when it stores the journal
    record that names the receipt. Either may arrive first: both write with
    ``INSERT … ON CONFLICT (request_id) DO UPDATE`` of their own columns only. The
    billed tokens are fixed when the agent's record is stored (docs/gateway.md
    "Witnessed usage"): never more than either side counted, and nothing without the
    agent's record of a receipt the platform signed. Ids of the key and line are plain
    integers, as on ``HourlyUsage``: metering never imports contracts.
    """

    # The receipt's ``rid``: the id the buyer sees (``X-Request-Id``, the API lookup).
    request_id = models.UUIDField(primary_key=True)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="inference_requests")
    api_key_id = models.BigIntegerField()
    line_id = models.BigIntegerField()
    product_slug = models.CharField(max_length=64)
    # The receipt's bounds (its ``max_input_tokens`` and ``max_output_tokens``).
    max_input_tokens = models.BigIntegerField()
    max_output_tokens = models.BigIntegerField()
    # When the gateway issued the receipt (its ``iat``).
    issued_at = models.DateTimeField()

    # The gateway's side; null until its log batch lands (lost if the process died).
    gateway_status = models.PositiveSmallIntegerField(null=True, blank=True)
    gateway_input_tokens = models.BigIntegerField(null=True, blank=True)
    gateway_output_tokens = models.BigIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    logged_at = models.DateTimeField(null=True, blank=True)

    # The agent's side; null until metering stores the record that names the receipt.
    usage_record = models.OneToOneField(
        UsageRecord, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    gpu = models.ForeignKey(
        GpuDevice, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    agent_input_tokens = models.BigIntegerField(null=True, blank=True)
    agent_output_tokens = models.BigIntegerField(null=True, blank=True)
    served_at = models.DateTimeField(null=True, blank=True)

    # What the buyer pays and the partner earns for this request (0 until the agent's
    # record is stored).
    billed_input_tokens = models.BigIntegerField(default=0)
    billed_output_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-issued_at"]
        indexes = [
            models.Index(fields=["line_id", "issued_at"], name="inferencereq_line_time_idx"),
            models.Index(fields=["api_key_id", "issued_at"], name="inferencereq_key_time_idx"),
            models.Index(fields=["node", "issued_at"], name="inferencereq_node_time_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_input_tokens__gte=0)
                & Q(max_output_tokens__gte=0)
                & Q(billed_input_tokens__gte=0)
                & Q(billed_output_tokens__gte=0)
                & Q(billed_input_tokens__lte=F("max_input_tokens"))
                & Q(billed_output_tokens__lte=F("max_output_tokens")),
                name="inferencereq_billed_within_receipt",
            ),
        ]

    def __str__(self) -> str:
        return f"request {self.request_id.hex} on node {self.node_id}"


class InferenceUsageHour(models.Model):
    """Billed inference tokens per (contract line, node, UTC hour): what rating, settlement
    and the buyer's pages read (``contracts.billable_usage``).

    Incremented by ingest in the statement that stores the agent's receipt records, by
    exactly the billed tokens of the ``InferenceRequest`` rows that statement filled (a
    replayed page fills none, so it adds nothing). The hour is the receipt's ``iat``
    (the platform's clock, not the agent's). ``line_id`` is a plain integer, as on
    ``InferenceRequest``: metering never imports contracts.
    """

    line_id = models.BigIntegerField()
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="inference_hours")
    # Start of the UTC hour the receipts were issued in.
    hour = models.DateTimeField()
    # Billed tokens (``InferenceRequest.billed_*``) and the requests they came from.
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["hour", "line_id", "node"]
        indexes = [models.Index(fields=["line_id", "hour"], name="inferencehour_line_hour_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["line_id", "node", "hour"], name="inferencehour_unique_line_node_hour"
            ),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0) & Q(output_tokens__gte=0) & Q(requests__gte=0),
                name="inferencehour_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 line {self.line_id} node {self.node_id}"


class InferenceDisagreementHour(models.Model):
    """Per node and UTC hour (of the receipts' ``iat``) where the gateway's and the
    agent's token counts differ: both figures, for finance (docs/gateway.md point 9).

    A read-only database view over ``InferenceRequest`` (migration
    ``0008_inference_usage_hours``), so it always shows the rows as they stand, whichever
    witness landed last. A request only the gateway logged counts on the gateway's side
    only (and one only the agent journaled on the agent's side), so it is a disagreement
    until the other side lands: within a poll interval normally, never if it was lost.
    """

    # "<node id>:<hour as Unix seconds>": the view's key (admin needs one).
    key = models.CharField(max_length=40, primary_key=True)
    node = models.ForeignKey(Node, on_delete=models.DO_NOTHING, related_name="+")
    hour = models.DateTimeField()
    requests = models.BigIntegerField()
    # Requests only one witness has recorded so far.
    gateway_only_requests = models.BigIntegerField()
    agent_only_requests = models.BigIntegerField()
    gateway_input_tokens = models.BigIntegerField()
    gateway_output_tokens = models.BigIntegerField()
    agent_input_tokens = models.BigIntegerField()
    agent_output_tokens = models.BigIntegerField()
    billed_input_tokens = models.BigIntegerField()
    billed_output_tokens = models.BigIntegerField()

    class Meta:
        managed = False
        db_table = "metering_inferencedisagreementhour"
        ordering = ["-hour", "node"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 node {self.node_id}"
