"""Charges: a contract line's billable usage priced, exactly as its invoice lines are.

Rating turns these into invoice lines; the buyer's dashboard adds them up for the month
so far. Both price the same quantities (``contracts.billable_usage``) with the same
arithmetic at the same precision, and round each charge once (``round_money``), so the
month-to-date shown at the month's end is the invoice to the cent:

- reserved: GPU-seconds x rate / 3600, and an SLA credit of its tier's percent of that
  charge when the line's availability falls below a tier (``contracts.sla``);
- on-demand GPU: GPU-seconds its instances held x rate / 3600 (busy time is shown, not
  priced);
- inference: tokens x price / 1,000,000, input and output apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from enum import StrEnum

from contracts.billable_usage import MeteredQuantities, held_gpu_seconds, metered_quantities
from contracts.models import ContractLine, LineKind
from contracts.money import SECONDS_PER_HOUR, TOKENS_PER_MILLION, round_money
from contracts.sla import LineSla, line_slas

# Enough digits that half-up rounding to the cent of any quotient formed here (hours =
# seconds / 3600) is decided correctly.
PRECISION = 60


class ChargeKind(StrEnum):
    """What a charge is for (billing's invoice line kinds of the same names)."""

    RESERVED = "reserved"
    SLA_CREDIT = "sla_credit"
    ON_DEMAND_GPU = "on_demand_gpu"
    INFERENCE_INPUT = "inference_input"
    INFERENCE_OUTPUT = "inference_output"


class Meter(StrEnum):
    """What a metered charge counts, in integers (billing's meters of the same names).
    On-demand GPU time is no longer metered (it is billed per second held); billing
    keeps ``gpu_busy_ms`` for the invoices of before."""

    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"


@dataclass(frozen=True)
class Charge:
    """One priced quantity of a contract line: what one invoice line carries."""

    line: ContractLine
    kind: ChargeKind
    # Major units, exact; rounded once by ``amount_minor``.
    exact_amount: Decimal
    # GPU-hours, million tokens, or the credit in percent; exact.
    quantity: Decimal
    unit_price: Decimal | None = None
    # Metered charges: what ``metered_quantity`` counts.
    meter: Meter | None = None
    metered_quantity: int | None = None
    # SLA credits: the figure the credit comes from.
    sla: LineSla | None = None

    @property
    def amount_minor(self) -> int:
        return round_money(self.exact_amount)


def held_charge(*, line: ContractLine, gpu_seconds: Decimal) -> Charge:
    """A reserved or on-demand GPU line's charge for ``gpu_seconds`` its allocations held
    (a reservation's, an instance's): GPU-hours x the line's rate."""
    rate = line.price_per_gpu_hour
    if rate is None:  # excluded by the line's check constraint
        raise TypeError(f"{line.kind} line without price_per_gpu_hour")
    kind = ChargeKind.RESERVED if line.kind == LineKind.RESERVED else ChargeKind.ON_DEMAND_GPU
    with localcontext() as context:
        context.prec = PRECISION
        return Charge(
            line=line,
            kind=kind,
            exact_amount=gpu_seconds * rate / SECONDS_PER_HOUR,
            quantity=gpu_seconds / SECONDS_PER_HOUR,
            unit_price=rate,
        )


def reserved_charge(*, line: ContractLine, gpu_seconds: Decimal) -> Charge:
    """A reserved line's charge for ``gpu_seconds`` held."""
    return held_charge(line=line, gpu_seconds=gpu_seconds)


def reserved_charges(*, line: ContractLine, gpu_seconds: Decimal, sla: LineSla) -> list[Charge]:
    """A reserved line's charge for ``gpu_seconds``, and its SLA credit if it has one: the
    credit tier's percent of the exact charge."""
    charge = reserved_charge(line=line, gpu_seconds=gpu_seconds)
    if sla.credit_percent <= 0:
        return [charge]
    with localcontext() as context:
        context.prec = PRECISION
        credit = Charge(
            line=line,
            kind=ChargeKind.SLA_CREDIT,
            exact_amount=-charge.exact_amount * sla.credit_percent / Decimal(100),
            quantity=sla.credit_percent,
            sla=sla,
        )
    return [charge, credit]


def metered_charges(*, line: ContractLine, usage: MeteredQuantities) -> list[Charge]:
    """An inference line's charges for ``usage``: its input and output tokens, when above
    zero. Other lines pay for no metered quantity (an on-demand GPU line's busy time is
    shown, not priced: it pays per second held, ``held_charge``)."""
    with localcontext() as context:
        context.prec = PRECISION
        if line.kind != LineKind.INFERENCE:
            return []
        charges = []
        for kind, meter, tokens, price in (
            (
                ChargeKind.INFERENCE_INPUT,
                Meter.INPUT_TOKENS,
                usage.input_tokens,
                line.input_price_per_million_tokens,
            ),
            (
                ChargeKind.INFERENCE_OUTPUT,
                Meter.OUTPUT_TOKENS,
                usage.output_tokens,
                line.output_price_per_million_tokens,
            ),
        ):
            if tokens <= 0:
                continue
            if price is None:  # excluded by the line's check constraint
                raise TypeError("inference line without token prices")
            charges.append(
                Charge(
                    line=line,
                    kind=kind,
                    exact_amount=Decimal(tokens) * price / TOKENS_PER_MILLION,
                    quantity=Decimal(tokens) / TOKENS_PER_MILLION,
                    unit_price=price,
                    meter=meter,
                    metered_quantity=tokens,
                )
            )
        return charges


def line_charges(
    *,
    lines: Mapping[int, ContractLine],
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> list[Charge]:
    """Every charge of ``lines`` (by id, with ``contract__sla_policy`` loaded) for their
    billable usage in ``[start, end)``: reserved lines by id, each followed by its SLA
    credit, then on-demand lines by id (GPU lines' seconds held, inference lines' tokens).
    ``now``: until when a running instance counts (default: the clock)."""
    ids = list(lines)
    held = held_gpu_seconds(start=start, end=end, line_ids=ids, now=now)
    metered = metered_quantities(start=start, end=end, line_ids=ids)
    reserved = {
        key: seconds
        for key, seconds in held.items()
        if lines[key.line_id].kind == LineKind.RESERVED
    }
    slas = line_slas(lines=[lines[key.line_id] for key in reserved], since=start, until=end)
    charges: list[Charge] = []
    for key in sorted(reserved, key=lambda key: key.line_id):
        charges += reserved_charges(
            line=lines[key.line_id], gpu_seconds=reserved[key], sla=slas[key.line_id]
        )
    on_demand: dict[int, list[Charge]] = {}
    for key in set(held) - set(reserved):
        on_demand[key.line_id] = [held_charge(line=lines[key.line_id], gpu_seconds=held[key])]
    for key in metered:
        if charged := metered_charges(line=lines[key.line_id], usage=metered[key]):
            on_demand[key.line_id] = charged
    for line_id in sorted(on_demand):
        charges += on_demand[line_id]
    return charges
