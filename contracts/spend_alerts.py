"""Emails when inference spend reaches 80 % and 100 % of a monthly cap.

The gateway enforces the caps (``LineApiKey.monthly_cap_minor`` per key,
``Contract.inference_monthly_cap_minor`` per contract) in real time; this tells the
buyer's owners, admins and finance members when spend gets near or to one, from the
month's spend as ``contracts.inference_spend`` counts it. Run every few minutes by
beat; each (cap, month, threshold) is emailed at most once, guaranteed by a unique row
(``SpendAlert``) inserted in the same transaction that schedules the email. A spend
that jumps past both thresholds between two runs gets one email (the higher) and both
rows.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction

from accounts.models import ApiKey, Membership, Role
from contracts.inference_spend import inference_month_spend
from contracts.models import Contract, ContractState, LineApiKey, SpendAlert
from contracts.money import minor_to_major
from contracts.terms import month_start

THRESHOLDS_PERCENT = (80, 100)
_RECIPIENT_ROLES = (Role.OWNER, Role.ADMIN, Role.FINANCE)


def send_spend_alerts(*, now: datetime) -> int:
    """Record and email every threshold newly reached this month; the emails sent."""
    spend = inference_month_spend(moment=now)
    sent = 0
    contracts = Contract.objects.filter(
        state=ContractState.ACTIVE, inference_monthly_cap_minor__isnull=False
    )
    for contract in contracts:
        sent += _alert(
            contract=contract,
            api_key=None,
            spend_minor=spend.contract_minor(contract.pk),
            cap_minor=contract.inference_monthly_cap_minor,  # type: ignore[arg-type]
            now=now,
        )
    links = LineApiKey.objects.filter(
        monthly_cap_minor__isnull=False,
        api_key__revoked_at__isnull=True,
        line__contract__state=ContractState.ACTIVE,
    ).select_related("line__contract", "api_key")
    for link in links:
        sent += _alert(
            contract=link.line.contract,
            api_key=link.api_key,
            spend_minor=spend.key_minor(link.api_key_id),
            cap_minor=link.monthly_cap_minor,  # type: ignore[arg-type]
            now=now,
        )
    return sent


def _alert(
    *, contract: Contract, api_key: ApiKey | None, spend_minor: int, cap_minor: int, now: datetime
) -> int:
    if cap_minor <= 0:
        return 0
    reached = [t for t in THRESHOLDS_PERCENT if spend_minor * 100 >= cap_minor * t]
    if not reached:
        return 0
    month = month_start(now).date()
    recorded = []
    with transaction.atomic():
        for threshold in reached:
            try:
                with transaction.atomic():
                    SpendAlert.objects.create(
                        contract=contract,
                        api_key=api_key,
                        month=month,
                        threshold_percent=threshold,
                        spend_minor=spend_minor,
                        cap_minor=cap_minor,
                        sent_at=now,
                    )
            except IntegrityError:
                continue  # already emailed for this threshold this month
            recorded.append(threshold)
        if not recorded:
            return 0
        highest = max(recorded)
        transaction.on_commit(
            lambda: _email(
                contract=contract,
                api_key=api_key,
                threshold=highest,
                spend_minor=spend_minor,
                cap_minor=cap_minor,
            )
        )
    return 1


def _email(
    *, contract: Contract, api_key: ApiKey | None, threshold: int, spend_minor: int, cap_minor: int
) -> None:
    recipients = sorted(
        Membership.objects.filter(
            organization_id=contract.buyer_id, role__in=_RECIPIENT_ROLES
        ).values_list("user__email", flat=True)
    )
    if not recipients:
        return
    whose = f"API key {api_key.name} ({api_key.prefix}…)" if api_key else "your contract"
    spend = f"{minor_to_major(spend_minor)} {contract.currency}"
    cap = f"{minor_to_major(cap_minor)} {contract.currency}"
    if threshold >= 100:
        subject = f"Inference spend cap reached for {whose}"
        outcome = "Requests that could exceed the cap are refused until the month ends or the cap is raised."
    else:
        subject = f"Inference spend at {threshold} % of the cap for {whose}"
        outcome = "Requests are refused once the cap would be exceeded."
    body = (
        f"Inference spend this month for {whose} on contract {contract.reference} is "
        f"{spend} of its {cap} monthly cap ({threshold} %).\n\n{outcome}\n"
    )
    send_mail(settings.ACCOUNT_EMAIL_SUBJECT_PREFIX + subject, body, None, recipients)
