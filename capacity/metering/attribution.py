"""Attribution: which contract line each usage record belongs to. The seam for contracts.

Every stored ``UsageRecord`` carries what the agent said it was doing
(``workload_kind``, ``workload_ref``) and two nullable columns that say whom it bills:

- ``allocation_id``: for ``workload_kind = 'allocation'``, the contracts ``Allocation``
  whose GPU is the record's ``gpu`` and whose period contains the record's window
  (``gpu_device = record.gpu AND period @> window_start``; the allocation exclusion
  constraint guarantees at most one). The agent's ``ref`` is informative only: the
  partner controls the agent, so the platform's own allocation table decides.
- ``api_key_id``: for ``workload_kind = 'inference'``, the organization ``ApiKey`` whose
  calls the GPU served: an inference server behind the platform's gateway reports
  ``ref = "<product slug>@<key prefix>"`` (a ref naming only a product bills nobody).

``idle`` records bill nobody and stay unattributed; so does anything that matches no
allocation (it is then on-demand GPU time, or a partner's own use).

The contracts app fills it in (``contracts.attribution``: one ``UPDATE … FROM`` per kind,
over the given records, idempotent: only rows still null are touched) by registering
itself here at start-up; every metering batch calls it for the records it stored
(``batch._attribute_stored``). Rating reads the hourly rollups by the same refs and does
not depend on these columns; the buyer's usage pages do.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet

from capacity.metering.models import UsageRecord

# The attributor registered by contracts (``ContractsConfig.ready``); metering never
# imports contracts. ``None``: no contracts app, nothing to attribute.
_attributor: Callable[..., int] | None = None


def register_attributor(attributor: Callable[..., int]) -> None:
    """Called once by the contracts app at start-up."""
    global _attributor
    _attributor = attributor


def attribute_records(*, records: QuerySet[UsageRecord]) -> int:
    """Fill ``allocation_id`` / ``api_key_id`` of ``records`` where still null; how many.

    Delegates to the contracts app's attributor (``contracts.attribution``); without it
    nothing can be attributed: returns 0 and changes nothing.
    """
    if _attributor is None:
        return 0
    return _attributor(records=records)
