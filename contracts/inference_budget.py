"""Inference budgets: spend caps and rate limits buyers set, and this month's spend.

The buyer caps a contract's monthly inference spend (``Contract.inference_monthly_cap_minor``)
and each key's (``LineApiKey.monthly_cap_minor``), and may lower a key's requests and
tokens per minute below the platform's defaults. The gateway enforces them (it reserves
each request's worst case against the caps before forwarding); this module writes them,
with their bounds, and reads the spend they are measured against.

Spend this month = the billed tokens of the gateway's requests issued this calendar
month (UTC) (``capacity.metering.InferenceRequest``) x the line's prices per million
tokens, exact ``Decimal``; rounded once (``round_money``) only to show it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum

from accounts.audit import audit
from accounts.models import User
from capacity.metering.models import InferenceRequest
from contracts.models import Contract, ContractLine, LineApiKey, LineKind
from contracts.money import minor_to_major, round_money, token_charge
from contracts.terms import add_months, month_start

# Bounds of what a buyer may set (plain messages name them).
MIN_CAP_MINOR = 100  # 1.00 in the contract's currency
MAX_CAP_MINOR = 1_000_000_000  # 10,000,000.00
MIN_REQUESTS_PER_MINUTE = 1
MAX_REQUESTS_PER_MINUTE = 100_000
MIN_TOKENS_PER_MINUTE = 1_000
MAX_TOKENS_PER_MINUTE = 100_000_000
# The thresholds at which the buyer is told (``contracts.cap_alerts``), in percent.
ALERT_THRESHOLDS = (80, 100)


# -- reads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapUse:
    """Spend against one cap (or no cap) this month."""

    spent: Decimal  # exact, major units of ``currency``
    cap_minor: int | None
    currency: str

    @property
    def spent_minor(self) -> int:
        return round_money(self.spent)

    @property
    def spent_display(self) -> Decimal:
        """The spend rounded once, for display (two places)."""
        return minor_to_major(self.spent_minor)

    @property
    def cap_display(self) -> Decimal | None:
        return None if self.cap_minor is None else minor_to_major(self.cap_minor)

    @property
    def percent(self) -> int | None:
        """Whole percent of the cap spent, rounded down (80 means at least 80 %)."""
        if not self.cap_minor:
            return None
        return int(self.spent * 100 * 100 // self.cap_minor)


@dataclass(frozen=True)
class ContractSpend:
    """A contract's inference spend this month: in total and per API key id."""

    contract: CapUse
    by_api_key: dict[int, Decimal] = field(default_factory=dict)

    def key(self, link: LineApiKey) -> CapUse:
        return CapUse(
            spent=self.by_api_key.get(link.api_key_id, Decimal(0)),
            cap_minor=link.monthly_cap_minor,
            currency=self.contract.currency,
        )


