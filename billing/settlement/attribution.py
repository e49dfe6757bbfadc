"""Attribution: every paid invoice line split over the nodes that earned it.

Weights, per line and node, over the line's service month, are the billable usage the
line was rated from (``contracts.billable_usage``, read per node), so what the nodes
share is exactly what the invoice billed:

- reserved lines: allocated GPU-seconds (the allocations' periods inside the month);
- SLA credits: the GPU-minutes the line's allocations were *down* (counted minus
  available, maintenance announced in time excluded, as the SLA counts them), so the
  credit is charged back to the partner whose GPUs were down; when no minute was down
  (cannot happen with a credit, but the data may be incomplete) by GPU-seconds;
- on-demand GPU lines: the GPU-seconds their instances held on each node;
- inference lines: input or output tokens, of the same hours;
- late-usage lines: the service month's metered usage of their meter (the rollups do not
  say which records arrived late, so the late part is spread like the month's usage;
  busy GPU-ms for the late lines of months billed before instances);
- commitment true-ups and early-termination fees: no node earned them; one row, all
  platform.

Splitting (the rounding rules, exact to the cent):

1. A line's amount is split over its nodes by **largest remainder**: each node gets the
   floor of its exact proportional part; the cents left over go one each to the nodes
   with the largest fractional remainders (ties to the lower node id). The parts add up
   to the line's amount exactly.
2. Each part is split into the partner's share, ``floor(part x share)`` — rounded down
   to the cent, also for negative parts (an SLA credit costs the partner the cent) —
   and the platform's fee, the remainder. Share + fee = part, exactly (a check
   constraint says so too).

Credit notes on an invoice already attributed become adjustments: the credit is split
over the partners (and the platform) by largest remainder in proportion to what each was
attributed of the invoice, and each partner's part carries the partner's effective share
of that invoice, rounded down.

Everything here is idempotent: an invoice is attributed once (``UNIQUE (line, node)``;
invoices with attributions are skipped), a credit note adjusted once (``UNIQUE (credit
note, partner)``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from datetime import date, datetime
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import TypeVar

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing.models import (
    Attribution,
    CreditNote,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Meter,
    PaymentStatus,
    RevenueKind,
    StatementAdjustment,
)
from billing.periods import month_bounds
from billing.settlement.agreements import ShareBook
from capacity.models import Node
from contracts.billable_usage import (
    MeteredQuantities,
    UsageKey,
    down_minutes,
    held_gpu_seconds,
    metered_quantities,
)

K = TypeVar("K", bound=Hashable)
_PRECISION = 60
CHUNK_SIZE = 500


# -- arithmetic -----------------------------------------------------------------------------


def split_largest_remainder(amount_minor: int, weights: Mapping[K, Decimal | int]) -> dict[K, int]:
    """Split ``amount_minor`` (signed) in proportion to non-negative ``weights``.

    The parts add up to ``amount_minor`` exactly; keys with a zero weight get nothing.
    Ties in the remainders go to the key that sorts first. Empty or all-zero weights →
    ``{}`` (the caller decides who takes the amount).
    """
    positive = {key: Decimal(weight) for key, weight in weights.items() if weight > 0}
    total = sum(positive.values(), Decimal(0))
    if not positive or total <= 0:
        return {}
    sign = -1 if amount_minor < 0 else 1
    magnitude = abs(amount_minor)
    with localcontext() as context:
        context.prec = _PRECISION
        exact = {key: Decimal(magnitude) * weight / total for key, weight in positive.items()}
    parts = {
        key: int(value.to_integral_value(rounding=ROUND_FLOOR)) for key, value in exact.items()
    }
    left = magnitude - sum(parts.values())
    order = sorted(positive, key=lambda key: (-(exact[key] - parts[key]), _sort_key(key)))
    for key in order[:left]:
        parts[key] += 1
    return {key: sign * part for key, part in parts.items()}


def _sort_key(key: object) -> tuple[int, str]:
    if key is None:
        return (1, "")
    if isinstance(key, int):
        return (0, f"{key:020d}")
    return (0, str(key))


def partner_share_of(amount_minor: int, share: Decimal) -> int:
    """The partner's share of ``amount_minor``, rounded down to the cent (toward -inf)."""
    with localcontext() as context:
        context.prec = _PRECISION
        return int((Decimal(amount_minor) * share).to_integral_value(rounding=ROUND_FLOOR))


# -- what a line is and what weighs it --------------------------------------------------------

_METERED_KIND: dict[str, str] = {
    Meter.GPU_BUSY_MS: RevenueKind.ON_DEMAND_GPU,
    Meter.INPUT_TOKENS: RevenueKind.INFERENCE,
    Meter.OUTPUT_TOKENS: RevenueKind.INFERENCE,
}
_LINE_METER: dict[str, str] = {
    LineKind.INFERENCE_INPUT: Meter.INPUT_TOKENS,
    LineKind.INFERENCE_OUTPUT: Meter.OUTPUT_TOKENS,
}
_BASIS_UNIT: dict[str, str] = {
    Meter.GPU_BUSY_MS: "busy GPU-ms",
    Meter.INPUT_TOKENS: "input tokens",
    Meter.OUTPUT_TOKENS: "output tokens",
}


