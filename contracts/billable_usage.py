"""Billable usage: which metered usage each contract line pays for. Defined here, once.

Rating (the invoice), settlement (what each node earned of it), the buyer's dashboard and
the usage API read these selectors and nothing else, so an invoice, a statement and a
dashboard cannot disagree. Usage is tied to lines by ids: an allocation names its line (and an instance's, its
workload); attribution (``contracts.attribution``) stamps usage records and the hourly
rollups of assignment work with the workload and line the assignment id names, once; an
inference request's receipt (signed by the platform) names its line, and ingest adds its
billed tokens to ``InferenceUsageHour`` by that id. No query here matches strings.

What a line pays for over ``[start, end)``:

- a reserved line: every second each of its allocations holds a GPU, used or not;
- an on-demand GPU line: every second its instances' allocations hold GPUs, start to
  stop (an instance still running counts up to ``now``), as every GPU cloud bills. Both
  are ``held_gpu_seconds``, exact to the microsecond. A failed instance's allocations
  end at the failure, a lost one's at its node's last healthy minute
  (``contracts.workloads``), so those seconds are simply not held;
- an inference line the billed input and output tokens of its requests (the least of
  the gateway's and the agent's counts, docs/gateway.md point 8), from
  ``InferenceUsageHour`` (``metered_quantities``), counted for a whole hour when the hour
  starts in ``[start, end)`` and the line had started before the hour ended and had not
  ended before it started (each request carried a receipt the platform signed for the
  key when it accepted it, so no key condition is read again).

On-demand GPU lines' busy time (rollup hours of their instances' assignment records) is
returned by ``metered_quantities`` too, by the same hour rule: shown, never priced. So are
a reserved line's tokens: those its deployments served through the gateway (receipts name
the reserved line), from ``InferenceUsageHour`` like an inference line's, billed by the
reservation (``charges.metered_charges`` prices inference lines only).

- SLA: the GPU-minutes each reserved line's allocations were observed available, out of
  those that counted (``sla_minutes``); the rest are its down minutes (``down_minutes``),
  which settlement charges back per node. A reserved GPU whose workload failed by the
  node's fault is down from the failure until the buyer dismissed it, whatever metering
  observed (the rule in ``sla_minutes``). Maintenance excluded from what counts is
  metering's rule, read from ``capacity.metering.selectors.maintenance_exclusions`` and
  nowhere else: windows announced at least 7 days ahead, and of those at most
  ``SLA_MAINTENANCE_ALLOWANCE_HOURS`` (default 8) per GPU per UTC calendar month, used up
  in time order; maintenance beyond the allowance counts as downtime (so a window from
  2026 to 2099 excludes 8 hours a month and the rest is down).

The conditions are evaluated when the usage is read, from the keys', lines' and
allocations' own timestamps, so usage that arrives late (a node that was offline) is
counted by the same rule as usage that arrived on time.

Every selector answers per line and, on request, per node and per UTC hour or day: its
keys are ``UsageKey(line_id, node_id, start)`` with ``None`` where not asked for
(``held_gpu_seconds`` also per instance: ``UsageKey.workload_id``, for the instance
pages, so an instance's page and its invoice read one rule).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from capacity.metering.availability import NOTHING, AvailabilityFigure, gpu_availability
from capacity.metering.models import GpuAvailabilityDay, HourlyUsage, InferenceUsageHour
from capacity.metering.selectors import maintenance_exclusions, measured_until_by_node
from capacity.models import GpuDevice
from contracts.models import (
    Allocation,
    ContractLine,
    LineKind,
    Workload,
    WorkloadFault,
    WorkloadState,
)

Bucket = Literal["hour", "day"]
BUCKETS: tuple[Bucket, ...] = ("hour", "day")


class UsageKey(NamedTuple):
    """What a figure belongs to: a contract line, and its node and bucket when asked for."""

    line_id: int
    node_id: int | None = None
    # Start of the UTC hour or day; None when the figure covers the whole period.
    start: datetime | None = None
    # The instance whose allocations held the GPUs, when asked for (None: a reservation's).
    workload_id: int | None = None


@dataclass(frozen=True)
class MeteredQuantities:
    """Sums of a line's metered rollup hours. An inference line pays for the tokens; the
    rest (an on-demand GPU line's ``busy_ms`` among it) is shown, never priced."""

    busy_ms: int = 0
    energy_mj: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0

    def __add__(self, other: MeteredQuantities) -> MeteredQuantities:
        return MeteredQuantities(
            busy_ms=self.busy_ms + other.busy_ms,
            energy_mj=self.energy_mj + other.energy_mj,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            requests=self.requests + other.requests,
        )


# -- the SQL pieces every selector shares ------------------------------------------------------


def _scope(
    contract_ids: Iterable[int] | None, line_ids: Iterable[int] | None
) -> tuple[str, dict[str, list[int]]]:
    """``AND`` conditions on the line (``cl``) for the contracts or lines asked for."""
    sql, params = "", {}
    if contract_ids is not None:
        sql += " AND cl.contract_id = ANY(%(contract_ids)s)"
        params["contract_ids"] = list(contract_ids)
    if line_ids is not None:
        sql += " AND cl.id = ANY(%(line_ids)s)"
        params["line_ids"] = list(line_ids)
    return sql, params


def _bucket_unit(bucket: Bucket | None) -> str | None:
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    return bucket


def _run(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# -- reserved --------------------------------------------------------------------------------


def held_gpu_seconds(
    *,
    start: datetime,
    end: datetime,
    contract_ids: Iterable[int] | None = None,
    line_ids: Iterable[int] | None = None,
    workload_ids: Iterable[int] | None = None,
    by_node: bool = False,
    by_workload: bool = False,
    bucket: Bucket | None = None,
    now: datetime | None = None,
) -> dict[UsageKey, Decimal]:
    """Seconds each line's allocations hold GPUs inside ``[start, end)`` (reserved lines'
    reservations and on-demand GPU lines' instances alike), exact (``extract(epoch …)`` of
    a range difference is exact numeric), summed per line and, on request, per node, per
    instance (``by_workload``; ``workload_ids`` keeps those instances' allocations only)
    and per UTC hour or day. An instance still running (open upper bound) holds until
    ``now``. Zero figures are left out."""
    unit = _bucket_unit(bucket)
    scope, params = _scope(contract_ids, line_ids)
    if workload_ids is not None:
        scope += " AND a.workload_id = ANY(%(workload_ids)s)"
        params["workload_ids"] = list(workload_ids)
    nodes = (
        f"\n        JOIN {GpuDevice._meta.db_table} AS g ON g.id = a.gpu_device_id"
        if by_node
        else ""
    )
    # The held range's end: its own, or ``now`` while an instance runs.
    held_until = "coalesce(upper(a.period), %(now)s)"
    # Inside a bucket the held range is cut at the bucket's bounds too.
    lower, upper, buckets = "%(start)s", "%(end)s", ""
    if unit is not None:
        lower, upper = "%(start)s, b.start", f"%(end)s, b.start + interval '1 {unit}'"
        buckets = f"""
        CROSS JOIN LATERAL generate_series(
            date_trunc('{unit}', greatest(lower(a.period), %(start)s), 'UTC'),
            least({held_until}, %(end)s) - interval '1 microsecond',
            interval '1 {unit}') AS b(start)"""
    sql = f"""
        SELECT a.line_id, {"g.node_id" if by_node else "NULL"},
               {"b.start" if unit else "NULL::timestamptz"},
               {"a.workload_id" if by_workload else "NULL::bigint"},
               sum(greatest(0, extract(epoch FROM least({held_until}, {upper})
                                                  - greatest(lower(a.period), {lower}))))
        FROM {Allocation._meta.db_table} AS a
        JOIN {ContractLine._meta.db_table} AS cl ON cl.id = a.line_id{nodes}{buckets}
        WHERE a.period && tstzrange(%(start)s, %(end)s, '[)'){scope}
        GROUP BY 1, 2, 3, 4
    """  # noqa: S608 (table names from model metadata, units from BUCKETS)
    now = now or timezone.now()
    rows = _run(sql, {"start": start, "end": end, "now": now, **params})
    return {
        UsageKey(line_id, node_id, bucket_start, workload_id): Decimal(seconds)
        for line_id, node_id, bucket_start, workload_id, seconds in rows
        if seconds
    }


# -- metered ---------------------------------------------------------------------------------

# The rule, once: which rollup hours (``h``) their line (``cl``) pays for. Evaluated at
# read time (see the docstring). Every metered hour: in the period, the line in force.
_LINE_HOUR = """
    h.hour >= %(start)s AND h.hour < %(end)s
    AND cl.starts_at < h.hour + interval '1 hour'
    AND (cl.ended_at IS NULL OR cl.ended_at > h.hour)
"""
# On-demand GPU busy time (shown, never priced), from the rollup hours attribution
# stamped with the line of the instance whose assignment the records name.
_GPU_HOUR = f"cl.kind = 'on_demand_gpu' AND {_LINE_HOUR}"
# Inference, from the billed tokens of receipt records (``InferenceUsageHour``, hour of
# the receipts' ``iat``): each receipt is the platform's signed word that it accepted the
# key for the line at that moment, so no key condition is read again. A reserved line's
# are its deployments' tokens: shown, never priced.
_INFERENCE_HOUR = f"cl.kind IN ('inference', 'reserved') AND {_LINE_HOUR}"


def metered_quantities(
    *,
    start: datetime,
    end: datetime,
    contract_ids: Iterable[int] | None = None,
    line_ids: Iterable[int] | None = None,
    by_node: bool = False,
    bucket: Bucket | None = None,
) -> dict[UsageKey, MeteredQuantities]:
    """The metered rollup hours of on-demand lines in ``[start, end)`` (the rule in the
    module docstring), summed per line and, on request, per node and per UTC hour or day:
    on-demand GPU lines' busy time (shown, not billed) from the ``HourlyUsage`` hours
    stamped with their instances' line, inference lines' billed tokens (and reserved
    lines' deployments' tokens, shown, not billed) from ``InferenceUsageHour`` (tokens of
    receipt records only; inference hours stamped by the retired key-prefix refs are not
    read)."""
    unit = _bucket_unit(bucket)
    scope, params = _scope(contract_ids, line_ids)
    sql = f"""
        SELECT h.line_id, {"h.node_id" if by_node else "NULL"},
               {f"date_trunc('{unit}', h.hour, 'UTC')" if unit else "NULL::timestamptz"},
               sum(h.busy_ms), sum(h.energy_mj), sum(h.input_tokens), sum(h.output_tokens),
               sum(h.requests)
        FROM (
            SELECT h.line_id, h.node_id, h.hour, h.busy_ms, h.energy_mj, h.input_tokens,
                   h.output_tokens, h.requests
            FROM {HourlyUsage._meta.db_table} AS h
            JOIN {ContractLine._meta.db_table} AS cl ON cl.id = h.line_id
            WHERE h.line_id IS NOT NULL AND {_GPU_HOUR}{scope}
            UNION ALL
            SELECT h.line_id, h.node_id, h.hour, 0, 0, h.input_tokens, h.output_tokens,
                   h.requests
            FROM {InferenceUsageHour._meta.db_table} AS h
            JOIN {ContractLine._meta.db_table} AS cl ON cl.id = h.line_id
            WHERE {_INFERENCE_HOUR}{scope}
        ) AS h
        GROUP BY 1, 2, 3
    """  # noqa: S608 (table names from model metadata, units from BUCKETS)
    rows = _run(sql, {"start": start, "end": end, **params})
    return {
        UsageKey(line_id, node_id, bucket_start): MeteredQuantities(*(int(value) for value in sums))
        for line_id, node_id, bucket_start, *sums in rows
    }


# -- SLA -------------------------------------------------------------------------------------


def sla_minutes(
    *, start: datetime, end: datetime, line_ids: Iterable[int], by_node: bool = False
) -> dict[UsageKey, AvailabilityFigure]:
    """Available and counted GPU-minutes of reserved lines' allocations in ``[start, end)``:
    each allocation counts from its own start to its own end, clipped to the period and to
    what metering could have measured by now, less maintenance announced in time
    (metering's availability rule, ``capacity.metering.availability``). Lines without an
    allocation in the period are left out (their figure is ``NOTHING``).

    On top of metering's observations, for the SLA only (offer pages and search keep
    metering's rule): a GPU of the line whose workload ``failed`` by the node's fault
    (``Workload.fault``: the node could not run what the buyer asked, docs/workloads.md
    "Whose fault") is down from the failure (``ended_at``) until the buyer stopped it,
    redeployed it or started another workload on that GPU (``dismissed_at``), or until
    the allocation ends: the buyer paid for a GPU that could not run their work, even if
    the agent kept reporting it. A failure that was the buyer's (their image does not
    exist, their container exited on its own) changes nothing. Minutes are whole, as
    metering's: from the minute of the failure up to the minute of the dismissal."""
    allocations = list(
        Allocation.objects.filter(
            line_id__in=list(line_ids), period__overlap=(start, end)
        ).select_related("gpu_device")
    )
    if not allocations:
        return {}
    bitmaps: dict[int, dict[date, str]] = defaultdict(dict)
    for gpu_id, day, minutes in GpuAvailabilityDay.objects.filter(
        gpu_id__in={allocation.gpu_device_id for allocation in allocations},
        day__gte=start.date(),
        day__lte=end.date(),
    ).values_list("gpu_id", "day", "minutes"):
        bitmaps[gpu_id][day] = minutes
    node_ids = {allocation.gpu_device.node_id for allocation in allocations}
    excluded = maintenance_exclusions(node_ids=node_ids, since=start, until=end)
    measured = measured_until_by_node(node_ids=node_ids, now=timezone.now())
    failures = _node_fault_failures(
        line_ids={allocation.line_id for allocation in allocations}, start=start, end=end
    )
    figures: dict[UsageKey, AvailabilityFigure] = defaultdict(lambda: NOTHING)
    for allocation in allocations:
        node_id = allocation.gpu_device.node_id
        key = UsageKey(allocation.line_id, node_id if by_node else None)
        figures[key] += gpu_availability(
            bitmaps=bitmaps[allocation.gpu_device_id],
            counted_from=max(start, allocation.period.lower),
            until=min(end, allocation.period.upper or end),
            measured_until=measured[node_id],
            excluded=excluded.get(node_id, ()),
            down=failures.get((allocation.line_id, allocation.gpu_device_id), ()),
        )
    return dict(figures)


def _node_fault_failures(
    *, line_ids: Iterable[int], start: datetime, end: datetime
) -> dict[tuple[int, int], list[tuple[datetime, datetime]]]:
    """Per (reserved line, GPU), the spans its workloads failed by the node's fault were
    down in ``[start, end)``: failure to dismissal (or ``end``). ``gpu_availability``
    clips them to each allocation's counted minutes."""
    spans: dict[tuple[int, int], list[tuple[datetime, datetime]]] = defaultdict(list)
    rows = (
        Workload.objects.filter(
            line_id__in=list(line_ids),
            line__kind=LineKind.RESERVED,
            state=WorkloadState.FAILED,
            fault=WorkloadFault.NODE,
            ended_at__lt=end,
        )
        .filter(Q(dismissed_at=None) | Q(dismissed_at__gt=start))
        .values_list("line_id", "gpus", "ended_at", "dismissed_at")
    )
    for line_id, gpu_id, failed_at, dismissed_at in rows:
        if gpu_id is not None and failed_at is not None:  # a failed workload has ended
            spans[(line_id, gpu_id)].append((max(failed_at, start), min(dismissed_at or end, end)))
    return spans


def down_minutes(
    *, start: datetime, end: datetime, line_ids: Iterable[int], by_node: bool = False
) -> dict[UsageKey, int]:
    """GPU-minutes reserved lines' allocations were down in ``[start, end)``: counted but
    not available (not observed, or down by a node-fault failure), as the SLA counts them
    (``sla_minutes``); settlement charges them back per node from here."""
    return {
        key: figure.counted_minutes - figure.available_minutes
        for key, figure in sla_minutes(
            start=start, end=end, line_ids=line_ids, by_node=by_node
        ).items()
    }
