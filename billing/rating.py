"""Rating: what every contract owes for a calendar month, line by line.

Which usage a line pays for is ``contracts.billable_usage``'s rule, and its price is
``contracts.charges``' arithmetic: the buyer's dashboard reads and prices the same
quantities the same way, and settlement splits these lines by the same quantities per
node, so an invoice, a statement and a dashboard agree to the cent. Rating adds what only
an invoice has:

- the words and units of each line (``RatedLine``);
- late usage: a month's metered total now, less what invoices already carry for it;
- the commitment true-up, comparing the month's rounded charges with the (prorated)
  commitment, and the early-termination fee.

Each line's amount is computed in exact ``Decimal`` and rounded once (``round_money``);
the invoice total is the sum of the rounded lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext

from django.db.models import Q, Sum

from billing.models import Invoice, InvoiceLine, InvoiceStatus, LineKind, Meter
from billing.money import round_money
from billing.periods import month_bounds, previous_month
from contracts.billable_usage import MeteredQuantities, metered_quantities
from contracts.charges import PRECISION, Charge, ChargeKind, line_charges, metered_charges
from contracts.models import Contract, ContractLine

_QUANTITY_PLACES = Decimal("0.000000001")
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


def billable_contracts(*, month: date) -> Q:
    """Contracts that were active at some point of the month."""
    start, end = month_bounds(month)
    return Q(activated_at__isnull=False, activated_at__lt=end) & (
        Q(ended_at__isnull=True) | Q(ended_at__gt=start)
    )


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


def _wording(*, charge: Charge, service_month: date, late: bool) -> tuple[str, str, str]:
    """(invoice line kind, description, unit) of a charge."""
    label = _line_label(charge.line)
    if charge.kind == ChargeKind.RESERVED:
        return LineKind.RESERVED, f"Reserved {label}", "GPU-hours"
    if charge.kind == ChargeKind.SLA_CREDIT:
        sla = charge.sla
        assert sla is not None
        return (
            LineKind.SLA_CREDIT,
            f"SLA credit on reserved {label}: availability {sla.availability_percent} % "
            f"(target {sla.target_percent} %), {sla.credit_percent.normalize():f} % credit",
            "%",
        )
    kind = LineKind.LATE_USAGE if late else LineKind(charge.kind)
    prefix = f"Late usage from {service_month:%B %Y}: " if late else ""
    if charge.kind == ChargeKind.ON_DEMAND_GPU:
        return kind, f"{prefix}On-demand {label}", "GPU-hours"
    side = "input" if charge.kind == ChargeKind.INFERENCE_INPUT else "output"
    return kind, f"{prefix}{label}, {side} tokens", "M tokens"


def _rated(*, charge: Charge, service_month: date, late: bool = False) -> RatedLine:
    """The invoice line of one charge (``contracts.charges``), in words and units."""
    kind, description, unit = _wording(charge=charge, service_month=service_month, late=late)
    return RatedLine(
        kind=kind,
        description=description,
        service_month=service_month,
        exact_amount=charge.exact_amount,
        contract_line_id=charge.line.pk,
        # A credit's quantity is its percent, as it is.
        quantity=charge.quantity if kind == LineKind.SLA_CREDIT else _quantity(charge.quantity),
        unit=unit,
        unit_price=charge.unit_price,
        meter=Meter(charge.meter) if charge.meter else "",
        metered_quantity=charge.metered_quantity,
    )


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
        usage = metered_quantities(start=start, end=end, contract_ids=sorted(finalized))
        billed = _billed_metered(
            contract_ids=finalized, service_month=service_month, excluding_month=month
        )
        for key, total in usage.items():
            line = lines_by_id.get(key.line_id)
            if line is None:
                continue
            # Only tokens are metered for money (GPU time is billed per second held).
            unbilled = MeteredQuantities(
                input_tokens=max(
                    0, total.input_tokens - billed.get((line.pk, Meter.INPUT_TOKENS), 0)
                ),
                output_tokens=max(
                    0, total.output_tokens - billed.get((line.pk, Meter.OUTPUT_TOKENS), 0)
                ),
            )
            late[line.contract_id] += [
                _rated(charge=charge, service_month=service_month, late=True)
                for charge in metered_charges(line=line, usage=unbilled)
            ]
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
        context.prec = PRECISION
        rated: dict[int, list[RatedLine]] = {pk: [] for pk in ids}
        for charge in line_charges(lines=lines_by_id, start=start, end=end):
            rated[charge.line.contract_id].append(_rated(charge=charge, service_month=month))
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
