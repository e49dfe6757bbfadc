"""Attribution: which contract line each usage record belongs to. The seam for contracts.

Every stored ``UsageRecord`` carries what the agent said it was doing
(``workload_kind``, ``workload_ref``) and nullable columns that say whose it is:

- ``allocation_id``: for ``workload_kind = 'allocation'``, the contracts ``Allocation``
  whose GPU is the record's ``gpu`` and whose period contains the record's window
  (``gpu_device = record.gpu AND period @> window_start``; the allocation exclusion
  constraint guarantees at most one). The agent's ``ref`` is informative only: the
  partner controls the agent, so the platform's own allocation table decides.
- ``api_key_id``: otherwise, the organization ``ApiKey`` whose on-demand GPU time it was,
  as the ref names it: ``"gpu@<key prefix>"``. Inference is not attributed: its receipt
  records name their line by id and ingest bills them (``InferenceUsageHour``).
- ``line_id``: the contract line of either; null = nobody's (idle windows, a partner's
  own use, refs naming no key) or not attributed yet.

The same pass stamps the key and line on the hourly rollups (``HourlyUsage``) of that
on-demand work, which is what rating, settlement and the buyer's pages read, grouped by
line id (``contracts.billable_usage``).

The contracts app does it (``contracts.attribution``: one statement per batch,
idempotent: only rows still null are touched) by registering itself here at start-up.
``attribute_new_records`` (beat, every minute) runs it over the records stored since its
last run, by id, with a cursor advanced in the same transaction: whatever happened to a
batch (a retry, a killed worker, a crash after its commit), its records are attributed
by the next run, and a first run attributes everything stored before.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from django.db.models import Max, QuerySet

from capacity.metering.models import AttributionCursor, UsageRecord

# Workload kinds attribution ties to lines (idle windows bill nobody; inference is billed
# from receipts by ingest).
BILLABLE_KINDS = ("allocation", "assignment")
# Ids below the cursor scanned again on every run: an ingest transaction that took its ids
# before a later one but committed after it is still seen (ingest statements last
# milliseconds; this is about a minute of a 100,000-GPU fleet).
OVERLAP_IDS = 100_000
# Ids per attribution statement.
CHUNK_IDS = 200_000

# The attributor registered by contracts (``ContractsConfig.ready``); metering never
# imports contracts. ``None``: no contracts app, nothing to attribute.
_attributor: Callable[..., int] | None = None


def register_attributor(attributor: Callable[..., int]) -> None:
    """Called once by the contracts app at start-up."""
    global _attributor
    _attributor = attributor


def attribute_records(*, records: QuerySet[UsageRecord]) -> int:
    """Attribute ``records`` still unattributed (and stamp their rollup hours); how many.

    Delegates to the contracts app's attributor (``contracts.attribution``); without it
    nothing can be attributed: returns 0 and changes nothing.
    """
    if _attributor is None:
        return 0
    return _attributor(records=records)


def attribute_new_records(*, overlap: int = OVERLAP_IDS, chunk: int = CHUNK_IDS) -> int:
    """Attribute the billable records stored since the last run (and ``overlap`` ids
    before it); advance the cursor; return how many records were attributed. Concurrent
    runs wait for each other (the cursor row is locked)."""
    with transaction.atomic():
        cursor, _ = AttributionCursor.objects.select_for_update().get_or_create(pk=1)
        high = UsageRecord.objects.aggregate(high=Max("pk"))["high"] or 0
        low = max(0, cursor.last_id - overlap)
        attributed = 0
        while low < high:
            upper = min(low + chunk, high)
            attributed += attribute_records(
                records=UsageRecord.objects.filter(
                    pk__gt=low,
                    pk__lte=upper,
                    workload_kind__in=BILLABLE_KINDS,
                    line_id__isnull=True,
                )
            )
            low = upper
        cursor.last_id = max(cursor.last_id, high)
        cursor.save(update_fields=["last_id", "updated_at"])
    return attributed