def _line_meter(line: InvoiceLine) -> str:
    # An on-demand GPU line carries a meter only when it was billed on busy time, before
    # instances were billed per second held: it is weighed as it was billed.
    if line.kind in (LineKind.LATE_USAGE, LineKind.ON_DEMAND_GPU):
        return line.meter
    return _LINE_METER.get(line.kind, "")


def _metered_of(usage: MeteredQuantities, meter: str) -> int:
    """The quantity of ``usage`` a line of ``meter`` was billed for."""
    if meter == Meter.GPU_BUSY_MS:
        return usage.busy_ms
    if meter == Meter.INPUT_TOKENS:
        return usage.input_tokens
    return usage.output_tokens


V = TypeVar("V")


def _by_line_and_node(figures: Mapping[UsageKey, V]) -> dict[int, dict[int, V]]:
    """A selector's figures asked for by node, per contract line then per node."""
    nested: dict[int, dict[int, V]] = defaultdict(dict)
    for key, value in figures.items():
        assert key.node_id is not None  # asked for by node
        nested[key.line_id][key.node_id] = value
    return nested


class _MonthWeights:
    """Every weight the lines of one service month need, fetched in a few queries."""

    def __init__(self, *, service_month: date, lines: list[InvoiceLine]) -> None:
        start, end = month_bounds(service_month)

        def line_ids(wanted: Callable[[InvoiceLine], bool]) -> list[int]:
            return sorted(
                {line.contract_line_id for line in lines if line.contract_line_id and wanted(line)}
            )

        held_kinds = (LineKind.RESERVED, LineKind.SLA_CREDIT, LineKind.ON_DEMAND_GPU)
        self.held = _by_line_and_node(
            held_gpu_seconds(
                start=start,
                end=end,
                line_ids=line_ids(lambda line: line.kind in held_kinds and not _line_meter(line)),
                by_node=True,
            )
        )
        self.metered = _by_line_and_node(
            metered_quantities(
                start=start,
                end=end,
                line_ids=line_ids(lambda line: bool(_line_meter(line))),
                by_node=True,
            )
        )
        self.down = _by_line_and_node(
            down_minutes(
                start=start,
                end=end,
                line_ids=line_ids(lambda line: line.kind == LineKind.SLA_CREDIT),
                by_node=True,
            )
        )

    @property
    def node_ids(self) -> set[int]:
        return {
            node_id
            for weights in (self.held, self.metered)
            for per_node in weights.values()
            for node_id in per_node
        }

    def for_line(self, line: InvoiceLine) -> tuple[str, dict[int, Decimal], str]:
        """(revenue kind, weight per node, basis unit) of one invoice line."""
        contract_line_id = line.contract_line_id
        if contract_line_id is None:
            return RevenueKind.PLATFORM, {}, ""
        if line.kind == LineKind.RESERVED:
            return RevenueKind.RESERVED, dict(self.held[contract_line_id]), "GPU-seconds"
        if line.kind == LineKind.ON_DEMAND_GPU and not line.meter:
            return RevenueKind.ON_DEMAND_GPU, dict(self.held[contract_line_id]), "GPU-seconds"
        if line.kind == LineKind.SLA_CREDIT:
            down = {
                node_id: Decimal(minutes)
                for node_id, minutes in self.down[contract_line_id].items()
                if minutes > 0
            }
            if down:
                return RevenueKind.RESERVED, down, "down GPU-minutes"
            return RevenueKind.RESERVED, dict(self.held[contract_line_id]), "GPU-seconds"
        meter = _line_meter(line)
        if meter:
            weights = {
                node_id: Decimal(_metered_of(usage, meter))
                for node_id, usage in self.metered[contract_line_id].items()
                if _metered_of(usage, meter)
            }
            return _METERED_KIND[meter], weights, _BASIS_UNIT[meter]
        return RevenueKind.PLATFORM, {}, ""


# -- services ---------------------------------------------------------------------------------


def unattributed_paid_invoices(*, up_to_month: date | None = None) -> list[int]:
    invoices = Invoice.objects.filter(
        status=InvoiceStatus.FINALIZED, payment_status=PaymentStatus.PAID
    ).filter(~Exists(Attribution.objects.filter(invoice=OuterRef("pk"))))
    if up_to_month is not None:
        invoices = invoices.filter(month__lte=up_to_month)
    return list(invoices.order_by("pk").values_list("pk", flat=True))


def attribute_paid_invoices(*, up_to_month: date | None = None, now: datetime | None = None) -> int:
    """Attribute every paid invoice not attributed yet; returns how many were."""
    now = now or timezone.now()
    pending = unattributed_paid_invoices(up_to_month=up_to_month)
    done = 0
    for offset in range(0, len(pending), CHUNK_SIZE):
        done += _attribute_chunk(invoice_ids=pending[offset : offset + CHUNK_SIZE], now=now)
    return done


