"""Reservation checkout: quote a term, then sign it in one transaction.

``reservation_quote`` prices N GPUs of an offer for a term; ``reservation_checkout``
creates the contract (or a new line on the buyer's open contract) and one ``Allocation``
per GPU over ``[start, end)``. Double booking is impossible by the allocation exclusion
constraint; the application only makes conflicts rare and recovers from them:
(``contracts.allocations``).

A checkout is tied to what the buyer was shown and submitted once:

- the confirmation carries the quote (``QuotedPrice``: rate, currency, total); checkout
  share-locks the offer row, prices the request from the locked row and refuses with
  ``QuoteChanged`` when anything priced differs, so a partner who raises the price
  between the quote and the confirm cannot sell at the new price;
- the confirmation carries a key minted when its form was rendered (``submission_key``);
  the key is claimed first, unique per buyer (``CheckoutSubmission``), so two identical
  submissions create one line and the second gets the first's result.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from accounts.audit import audit_event, record
from accounts.models import Organization, User
from capacity.models import Offer
from contracts import lifecycle, selectors
from contracts.allocations import add_line_with_allocations, pick_free_devices
from contracts.models import (
    TERM_MONTHS,
    Allocation,
    CheckoutSubmission,
    Contract,
    ContractLine,
    ContractState,
    LineKind,
    SlaPolicy,
)
from contracts.money import hours_between, minor_to_major, reserved_charge, round_money
from contracts.selectors import buyer_has_payment_method
from contracts.terms import add_months

# A start this far in the past still counts as "now" (a form filled a minute ago).
START_GRACE = timedelta(minutes=15)
# How far ahead a reservation may start.
MAX_LEAD_TIME = timedelta(days=366)


@dataclass(frozen=True)
class Quote:
    """The price of N GPUs of an offer for a term, rounded once to the cent."""

    offer: Offer
    gpu_count: int
    term_months: int
    starts_at: datetime
    ends_at: datetime
    price_per_gpu_hour: Decimal
    hours_per_gpu: Decimal  # exact hours in [starts_at, ends_at)
    total_minor: int  # the whole term, minor units
    monthly_average_minor: int  # total / term months, minor units (informative)
    currency: str
    free_gpus: int

    @property
    def gpu_hours(self) -> Decimal:
        return self.hours_per_gpu * self.gpu_count

    @property
    def is_available(self) -> bool:
        return self.free_gpus >= self.gpu_count


@dataclass(frozen=True)
class QuotedPrice:
    """What the buyer was quoted and confirms. Checkout refuses when the offer, locked,
    prices the same request differently; a field left None is not compared (an API client
    may send only the rate)."""

    price_per_gpu_hour: Decimal | None = None
    currency: str | None = None
    total_minor: int | None = None

    def differs_from(self, quote: Quote) -> bool:
        return (
            (
                self.price_per_gpu_hour is not None
                and self.price_per_gpu_hour != quote.price_per_gpu_hour
            )
            or (self.currency is not None and self.currency != quote.currency)
            or (self.total_minor is not None and self.total_minor != quote.total_minor)
        )


class QuoteChanged(ValidationError):
    """The offer's price changed since the buyer's quote: nothing was reserved. ``quote``
    is the price now, for the buyer to review and confirm again."""

    def __init__(self, *, quoted: QuotedPrice, quote: Quote) -> None:
        was = _describe(
            price_per_gpu_hour=quoted.price_per_gpu_hour,
            currency=quoted.currency or quote.currency,
            total_minor=quoted.total_minor,
        )
        now = _describe(
            price_per_gpu_hour=quote.price_per_gpu_hour,
            currency=quote.currency,
            total_minor=quote.total_minor,
        )
        super().__init__(
            f"The price changed since your quote: it was {was}, it is now {now}. Nothing was "
            "reserved; check the new price and confirm again.",
            code="quote_changed",
        )
        self.quote = quote


def _describe(*, price_per_gpu_hour: Decimal | None, currency: str, total_minor: int | None) -> str:
    parts = []
    if price_per_gpu_hour is not None:
        parts.append(f"{price_per_gpu_hour} {currency} per GPU-hour")
    if total_minor is not None:
        parts.append(f"{minor_to_major(total_minor)} {currency} for the term")
    return ", ".join(parts) or currency


@dataclass(frozen=True)
class CheckoutResult:
    contract: Contract
    line: ContractLine
    allocations: list[Allocation]
    quote: Quote
    created_contract: bool
    # True when this was a repeated submission: the line is the first submission's.
    replayed: bool = False


def start_problem(*, starts_at: datetime, now: datetime) -> str | None:
    """Why a reservation cannot start at ``starts_at`` (None when it can): the one rule
    checkout and the marketplace's search form both apply."""
    if timezone.is_naive(starts_at):
        return "The start needs a time zone."
    if starts_at < now - START_GRACE:
        return "The reservation cannot start in the past."
    if starts_at > now + MAX_LEAD_TIME:
        return "The reservation must start within a year."
    return None


