"""Rating: what every contract owes for a calendar month, line by line.

Quantities come from SQL aggregation, never from Python loops over usage:

- reserved: the seconds of each allocation inside the month, summed per line
  (``extract(epoch …)`` is exact numeric), times GPUs is implicit (one allocation per
  GPU); billed whether used or not;
- on-demand GPU and inference: metering's hourly rollups, joined to the API key the
  workload reference names (``contracts.attribution`` writes references as
  ``gpu@<key prefix>`` and ``<product slug>@<key prefix>``), summed per contract line;
- SLA: ``contracts.sla.line_sla`` per reserved line (metering's per-minute availability);
- late usage: a month's metered total now, less what invoices already carry for it.

Each line's amount is computed in exact ``Decimal`` and rounded once (``round_money``);
the invoice total is the sum of the rounded lines. The commitment true-up compares the
month's rounded charges with the (prorated) commitment.

A rollup hour counts for a key if the key existed during the hour and was not revoked
before it started, and for a line that had not ended before the hour started; hours in
which the GPU was held by a reservation never bill on demand (the reservation pays).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext

from django.apps import apps
from django.db import connection
from django.db.models import Q, Sum

from accounts.models import ApiKey
from billing.models import Invoice, InvoiceLine, InvoiceStatus, LineKind, Meter
from billing.money import SECONDS_PER_HOUR, TOKENS_PER_MILLION, round_money
from billing.periods import month_bounds, previous_month
from contracts.models import Allocation, Contract, ContractLine
from contracts.models import LineKind as ContractLineKind
from contracts.sla import line_sla

# Precision for exact line amounts: enough digits that half-up rounding to the cent of
# any quotient we form (hours = seconds / 3600) is decided correctly.
_PRECISION = 60
_QUANTITY_PLACES = Decimal("0.000000001")
MS_PER_HOUR = Decimal(3_600_000)
DEFAULT_LATE_USAGE_LOOKBACK_MONTHS = 3


@dataclass(frozen=True)
class RatedLine:
    """One invoice line before it is stored: exact amount in major units."""

    kind: str
    description: str
    service_month: date
    exact_amount: Decimal
    contract_line_id: int | None = None
    quantity: Decimal | None = None
    unit: str = ""
    unit_price: Decimal | None = None
    meter: str = ""
    metered_quantity: int | None = None

    @property
    def amount_minor(self) -> int:
        return round_money(self.exact_amount)


@dataclass(frozen=True)
class MeteredUsage:
    busy_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def billable_contracts(*, month: date) -> Q:
    """Contracts that were active at some point of the month."""
    start, end = month_bounds(month)
    return Q(activated_at__isnull=False, activated_at__lt=end) & (
        Q(ended_at__isnull=True) | Q(ended_at__gt=start)
    )


# -- SQL aggregation ------------------------------------------------------------------------


def _contract_filter(contract_ids: list[int] | None, column: str) -> tuple[str, list[list[int]]]:
    if contract_ids is None:
        return "", []
    return f" AND {column} = ANY(%s)", [contract_ids]


def reserved_gpu_seconds(
    *, start: datetime, end: datetime, contract_ids: list[int] | None = None
) -> dict[int, Decimal]:
    """Reserved GPU-seconds inside ``[start, end)`` per reserved contract line (exact)."""
    where, params = _contract_filter(contract_ids, "cl.contract_id")
    sql = f"""
        SELECT a.line_id,
               sum(extract(epoch FROM least(upper(a.period), %s) - greatest(lower(a.period), %s)))
        FROM {Allocation._meta.db_table} AS a
        JOIN {ContractLine._meta.db_table} AS cl ON cl.id = a.line_id
        WHERE a.period && tstzrange(%s, %s, '[)'){where}
        GROUP BY a.line_id
    """  # noqa: S608 (table names come from model metadata)
    with connection.cursor() as cursor:
        cursor.execute(sql, [end, start, start, end, *params])
        return {line_id: Decimal(seconds) for line_id, seconds in cursor.fetchall() if seconds}


def metered_usage(
    *, start: datetime, end: datetime, contract_ids: list[int] | None = None
) -> dict[int, MeteredUsage]:
    """On-demand GPU busy time and inference tokens per contract line, from the rollups."""
    if not apps.is_installed("capacity.metering"):
        return {}
    hourly = apps.get_model("metering", "HourlyUsage")._meta.db_table
    gpu = apps.get_model("capacity", "GpuDevice")._meta.db_table
    node = apps.get_model("capacity", "Node")._meta.db_table
    offer = apps.get_model("capacity", "Offer")._meta.db_table
    product = ContractLine._meta.get_field("inference_product").related_model._meta.db_table  # type: ignore[union-attr]
    link = apps.get_model("contracts", "LineApiKey")._meta.db_table
    where, params = _contract_filter(contract_ids, "cl.contract_id")
    key_in_force = """
        AND k.created_at < h.hour + interval '1 hour'
        AND (k.revoked_at IS NULL OR k.revoked_at > h.hour)
        AND cl.starts_at < h.hour + interval '1 hour'
        AND (cl.ended_at IS NULL OR cl.ended_at > h.hour)
        AND h.hour >= %s AND h.hour < %s
    """
    sql = f"""
        SELECT cl.id, sum(h.busy_ms), 0, 0
        FROM {hourly} AS h
        JOIN {ApiKey._meta.db_table} AS k ON h.workload_ref = 'gpu@' || k.prefix
        JOIN {link} AS l ON l.api_key_id = k.id
        JOIN {ContractLine._meta.db_table} AS cl
             ON cl.id = l.line_id AND cl.kind = 'on_demand_gpu'
        JOIN {offer} AS o ON o.id = cl.offer_id
        JOIN {gpu} AS g ON g.id = h.gpu_id
        JOIN {node} AS n ON n.id = g.node_id
             AND n.site_id = o.site_id AND n.gpu_model_id = o.gpu_model_id
        WHERE h.workload_kind = 'allocation'
          {key_in_force}{where}
          AND NOT EXISTS (
              SELECT 1 FROM {Allocation._meta.db_table} AS a
              WHERE a.gpu_device_id = h.gpu_id
                AND a.period && tstzrange(h.hour, h.hour + interval '1 hour', '[)'))
        GROUP BY cl.id
        UNION ALL
        SELECT cl.id, 0, sum(h.input_tokens), sum(h.output_tokens)
        FROM {hourly} AS h
        JOIN {product} AS p ON h.workload_ref LIKE p.slug || '@%%'
        JOIN {ApiKey._meta.db_table} AS k ON h.workload_ref = p.slug || '@' || k.prefix
        JOIN {link} AS l ON l.api_key_id = k.id
        JOIN {ContractLine._meta.db_table} AS cl
             ON cl.id = l.line_id AND cl.kind = 'inference' AND cl.inference_product_id = p.id
        WHERE h.workload_kind = 'inference'
          {key_in_force}{where}
        GROUP BY cl.id
    """  # noqa: S608 (table names come from model metadata)
    usage: dict[int, MeteredUsage] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, end, *params, start, end, *params])
        for line_id, busy_ms, input_tokens, output_tokens in cursor.fetchall():
            previous = usage.get(line_id, MeteredUsage())
            usage[line_id] = MeteredUsage(
                busy_ms=previous.busy_ms + int(busy_ms),
                input_tokens=previous.input_tokens + int(input_tokens),
                output_tokens=previous.output_tokens + int(output_tokens),
            )
    return usage


# -- lines ----------------------------------------------------------------------------------


def _quantity(value: Decimal) -> Decimal:
    return value.quantize(_QUANTITY_PLACES)


def _line_label(line: ContractLine) -> str:
    if line.inference_product_id is not None:
        product = line.inference_product
        assert product is not None
        return product.name
    offer = line.offer
    assert offer is not None
    return f"{offer.gpu_model.name} at {offer.site.name}"


def _metered_lines(
    *, line: ContractLine, usage: MeteredUsage, service_month: date, late: bool
) -> list[RatedLine]:
    """On-demand GPU or inference lines for ``usage`` of ``line`` in ``service_month``."""
    prefix = f"Late usage from {service_month:%B %Y}: " if late else ""
    rated: list[RatedLine] = []
    if line.kind == ContractLineKind.ON_DEMAND_GPU and usage.busy_ms > 0:
        assert line.price_per_gpu_hour is not None
        hours = Decimal(usage.busy_ms) / MS_PER_HOUR
        rated.append(
            RatedLine(
                kind=LineKind.LATE_USAGE if late else LineKind.ON_DEMAND_GPU,
                description=f"{prefix}On-demand {_line_label(line)}",
                service_month=service_month,
                exact_amount=Decimal(usage.busy_ms) * line.price_per_gpu_hour / MS_PER_HOUR,
                contract_line_id=line.pk,
                quantity=_quantity(hours),
                unit="GPU-hours",
                unit_price=line.price_per_gpu_hour,
                meter=Meter.GPU_BUSY_MS,
                metered_quantity=usage.busy_ms,
            )
        )
    if line.kind == ContractLineKind.INFERENCE:
        for meter, tokens, price, label in (
            (Meter.INPUT_TOKENS, usage.input_tokens, line.input_price_per_million_tokens, "input"),
            (
                Meter.OUTPUT_TOKENS,
                usage.output_tokens,
                line.output_price_per_million_tokens,
                "output",
            ),
        ):
            if tokens <= 0:
                continue
            assert price is not None
            kind = LineKind.INFERENCE_INPUT if label == "input" else LineKind.INFERENCE_OUTPUT
            rated.append(
                RatedLine(
                    kind=LineKind.LATE_USAGE if late else kind,
                    description=f"{prefix}{_line_label(line)}, {label} tokens",
                    service_month=service_month,
                    exact_amount=Decimal(tokens) * price / TOKENS_PER_MILLION,
                    contract_line_id=line.pk,
                    quantity=_quantity(Decimal(tokens) / TOKENS_PER_MILLION),
                    unit="M tokens",
                    unit_price=price,
                    meter=meter,
                    metered_quantity=tokens,
                )
            )
    return rated


def _reserved_lines(
    *, line: ContractLine, gpu_seconds: Decimal, month: date, start: datetime, end: datetime
) -> list[RatedLine]:
    assert line.price_per_gpu_hour is not None
    charge = gpu_seconds * line.price_per_gpu_hour / SECONDS_PER_HOUR
    rated = [
        RatedLine(
            kind=LineKind.RESERVED,
            description=f"Reserved {_line_label(line)}",
            service_month=month,
            exact_amount=charge,
            contract_line_id=line.pk,
            quantity=_quantity(gpu_seconds / SECONDS_PER_HOUR),
            unit="GPU-hours",
            unit_price=line.price_per_gpu_hour,
        )
    ]
    sla = line_sla(line=line, since=start, until=end)
    if sla.credit_percent > 0:
        rated.append(
            RatedLine(
                kind=LineKind.SLA_CREDIT,
                description=(
                    f"SLA credit on reserved {_line_label(line)}: availability "
                    f"{sla.availability_percent} % (target {sla.target_percent} %), "
                    f"{sla.credit_percent.normalize():f} % credit"
                ),
                service_month=month,
                exact_amount=-charge * sla.credit_percent / Decimal(100),
                contract_line_id=line.pk,
                quantity=sla.credit_percent,
                unit="%",
            )
        )
    return rated


def _commitment_line(
    *, contract: Contract, month: date, start: datetime, end: datetime, charged_minor: int
) -> RatedLine | None:
    """True-up to the monthly commitment, prorated over the part of the month the
    contract ran (a whole month counts exactly 1)."""
    if contract.monthly_commitment_minor <= 0 or contract.activated_at is None:
        return None
    covered_from = max(start, contract.starts_at, contract.activated_at)
    covered_until = min(end, contract.ended_at or end)
    if covered_until <= covered_from:
        return None
    share = Decimal((covered_until - covered_from).total_seconds()) / Decimal(
        (end - start).total_seconds()
    )
    commitment = Decimal(contract.monthly_commitment_minor) / 100 * share
    shortfall = commitment - Decimal(charged_minor) / 100
    if round_money(shortfall) <= 0:
        return None
    return RatedLine(
        kind=LineKind.COMMITMENT_TRUE_UP,
        description=f"Monthly commitment true-up (commitment {commitment.quantize(Decimal('0.01'))})",
        service_month=month,
        exact_amount=shortfall,
    )


def _billed_metered(
    *, contract_ids: Iterable[int], service_month: date, excluding_month: date
) -> dict[tuple[int, str], int]:
    """Metered quantities already invoiced for ``service_month``, per (line, meter)."""
    rows = (
        InvoiceLine.objects.filter(
            invoice__contract_id__in=list(contract_ids),
            service_month=service_month,
            contract_line__isnull=False,
        )
        .exclude(meter="")
        .exclude(invoice__month=excluding_month)
        .values("contract_line_id", "meter")
        .annotate(total=Sum("metered_quantity"))
    )
    return {(row["contract_line_id"], row["meter"]): int(row["total"] or 0) for row in rows}


def _late_usage(
    *, contracts: dict[int, Contract], lines_by_id: dict[int, ContractLine], month: date
) -> dict[int, list[RatedLine]]:
    """Usage of earlier months that arrived after their invoice was finalized."""
    from django.conf import settings

    lookback = int(
        getattr(settings, "BILLING_LATE_USAGE_LOOKBACK_MONTHS", DEFAULT_LATE_USAGE_LOOKBACK_MONTHS)
    )
    late: dict[int, list[RatedLine]] = defaultdict(list)
    service_month = month
    for _ in range(lookback):
        service_month = previous_month(service_month)
        finalized = set(
            Invoice.objects.filter(
                contract_id__in=list(contracts),
                month=service_month,
                status=InvoiceStatus.FINALIZED,
            ).values_list("contract_id", flat=True)
        )
        if not finalized:
            continue
        start, end = month_bounds(service_month)
        usage = metered_usage(start=start, end=end, contract_ids=sorted(finalized))
        billed = _billed_metered(
            contract_ids=finalized, service_month=service_month, excluding_month=month
        )
        for line_id, total in usage.items():
            line = lines_by_id.get(line_id)
            if line is None:
                continue
            unbilled = MeteredUsage(
                busy_ms=max(0, total.busy_ms - billed.get((line_id, Meter.GPU_BUSY_MS), 0)),
                input_tokens=max(
                    0, total.input_tokens - billed.get((line_id, Meter.INPUT_TOKENS), 0)
                ),
                output_tokens=max(
                    0, total.output_tokens - billed.get((line_id, Meter.OUTPUT_TOKENS), 0)
                ),
            )
            late[line.contract_id] += _metered_lines(
                line=line, usage=unbilled, service_month=service_month, late=True
            )
    return late


def rate_month(*, month: date, contract_ids: list[int] | None = None) -> dict[int, list[RatedLine]]:
    """Rated lines per contract for ``month`` (every billable contract, or those given)."""
    start, end = month_bounds(month)
    contracts_qs = Contract.objects.filter(billable_contracts(month=month))
    if contract_ids is not None:
        contracts_qs = contracts_qs.filter(pk__in=contract_ids)
    contracts = {contract.pk: contract for contract in contracts_qs.select_related("sla_policy")}
    if not contracts:
        return {}
    ids = sorted(contracts)
    lines_by_id = {
        line.pk: line
        for line in ContractLine.objects.filter(contract_id__in=ids).select_related(
            "offer__site", "offer__gpu_model", "inference_product", "contract__sla_policy"
        )
    }
    with localcontext() as context:
        context.prec = _PRECISION
        reserved = reserved_gpu_seconds(start=start, end=end, contract_ids=ids)
        usage = metered_usage(start=start, end=end, contract_ids=ids)
        rated: dict[int, list[RatedLine]] = {pk: [] for pk in ids}
        for line_id in sorted(reserved):
            line = lines_by_id[line_id]
            rated[line.contract_id] += _reserved_lines(
                line=line, gpu_seconds=reserved[line_id], month=month, start=start, end=end
            )
        for line_id in sorted(usage):
            line = lines_by_id[line_id]
            rated[line.contract_id] += _metered_lines(
                line=line, usage=usage[line_id], service_month=month, late=False
            )
        for contract_id, late_lines in _late_usage(
            contracts=contracts, lines_by_id=lines_by_id, month=month
        ).items():
            rated[contract_id] += late_lines
        for contract_id, contract in contracts.items():
            charged = sum(
                line.amount_minor
                for line in rated[contract_id]
                if line.kind
                in (
                    LineKind.RESERVED,
                    LineKind.ON_DEMAND_GPU,
                    LineKind.INFERENCE_INPUT,
                    LineKind.INFERENCE_OUTPUT,
                )
            )
            true_up = _commitment_line(
                contract=contract, month=month, start=start, end=end, charged_minor=charged
            )
            if true_up is not None:
                rated[contract_id].append(true_up)
            ended_at = contract.ended_at
            if contract.early_termination_fee_minor and ended_at and start <= ended_at < end:
                rated[contract_id].append(
                    RatedLine(
                        kind=LineKind.EARLY_TERMINATION_FEE,
                        description="Early termination fee",
                        service_month=month,
                        exact_amount=Decimal(contract.early_termination_fee_minor) / 100,
                    )
                )
    return rated