@transaction.atomic
def _attribute_chunk(*, invoice_ids: list[int], now: datetime) -> int:
    invoices = list(
        Invoice.objects.select_for_update(skip_locked=True)
        .filter(pk__in=invoice_ids, payment_status=PaymentStatus.PAID)
        .filter(~Exists(Attribution.objects.filter(invoice=OuterRef("pk"))))
        .order_by("pk")
    )
    if not invoices:
        return 0
    by_id = {invoice.pk: invoice for invoice in invoices}
    lines = list(
        InvoiceLine.objects.filter(invoice__in=invoices)
        .select_related("contract_line__contract")
        .order_by("invoice_id", "position")
    )
    by_month: dict[date, list[InvoiceLine]] = defaultdict(list)
    for line in lines:
        by_month[line.service_month].append(line)
    weights = {
        month: _MonthWeights(service_month=month, lines=ls) for month, ls in by_month.items()
    }
    node_ids = {node_id for month_weights in weights.values() for node_id in month_weights.node_ids}
    plans = [(line, *weights[line.service_month].for_line(line)) for line in lines]
    node_ids |= {node_id for _, _, line_weights, _ in plans for node_id in line_weights}
    nodes = {node.pk: node for node in Node.objects.filter(pk__in=node_ids).select_related("site")}
    shares = ShareBook(node.site.organization_id for node in nodes.values())
    rows: list[Attribution] = []
    for line, kind, line_weights, basis_unit in plans:
        if line.amount_minor == 0:
            continue
        invoice = by_id[line.invoice_id]
        parts = split_largest_remainder(line.amount_minor, line_weights)
        common = {
            "invoice_line": line,
            "invoice": invoice,
            "contract_id": invoice.contract_id,
            "buyer_id": invoice.buyer_id,
            "service_month": line.service_month,
            "currency": invoice.currency,
            "created_at": now,
        }
        if not parts:
            rows.append(
                Attribution(
                    **common,
                    revenue_kind=RevenueKind.PLATFORM if not line_weights else kind,
                    amount_minor=line.amount_minor,
                    partner_share_minor=0,
                    platform_fee_minor=line.amount_minor,
                    share=Decimal(0),
                )
            )
            continue
        for node_id, part in sorted(parts.items()):
            if part == 0:
                continue
            node = nodes[node_id]
            share = shares.share(
                partner_id=node.site.organization_id, kind=kind, service_month=line.service_month
            )
            partner_share = partner_share_of(part, share)
            rows.append(
                Attribution(
                    **common,
                    node=node,
                    site_id=node.site_id,
                    partner_id=node.site.organization_id,
                    revenue_kind=kind,
                    basis_quantity=line_weights[node_id],
                    basis_unit=basis_unit,
                    amount_minor=part,
                    partner_share_minor=partner_share,
                    platform_fee_minor=part - partner_share,
                    share=share,
                )
            )
    Attribution.objects.bulk_create(rows, batch_size=2000)
    return len(invoices)


def unadjusted_credit_notes() -> list[int]:
    """Credit notes on attributed invoices that have no adjustments yet."""
    return list(
        CreditNote.objects.filter(Exists(Attribution.objects.filter(invoice=OuterRef("invoice"))))
        .filter(~Exists(StatementAdjustment.objects.filter(credit_note=OuterRef("pk"))))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


@transaction.atomic
def adjust_for_credit_notes(*, now: datetime | None = None) -> int:
    """Turn every credit note on an attributed invoice into adjustments (once)."""
    now = now or timezone.now()
    notes = list(
        CreditNote.objects.select_for_update(skip_locked=True)
        .filter(pk__in=unadjusted_credit_notes())
        .select_related("invoice")
        .order_by("pk")
    )
    rows: list[StatementAdjustment] = []
    for note in notes:
        gross: dict[int | None, int] = defaultdict(int)
        shares: dict[int | None, int] = defaultdict(int)
        for partner_id, amount, share in Attribution.objects.filter(
            invoice_id=note.invoice_id
        ).values_list("partner_id", "amount_minor", "partner_share_minor"):
            gross[partner_id] += amount
            shares[partner_id] += share
        parts = split_largest_remainder(
            -note.amount_minor, {key: max(0, value) for key, value in gross.items()}
        ) or {None: -note.amount_minor}
        reason = f"Credit note {note.number} on invoice {note.invoice.number}"
        for owner_id, part in sorted(parts.items(), key=lambda item: _sort_key(item[0])):
            if part == 0:
                continue
            partner_share = 0
            if owner_id is not None:
                with localcontext() as context:
                    context.prec = _PRECISION
                    effective = Decimal(shares[owner_id]) / Decimal(gross[owner_id])
                partner_share = partner_share_of(part, effective)
            rows.append(
                StatementAdjustment(
                    credit_note=note,
                    partner_id=owner_id,
                    currency=note.currency,
                    amount_minor=part,
                    partner_share_minor=partner_share,
                    platform_fee_minor=part - partner_share,
                    reason=reason[:300],
                    created_at=now,
                )
            )
    StatementAdjustment.objects.bulk_create(rows)
    return len(notes)
