"""Inference budgets: spend caps and rate limits buyers set, and this month's spend.

The buyer caps a contract's monthly inference spend (``Contract.inference_monthly_cap_minor``)
and each key's (``LineApiKey.monthly_cap_minor``), and may lower a key's requests and
tokens per minute below the platform's defaults. The gateway enforces them (it reserves
each request's worst case against the caps before forwarding); this module writes them,
with their bounds, and reads the spend they are measured against.

Spend this month is the gateway's own figure, read from its one owner
(``contracts.inference_spend``): every request issued this calendar month (UTC) at the
larger of the tokens billed and the tokens the gateway relayed, per direction, x the
line's prices per million tokens, rounded up per request to a millionth of a cent
("micros"). Pages, the API and the 80 % / 100 % alerts therefore show the spend the
gateway holds the caps against, never a lower one; it is shown rounded up to the cent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.audit import audit
from accounts.models import User
from contracts.inference_spend import MICROS_PER_MINOR, inference_month_spend, micros_to_minor
from contracts.models import Contract, LineApiKey
from contracts.money import MINOR_UNITS_PER_MAJOR, minor_to_major
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

    # Millionths of a minor unit of ``currency``, as the gateway counts against the cap.
    spent_micros: int
    cap_minor: int | None
    currency: str

    @property
    def spent(self) -> Decimal:
        """The exact spend, major units."""
        return Decimal(self.spent_micros) / (MICROS_PER_MINOR * MINOR_UNITS_PER_MAJOR)

    @property
    def spent_minor(self) -> int:
        """Rounded up to the minor unit, once."""
        return micros_to_minor(self.spent_micros)

    @property
    def spent_display(self) -> Decimal:
        """The spend rounded up once, for display (two places)."""
        return minor_to_major(self.spent_minor)

    @property
    def cap_display(self) -> Decimal | None:
        return None if self.cap_minor is None else minor_to_major(self.cap_minor)

    @property
    def percent(self) -> int | None:
        """Whole percent of the cap spent, rounded down (80 means at least 80 %)."""
        if not self.cap_minor:
            return None
        return self.spent_micros * 100 // (self.cap_minor * MICROS_PER_MINOR)


@dataclass(frozen=True)
class ContractSpend:
    """A contract's inference spend this month: in total and per API key id (micros)."""

    contract: CapUse
    by_api_key_micros: dict[int, int] = field(default_factory=dict)

    def key(self, link: LineApiKey) -> CapUse:
        return CapUse(
            spent_micros=self.by_api_key_micros.get(link.api_key_id, 0),
            cap_minor=link.monthly_cap_minor,
            currency=self.contract.currency,
        )


def month_period(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) of ``now``: ``[start, next start)``."""
    start = month_start(now)
    return start, add_months(start, 1)


def inference_spend(*, contract: Contract, now: datetime) -> ContractSpend:
    """The contract's inference spend in ``now``'s month, per key and in total, by the
    gateway's rule (``contracts.inference_spend``): one query."""
    month = inference_month_spend(moment=now, contract_ids=[contract.pk])
    return ContractSpend(
        contract=CapUse(
            spent_micros=month.by_contract_micros.get(contract.pk, 0),
            cap_minor=contract.inference_monthly_cap_minor,
            currency=contract.currency,
        ),
        by_api_key_micros=month.by_key_micros,
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
