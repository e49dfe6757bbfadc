"""Partner agreements: the partner's share of each kind of revenue, effective-dated.

An agreement is never edited in place once it may have been applied: a new share is a
new agreement from a later month, and ``agreement_create`` ends the open-ended agreement
it supersedes at that date. PostgreSQL refuses overlapping agreements for one partner
and kind (exclusion constraint), so whatever the application does, at most one share
applies to a service month.

A partner without an agreement for a kind earns ``SETTLEMENT_DEFAULT_PARTNER_SHARE``
(80 % unless configured).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from accounts.audit import audit
from accounts.models import Organization, User
from billing.models import PartnerAgreement, RevenueKind

DEFAULT_PARTNER_SHARE = Decimal("0.8000")


def default_partner_share() -> Decimal:
    return Decimal(
        str(getattr(settings, "SETTLEMENT_DEFAULT_PARTNER_SHARE", DEFAULT_PARTNER_SHARE))
    )


@transaction.atomic
def agreement_create(
    *,
    partner: Organization,
    line_kind: str,
    partner_share: Decimal,
    effective_from: date,
    actor: User | None,
    effective_until: date | None = None,
    note: str = "",
) -> PartnerAgreement:
    """A new share for ``line_kind`` from ``effective_from`` (a month's first day).

    The partner's open-ended agreement for the kind that started earlier ends where this
    one starts; any other overlap is refused.
    """
    if not partner.is_partner:
        raise ValidationError("Agreements are for partner organizations.", code="not_partner")
    if line_kind not in RevenueKind.values or line_kind == RevenueKind.PLATFORM:
        raise ValidationError({"line_kind": "Choose reserved, on-demand GPU or inference."})
    if not Decimal(0) <= partner_share <= Decimal(1):
        raise ValidationError({"partner_share": "A share is a fraction between 0 and 1."})
    if effective_from.day != 1 or (effective_until is not None and effective_until.day != 1):
        raise ValidationError("Agreements start and end on the first day of a month.")
    superseded = list(
        PartnerAgreement.objects.select_for_update().filter(
            partner=partner,
            line_kind=line_kind,
            effective_until__isnull=True,
            effective_from__lt=effective_from,
        )
    )
    for agreement in superseded:
        PartnerAgreement.objects.filter(pk=agreement.pk).update(effective_until=effective_from)
    try:
        with transaction.atomic():
            agreement = PartnerAgreement.objects.create(
                partner=partner,
                line_kind=line_kind,
                partner_share=partner_share,
                effective_from=effective_from,
                effective_until=effective_until,
                note=note,
                created_by=actor if actor is not None and actor.is_authenticated else None,
            )
    except IntegrityError as error:
        raise ValidationError(
            "Another agreement of this partner for this kind covers part of that period.",
            code="overlap",
        ) from error
    audit(
        action="billing.agreement_created",
        actor=actor,
        organization=partner,
        target=agreement,
        line_kind=line_kind,
        partner_share=str(partner_share),
        effective_from=effective_from.isoformat(),
        effective_until=effective_until.isoformat() if effective_until else None,
        superseded=[agreement.pk for agreement in superseded],
    )
    return agreement


class ShareBook:
    """The shares in force, loaded once for a batch of partners (no query per line)."""

    def __init__(self, partner_ids: Iterable[int]) -> None:
        self._agreements: dict[tuple[int, str], list[PartnerAgreement]] = {}
        for agreement in PartnerAgreement.objects.filter(partner_id__in=set(partner_ids)):
            key = (agreement.partner_id, agreement.line_kind)
            self._agreements.setdefault(key, []).append(agreement)
        self._default = default_partner_share()

    def share(self, *, partner_id: int, kind: str, service_month: date) -> Decimal:
        if kind == RevenueKind.PLATFORM:
            return Decimal(0)
        for agreement in self._agreements.get((partner_id, kind), ()):
            if agreement.effective_from <= service_month and (
                agreement.effective_until is None or service_month < agreement.effective_until
            ):
                return agreement.partner_share
        return self._default


def agreements_in_force(*, partner: Organization, on: date) -> list[PartnerAgreement]:
    return list(
        PartnerAgreement.objects.filter(partner=partner, effective_from__lte=on)
        .filter(Q(effective_until__isnull=True) | Q(effective_until__gt=on))
        .order_by("line_kind")
    )