def month_period(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) of ``now``: ``[start, next start)``."""
    start = month_start(now)
    return start, add_months(start, 1)


def inference_spend(*, contract: Contract, now: datetime) -> ContractSpend:
    """The contract's inference spend in ``now``'s month, per key and in total: two queries
    (its inference lines' prices, then the billed tokens summed per line and key)."""
    since, until = month_period(now)
    prices = {
        line.pk: (line.input_price_per_million_tokens, line.output_price_per_million_tokens)
        for line in ContractLine.objects.filter(contract=contract, kind=LineKind.INFERENCE).only(
            "pk", "input_price_per_million_tokens", "output_price_per_million_tokens"
        )
    }
    rows = (
        InferenceRequest.objects.filter(
            line_id__in=list(prices), issued_at__gte=since, issued_at__lt=until
        )
        .values("line_id", "api_key_id")
        .annotate(
            input_tokens=Sum("billed_input_tokens"), output_tokens=Sum("billed_output_tokens")
        )
        .order_by()
    )
    by_key: dict[int, Decimal] = defaultdict(Decimal)
    for row in rows:
        input_price, output_price = prices[row["line_id"]]
        by_key[row["api_key_id"]] += token_charge(
            tokens=row["input_tokens"],
            price_per_million=input_price,  # type: ignore[arg-type]
        ) + token_charge(
            tokens=row["output_tokens"],
            price_per_million=output_price,  # type: ignore[arg-type]
        )
    return ContractSpend(
        contract=CapUse(
            spent=sum(by_key.values(), Decimal(0)),
            cap_minor=contract.inference_monthly_cap_minor,
            currency=contract.currency,
        ),
        by_api_key=dict(by_key),
    )


# -- writes -------------------------------------------------------------------------------


def _check_cap(name: str, cap_minor: int | None, currency: str) -> dict[str, str]:
    if cap_minor is None or MIN_CAP_MINOR <= cap_minor <= MAX_CAP_MINOR:
        return {}
    return {
        name: f"A monthly cap is between {minor_to_major(MIN_CAP_MINOR)} and "
        f"{minor_to_major(MAX_CAP_MINOR):,} {currency}; leave it empty for no cap."
    }


def _check_range(name: str, value: int | None, low: int, high: int, unit: str) -> dict[str, str]:
    if value is None or low <= value <= high:
        return {}
    return {
        name: f"Between {low:,} and {high:,} {unit}; leave it empty for the platform's default."
    }


@transaction.atomic
def contract_inference_cap_set(*, contract: Contract, cap_minor: int | None, actor: User) -> bool:
    """Set (or clear, ``None``) the contract's monthly inference cap. Returns whether it
    changed; a change is audited. The gateway picks it up within its cache interval."""
    errors = _check_cap("inference_monthly_cap_minor", cap_minor, contract.currency)
    if errors:
        raise ValidationError(errors)
    before = (
        Contract.objects.select_for_update()
        .values_list("inference_monthly_cap_minor", flat=True)
        .get(pk=contract.pk)
    )
    changed = before != cap_minor
    if changed:
        Contract.objects.filter(pk=contract.pk).update(inference_monthly_cap_minor=cap_minor)
    contract.inference_monthly_cap_minor = cap_minor
    if changed:
        audit(
            action="contract.inference_cap_set",
            actor=actor,
            organization=contract.buyer,
            target=contract,
            before_minor=before,
            after_minor=cap_minor,
        )
    return changed


@transaction.atomic
def line_api_key_limits_set(
    *,
    link: LineApiKey,
    monthly_cap_minor: int | None,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    actor: User,
) -> bool:
    """Set a key's monthly cap and rate limits (``None``: no key cap / the platform's
    defaults). Returns whether anything changed; a change is audited."""
    contract = link.line.contract
    errors = {
        **_check_cap("monthly_cap_minor", monthly_cap_minor, contract.currency),
        **_check_range(
            "requests_per_minute",
            requests_per_minute,
            MIN_REQUESTS_PER_MINUTE,
            MAX_REQUESTS_PER_MINUTE,
            "requests per minute",
        ),
        **_check_range(
            "tokens_per_minute",
            tokens_per_minute,
            MIN_TOKENS_PER_MINUTE,
            MAX_TOKENS_PER_MINUTE,
            "tokens per minute",
        ),
    }
    if errors:
        raise ValidationError(errors)
    locked = LineApiKey.objects.select_for_update().get(pk=link.pk)
    before = {
        "monthly_cap_minor": locked.monthly_cap_minor,
        "requests_per_minute": locked.requests_per_minute,
        "tokens_per_minute": locked.tokens_per_minute,
    }
    after = {
        "monthly_cap_minor": monthly_cap_minor,
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
    }
    for name, value in after.items():
        setattr(link, name, value)
    if before == after:
        return False
    LineApiKey.objects.filter(pk=link.pk).update(**after)
    audit(
        action="contract_line.api_key_limits_set",
        actor=actor,
        organization=contract.buyer,
        target=link.line,
        api_key_id=link.api_key_id,
        before=before,
        after=after,
    )
    return True