def _validate_request(
    *, offer: Offer, gpu_count: int, starts_at: datetime, term_months: int, now: datetime
) -> datetime:
    """Check the request against the offer; return the end of the reserved period."""
    errors: dict[str, str] = {}
    if term_months not in TERM_MONTHS:
        errors["term_months"] = "Choose a term of 1, 3, 6 or 12 months."
    if gpu_count < 1:
        errors["gpu_count"] = "Reserve at least one GPU."
    elif gpu_count > offer.gpu_count:
        errors["gpu_count"] = f"This offer lists {offer.gpu_count} GPUs; you asked for {gpu_count}."
    start_error = start_problem(starts_at=starts_at, now=now)
    if start_error is not None:
        errors["starts_at"] = start_error
    if errors:
        raise ValidationError(errors, code="invalid")
    if not offer.is_active:
        raise ValidationError("This offer is no longer listed.", code="offer_inactive")
    ends_at = add_months(starts_at, term_months)
    if starts_at < offer.available_from:
        raise ValidationError(
            {
                "starts_at": f"This offer is available from {offer.available_from:%Y-%m-%d %H:%M} UTC."
            },
            code="outside_offer_window",
        )
    if offer.available_until is not None and ends_at > offer.available_until:
        raise ValidationError(
            {
                "term_months": f"This offer is available until {offer.available_until:%Y-%m-%d}: "
                "choose a shorter term or an earlier start."
            },
            code="outside_offer_window",
        )
    return ends_at


def reservation_quote(
    *,
    offer: Offer,
    gpu_count: int,
    starts_at: datetime,
    term_months: int,
    now: datetime | None = None,
) -> Quote:
    """Price ``gpu_count`` GPUs of ``offer`` for ``term_months`` from ``starts_at``.

    Total = GPUs x exact hours in the term x reserved rate for that term, rounded once
    half-up to the cent. Raises ``ValidationError`` for an impossible request.
    """
    now = now or timezone.now()
    ends_at = _validate_request(
        offer=offer, gpu_count=gpu_count, starts_at=starts_at, term_months=term_months, now=now
    )
    free_gpus = selectors.free_gpu_count(offer=offer, start=starts_at, end=ends_at)
    return _price(
        offer=offer,
        gpu_count=gpu_count,
        starts_at=starts_at,
        ends_at=ends_at,
        term_months=term_months,
        free_gpus=free_gpus,
        rate=offer.reserved_prices()[term_months],
        currency=offer.currency,
    )


def _price(
    *,
    offer: Offer,
    gpu_count: int,
    starts_at: datetime,
    ends_at: datetime,
    term_months: int,
    free_gpus: int,
    rate: Decimal,
    currency: str,
) -> Quote:
    exact_total = reserved_charge(gpu_count=gpu_count, start=starts_at, end=ends_at, rate=rate)
    return Quote(
        offer=offer,
        gpu_count=gpu_count,
        term_months=term_months,
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=rate,
        hours_per_gpu=hours_between(starts_at, ends_at),
        total_minor=round_money(exact_total),
        monthly_average_minor=round_money(exact_total / term_months),
        currency=currency,
        free_gpus=free_gpus,
    )


def _locked_offer(offer: Offer) -> Offer:
    """``offer`` as committed, share-locked until the transaction ends.

    ``offer_update`` locks the row for update, so it waits for this checkout, and this
    checkout waits for a price change in flight and then reads the new price: the price
    checked is the price sold. A share lock, not an update lock: concurrent checkouts of
    one offer do not queue on each other. Site and GPU model never change on an offer, so
    the caller's loaded ones are kept.
    """
    sql = f"SELECT * FROM {Offer._meta.db_table} WHERE id = %s FOR SHARE"  # noqa: S608
    locked = next(iter(Offer.objects.raw(sql, [offer.pk])), None)
    if locked is None:
        raise ValidationError("This offer is no longer listed.", code="offer_inactive")
    for name in ("site", "gpu_model"):
        relation = Offer._meta.get_field(name)
        if relation.is_cached(offer):  # type: ignore[union-attr]
            relation.set_cached_value(locked, relation.get_cached_value(offer))  # type: ignore[union-attr]
    return locked


_CLAIM_SUBMISSION_SQL = """
INSERT INTO {table} (buyer_id, key, created_at) VALUES (%s, %s, %s)
ON CONFLICT (buyer_id, key) DO NOTHING
RETURNING id
"""


