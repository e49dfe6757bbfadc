"""Marketplace search: offers buyers can reserve, with what is actually free.

One queryset, one SQL statement per page (plus the paginator's count and the free-GPU
count per pool): every figure a
result shows is an annotation, never a per-row query.

- ``free_gpus``: devices of the offer's site and GPU model, on non-retired nodes, with no
  allocation overlapping the requested window, capped at what the offer lists. Counted
  for every pool in one set-based query first (``contracts.selectors.free_gpus_by_pool``,
  cached per window until the inventory changes: ``marketplace.search_cache``) and
  handed to the offer query as a JSON object keyed ``"site:model"``: a correlated count
  per offer probed the allocation index once per device of every pool (40,000 probes,
  twice, at ten times the demo).
- ``price_per_gpu_hour``: the reserved rate for the requested term.
- ``availability_percent``: the 30-day availability of the pool by the offer page's rule
  (``capacity.metering.availability``: minutes after enrollment and already measurable,
  announced maintenance excluded), the figure beat stored for the pool within the last
  15 minutes, else computed for the search (``capacity.metering.pool_availability``).
  Null while nothing is measurable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, F, IntegerField, Min, QuerySet, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Least
from django.utils import timezone

from capacity.metering.pool_availability import stored_or_live_availability_sql
from capacity.models import GpuModel, Offer, Region
from contracts.models import TERM_MONTHS
from contracts.selectors import free_gpus_by_pool
from contracts.terms import add_months
from marketplace import search_cache

SORTS = {
    "price": ("price_per_gpu_hour", "-free_gpus", "pk"),
    "-price": ("-price_per_gpu_hour", "pk"),
    "availability": (F("availability_percent").desc(nulls_last=True), "price_per_gpu_hour", "pk"),
    "free": ("-free_gpus", "price_per_gpu_hour", "pk"),
}
DEFAULT_SORT = "price"


@dataclass(frozen=True)
class SearchFilters:
    """What a buyer asks for. ``None`` = no constraint."""

    gpu_model_id: int | None = None
    region: str | None = None
    country: str | None = None
    energy_source: str | None = None
    # Minimum GPUs free over the whole window.
    gpu_count: int | None = None
    starts_at: datetime | None = None
    term_months: int = 1
    # Maximum reserved price per GPU-hour for the term.
    max_price: Decimal | None = None
    # Minimum 30-day measured availability, percent.
    min_availability: Decimal | None = None
    sort: str = DEFAULT_SORT

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """``[start, end)`` of the term. No start = the next whole minute: what the result
        links carry to the offer page (to the minute), and one window per minute for the
        cache."""
        start = self.starts_at or next_minute(now)
        return start, add_months(start, self.term_months)


def next_minute(moment: datetime) -> datetime:
    """``moment`` rounded up to a whole minute."""
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def _price_for_term(term_months: int) -> F:
    return F(f"reserved_price_{term_months if term_months in TERM_MONTHS else 1}m_per_gpu_hour")


def _availability_expression(now: datetime) -> RawSQL:
    """30-day availability percent of an offer's pool, as SQL (null while unmeasured)."""
    sql, params = stored_or_live_availability_sql(pool=Offer._meta.db_table, now=now)
    # Table names come from model metadata, values are parameters: nothing user-supplied.
    return RawSQL(sql, params, output_field=DecimalField(max_digits=5, decimal_places=2))  # noqa: S611


def _free_gpus_expression(*, start: datetime, end: datetime, gpu_model_id: int | None) -> RawSQL:
    """Free GPUs of an offer's pool over ``[start, end)``, as SQL (see module docstring)."""
    free = search_cache.cached(
        "free-gpus",
        (start.isoformat(), end.isoformat(), gpu_model_id),
        lambda: free_gpus_by_pool(start=start, end=end, gpu_model_id=gpu_model_id),
    )
    by_pool = json.dumps({f"{site}:{model}": count for (site, model), count in free.items()})
    offers = Offer._meta.db_table
    sql = (
        f"coalesce((%s::jsonb ->> ({offers}.site_id || ':' || {offers}.gpu_model_id))::integer, 0)"
    )
    # The table name comes from model metadata; the counts are a parameter.
    return RawSQL(sql, (by_pool,), output_field=IntegerField())  # noqa: S611


def offer_search(*, filters: SearchFilters, now: datetime | None = None) -> QuerySet[Offer]:
    """Active offers matching ``filters``, annotated and sorted (see module docstring)."""
    now = now or timezone.now()
    start, end = filters.window(now)
    offers = (
        Offer.objects.active()
        .filter(available_from__lte=start)
        .exclude(available_until__lt=end)
        .select_related("site", "gpu_model")
        .annotate(
            free_gpus=Least(
                F("gpu_count"),
                _free_gpus_expression(start=start, end=end, gpu_model_id=filters.gpu_model_id),
            ),
            price_per_gpu_hour=_price_for_term(filters.term_months),
            availability_percent=_availability_expression(now),
        )
    )
    if filters.gpu_model_id:
        offers = offers.filter(gpu_model_id=filters.gpu_model_id)
    if filters.region:
        offers = offers.filter(site__region=filters.region)
    if filters.country:
        offers = offers.filter(site__country=filters.country.upper())
    if filters.energy_source:
        offers = offers.filter(site__energy_source=filters.energy_source)
    offers = offers.filter(free_gpus__gte=filters.gpu_count or 1)
    if filters.max_price is not None:
        offers = offers.filter(price_per_gpu_hour__lte=filters.max_price)
    if filters.min_availability is not None:
        offers = offers.filter(availability_percent__gte=filters.min_availability)
    return offers.order_by(*SORTS.get(filters.sort, SORTS[DEFAULT_SORT]))


def best_offer(
    *,
    gpu_model_id: int,
    gpu_count: int,
    starts_at: datetime,
    term_months: int,
    region: str | None = None,
) -> Offer | None:
    """The cheapest active offer of a GPU model (in a region) with enough free GPUs: what
    a buyer reserves when they name a GPU model rather than an offer."""
    filters = SearchFilters(
        gpu_model_id=gpu_model_id,
        region=region or None,
        gpu_count=gpu_count,
        starts_at=starts_at,
        term_months=term_months,
        sort="price",
    )
    return offer_search(filters=filters).first()


def listed_gpu_models() -> QuerySet[GpuModel]:
    """GPU models some active offer lists: what the search and quote forms offer to pick
    (a catalogue model nobody lists would only ever find nothing)."""
    return GpuModel.objects.filter(offers__is_active=True).distinct().order_by("name")


def listed_regions() -> list[tuple[str, str]]:
    """``(value, label)`` of the regions where some active offer lists GPUs, in the
    catalogue's order: the search form's choices and the landing page's count."""
    present = set(
        Offer.objects.active().values_list("site__region", flat=True).distinct().order_by()
    )
    return [(value, label) for value, label in Region.choices if value in present]


def gpu_price_summary() -> list[dict[str, Any]]:
    """Per GPU model and currency listed now: the lowest on-demand and 12-month reserved
    price per GPU-hour, the GPUs listed and the regions. The public pricing page; one
    query."""
    rows = (
        Offer.objects.active()
        .values("gpu_model__name", "currency")
        .annotate(
            lowest_on_demand=Min("on_demand_price_per_gpu_hour"),
            lowest_reserved_12m=Min("reserved_price_12m_per_gpu_hour"),
            gpus_listed=Sum("gpu_count"),
            region_count=Count("site__region", distinct=True),
        )
        .order_by("gpu_model__name", "currency")
    )
    return [dict(row) for row in rows]
