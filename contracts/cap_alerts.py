"""Cap alerts: email the buyer when inference spend reaches 80 % and 100 % of a cap.

A beat task (``contracts.tasks.inference_cap_alerts``) measures every capped contract
and key (``inference_budget.inference_spend``). For each threshold reached it claims an
``InferenceCapAlert`` row (unique per cap, month and threshold) in its own transaction;
only the run that inserted the row sends the email, on commit. Reaching 100 % before
anyone was told of 80 % claims both and sends one email (100 %). Recipients: the buyer
organization's owners, admins and finance people.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from django.conf import settings
from django.core.mail import send_mass_mail
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import FINANCE_ROLES, Membership
from contracts.inference_budget import (
    ALERT_THRESHOLDS,
    CapUse,
    inference_spend,
    month_period,
)
from contracts.models import OPEN_STATES, Contract, InferenceCapAlert, LineApiKey


def _claim(
    *, contract: Contract, link: LineApiKey | None, use: CapUse, now: datetime
) -> int | None:
    """Claim every threshold ``use`` has reached; the highest newly claimed, or None."""
    assert use.cap_minor is not None and use.percent is not None
    month = month_period(now)[0].date()
    claimed = None
    for threshold in ALERT_THRESHOLDS:
        if use.percent < threshold:
            break
        try:
            with transaction.atomic():
                InferenceCapAlert.objects.create(
                    contract=contract,
                    line_api_key=link,
                    month=month,
                    threshold_percent=threshold,
                    cap_minor=use.cap_minor,
                    spent_minor=use.spent_minor,
                    created_at=now,
                )
        except IntegrityError:
            continue  # told already (this month, this cap, this threshold)
        claimed = threshold
    return claimed


def _recipients(organization_id: int) -> list[str]:
    return sorted(
        Membership.objects.filter(
            organization_id=organization_id, role__in=FINANCE_ROLES
        ).values_list("user__email", flat=True)
    )


def send_cap_alert(
    *, contract: Contract, link: LineApiKey | None, use: CapUse, threshold: int
) -> int:
    """Email the buyer's owners, admins and finance people; returns how many were sent."""
    recipients = _recipients(contract.buyer_id)
    if not recipients:
        return 0
    page = (
        reverse("contracts:line_api_key_detail", args=[contract.pk, link.pk])
        if link is not None
        else reverse("contracts:inference_cap", args=[contract.pk])
    )
    context = {
        "contract": contract,
        "organization": contract.buyer,
        "key_name": link.api_key.name if link is not None else None,
        "threshold": threshold,
        "spent": use.spent_display,
        "cap": use.cap_display,
        "currency": use.currency,
        "url": settings.SITE_URL.rstrip("/") + page,
    }
    subject = render_to_string("email/contracts/inference_cap_subject.txt", context).strip()
    body = render_to_string("email/contracts/inference_cap_message.txt", context)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "[Hashgrid] ")
    return send_mass_mail(
        [(prefix + subject, body, None, [email]) for email in recipients], fail_silently=False
    )


def inference_cap_alerts_send(*, now: datetime) -> int:
    """Claim and send every alert due at ``now``; returns the number of alerts sent.
    Idempotent: a second run in the same month sends nothing new."""
    capped_key = LineApiKey.objects.filter(
        line__contract=OuterRef("pk"), monthly_cap_minor__isnull=False
    )
    contracts = (
        Contract.objects.filter(state__in=OPEN_STATES)
        .filter(Q(inference_monthly_cap_minor__isnull=False) | Exists(capped_key))
        .select_related("buyer")
        .order_by("pk")
    )
    sent = 0
    for contract in contracts:
        spend = inference_spend(contract=contract, now=now)
        caps: list[tuple[LineApiKey | None, CapUse]] = []
        if contract.inference_monthly_cap_minor is not None:
            caps.append((None, spend.contract))
        links = LineApiKey.objects.filter(
            line__contract=contract, monthly_cap_minor__isnull=False
        ).select_related("api_key")
        caps += [(link, spend.key(link)) for link in links]
        for link, use in caps:
            if use.percent is None or use.percent < ALERT_THRESHOLDS[0]:
                continue
            with transaction.atomic():
                threshold = _claim(contract=contract, link=link, use=use, now=now)
                if threshold is not None:
                    transaction.on_commit(
                        partial(
                            send_cap_alert,
                            contract=contract,
                            link=link,
                            use=use,
                            threshold=threshold,
                        )
                    )
                    sent += 1
    return sent