def _claim_submission(*, buyer: Organization, key: str, now: datetime) -> int | None:
    """Claim ``key`` for this checkout and return the claim's id; None when an earlier
    submission of the same form committed it. A submission still in flight makes this
    insert wait on the unique index until it commits (then None) or rolls back (then the
    claim is ours)."""
    sql = _CLAIM_SUBMISSION_SQL.format(table=CheckoutSubmission._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [buyer.pk, key, now])
        row = cursor.fetchone()
    return row[0] if row else None


def _replayed(
    *,
    buyer: Organization,
    key: str,
    offer: Offer,
    gpu_count: int,
    starts_at: datetime,
    term_months: int,
) -> CheckoutResult:
    """The result of the earlier submission of ``key``, which must have asked the same."""
    submission = CheckoutSubmission.objects.select_related("line__contract", "line__offer").get(
        buyer=buyer, key=key
    )
    line = submission.line
    if line is None or (line.offer_id, line.gpu_count, line.starts_at, line.term_months) != (
        offer.pk,
        gpu_count,
        starts_at,
        term_months,
    ):
        raise ValidationError(
            "This confirmation was already used for another reservation; get a new quote.",
            code="submission_reused",
        )
    assert line.offer is not None and line.starts_at is not None and line.ends_at is not None
    assert line.term_months is not None and line.price_per_gpu_hour is not None
    quote = _price(
        offer=line.offer,
        gpu_count=line.gpu_count,
        starts_at=line.starts_at,
        ends_at=line.ends_at,
        term_months=line.term_months,
        free_gpus=line.gpu_count,
        rate=line.price_per_gpu_hour,
        currency=line.contract.currency,
    )
    return CheckoutResult(
        contract=line.contract,
        line=line,
        allocations=list(line.allocations.order_by("pk")),
        quote=quote,
        created_contract=False,
        replayed=True,
    )


def open_contract_for_update(
    *,
    buyer: Organization,
    currency: str,
    starts_at: datetime,
    ends_at: datetime,
    term_months: int,
    auto_renew: bool = True,
    now: datetime | None = None,
) -> tuple[Contract, bool]:
    """The buyer's open contract in ``currency``, locked; else a new one, signed and active.

    A new contract is born active (``activated_at`` = ``now``): its caller adds the first
    line and has checked the payment method in the same transaction, so no one ever sees
    it as a draft; the caller writes ``lifecycle.signed_activation_event`` with its own
    audit records. The partial unique constraint (one open contract per buyer and
    currency) settles two first checkouts racing: the insert is ``ON CONFLICT DO
    NOTHING``, and whoever did not insert locks the winner's row by a second select.
    Returns ``(contract, created)``.
    """
    open_contracts = (
        Contract.objects.select_for_update().filter(buyer=buyer, currency=currency).open()
    )
    contract = open_contracts.first()
    if contract is not None:
        return contract, False
    now = now or timezone.now()
    signed = Contract(
        buyer=buyer,
        state=ContractState.ACTIVE,
        currency=currency,
        starts_at=starts_at,
        term_months=term_months,
        term_ends_at=ends_at,
        auto_renew=auto_renew,
        created_at=now,
        activated_at=now,
    )
    if _insert_with_default_sla(signed):
        return signed, True
    contract = open_contracts.first()
    if contract is None:
        raise ValidationError("Your contract is being changed by someone else; try again.")
    return contract, False


def _insert_with_default_sla(contract: Contract) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING`` of the unsaved ``contract`` with the
    default SLA policy, in one round trip. Sets ``contract.pk`` and ``sla_policy_id`` as
    stored and returns True when inserted; False when a constraint (another open
    contract) stopped it."""
    fields = [field for field in Contract._meta.concrete_fields if not field.primary_key]
    values = [
        field.get_db_prep_save(field.pre_save(contract, True), connection) for field in fields
    ]
    policies = SlaPolicy._meta.db_table
    default_policy = f"(SELECT id FROM {policies} WHERE is_default ORDER BY id LIMIT 1)"  # noqa: S608
    columns: list[str] = []
    placeholders: list[str] = []
    params: list[Any] = []
    for field, value in zip(fields, values, strict=True):
        assert field.column is not None  # concrete fields have a column
        columns.append(connection.ops.quote_name(field.column))
        if field.name == "sla_policy" and value is None:
            placeholders.append(default_policy)
        else:
            placeholders.append("%s")
            params.append(value)
    # Names come from model metadata; every value is a parameter.
    sql = (
        f"INSERT INTO {Contract._meta.db_table} ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join(placeholders)}) ON CONFLICT DO NOTHING RETURNING id, sla_policy_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    contract.pk, contract.sla_policy_id = row
    contract._state.adding = False
    contract._state.db = connection.alias
    return True


@transaction.atomic
def reservation_checkout(
    *,
    buyer: Organization,
    offer: Offer,
    gpu_count: int,
    starts_at: datetime,
    term_months: int,
    actor: User | None,
    auto_renew: bool = True,
    quoted: QuotedPrice | None = None,
    submission_key: str | None = None,
    now: datetime | None = None,
) -> CheckoutResult:
    """Reserve ``gpu_count`` GPUs of ``offer`` for the term, in one transaction.

    Creates and activates a contract when the buyer has no open one, else adds a line to
    it (extending its term to cover the line). Requires a saved payment method.
    ``quoted``: what the buyer confirmed; ``QuoteChanged`` when the offer now prices the
    request differently. ``submission_key``: the confirming form's key; a repeated
    submission returns the first one's result (``replayed``) and creates nothing.
    """
    now = now or timezone.now()
    if not buyer.is_buyer:
        raise ValidationError("Only buyer organizations can reserve GPUs.", code="not_buyer")
    claim = None
    if submission_key is not None:
        claim = _claim_submission(buyer=buyer, key=submission_key, now=now)
        if claim is None:
            return _replayed(
                buyer=buyer,
                key=submission_key,
                offer=offer,
                gpu_count=gpu_count,
                starts_at=starts_at,
                term_months=term_months,
            )
    offer = _locked_offer(offer)
    ends_at = _validate_request(
        offer=offer, gpu_count=gpu_count, starts_at=starts_at, term_months=term_months, now=now
    )
    rate = offer.reserved_prices()[term_months]
    quote = _price(
        offer=offer,
        gpu_count=gpu_count,
        starts_at=starts_at,
        ends_at=ends_at,
        term_months=term_months,
        free_gpus=gpu_count,
        rate=rate,
        currency=offer.currency,
    )
    if quoted is not None and quoted.differs_from(quote):
        free_gpus = selectors.free_gpu_count(offer=offer, start=starts_at, end=ends_at)
        raise QuoteChanged(quoted=quoted, quote=replace(quote, free_gpus=free_gpus))
    # Pick (and lock) the GPUs before the contract: a buyer who loses the race is refused
    # in one statement, before any contract row is locked or written.
    devices = pick_free_devices(offer=offer, gpu_count=gpu_count, start=starts_at, end=ends_at)
    if not buyer_has_payment_method(buyer):
        raise ValidationError(
            "Add a payment method before confirming a reservation.", code="no_payment_method"
        )
    contract, created = open_contract_for_update(
        buyer=buyer,
        currency=offer.currency,
        starts_at=starts_at,
        ends_at=ends_at,
        term_months=term_months,
        auto_renew=auto_renew,
        now=now,
    )
    contract.buyer = buyer  # what the audit records read: no query for it
    if contract.state == ContractState.SUSPENDED:
        raise ValidationError(
            "Your contract is suspended; settle it before reserving more GPUs.", code="suspended"
        )
    line = ContractLine(
        contract=contract,
        kind=LineKind.RESERVED,
        offer=offer,
        gpu_count=gpu_count,
        term_months=term_months,
        price_per_gpu_hour=rate,
        starts_at=starts_at,
        ends_at=ends_at,
        created_at=now,
    )
    allocations = add_line_with_allocations(line=line, offer=offer, devices=devices)
    if claim is not None:
        CheckoutSubmission.objects.filter(pk=claim).update(line=line)
    if ends_at > contract.term_ends_at:
        contract.term_ends_at = ends_at
        contract.save(update_fields=["term_ends_at"])
    events = [
        audit_event(
            action="reservation.created",
            actor=actor,
            organization=buyer,
            target=line,
            contract_id=contract.pk,
            offer_id=offer.pk,
            gpu_count=gpu_count,
            term_months=term_months,
            starts_at=starts_at.isoformat(),
            ends_at=ends_at.isoformat(),
            price_per_gpu_hour=str(rate),
            total_minor=quote.total_minor,
            currency=offer.currency,
        )
    ]
    if created:
        events.append(lifecycle.signed_activation_event(contract=contract, actor=actor))
    elif contract.state == ContractState.DRAFT:
        # A draft made elsewhere (staff): this checkout signs it.
        lifecycle.contract_activate(contract=contract, actor=actor, now=now)
    record(*events)
    return CheckoutResult(
        contract=contract, line=line, allocations=allocations, quote=quote, created_contract=created
    )


def early_termination_fee_at_start_minor(*, quote: Quote, fee_percent: Decimal) -> int:
    """The most ending the quoted reservation early can cost: ``fee_percent`` of its whole
    reserved charge (cancelled before it starts), by ``lifecycle.early_termination_fee``'s
    rule (exact charge, one rounding)."""
    charge = reserved_charge(
        gpu_count=quote.gpu_count,
        start=quote.starts_at,
        end=quote.ends_at,
        rate=quote.price_per_gpu_hour,
    )
    return round_money(charge * fee_percent / Decimal(100))
