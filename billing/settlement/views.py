"""Partner pages: earnings (charts, statements), a statement's detail and CSV, and Stripe
Connect onboarding. Thin: organization and role checks, one service or selector, render.
Statements of another organization answer 404. A finance role (owner, admin, finance) of
a partner organization is required.
"""

from __future__ import annotations

import csv
from datetime import date

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.models import FINANCE_ROLES
from accounts.requests import request_actor, request_organization
from accounts.tenancy import get_for_org_or_404, org_required
from billing import stripe_gateway
from billing.models import SettlementStatement
from billing.money import minor_to_major
from billing.settlement import daily, payouts, selectors

partner_finance = org_required(FINANCE_ROLES, partner=True)


def _statement(request: HttpRequest, pk: int) -> SettlementStatement:
    return get_for_org_or_404(SettlementStatement.objects.select_related("partner"), request, pk=pk)


@partner_finance
@require_GET
def earnings(request: HttpRequest) -> HttpResponse:
    partner = request_organization(request)
    currencies = selectors.earnings_currencies(partner=partner)
    currency = request.GET.get("currency", "")
    if currency not in currencies:
        currency = currencies[0] if currencies else "USD"
    return render(
        request,
        "billing/earnings.html",
        {
            "currency": currency,
            "currencies": currencies,
            "summary": selectors.earnings_summary(partner=partner, currency=currency),
            "by_month": selectors.earnings_by_month(partner=partner, currency=currency),
            "by_site": selectors.earnings_by_site(partner=partner, currency=currency),
            "statements": list(selectors.statements_of(partner=partner)),
            "connect_account": selectors.connect_account_of(partner=partner),
        },
    )


@partner_finance
@require_GET
def statement_detail(request: HttpRequest, pk: int) -> HttpResponse:
    statement = _statement(request, pk)
    return render(
        request,
        "billing/statement_detail.html",
        {
            "statement": statement,
            "rows": selectors.statement_rows(statement=statement),
            "site_totals": selectors.statement_site_totals(statement=statement),
            "adjustments": selectors.statement_adjustments(statement=statement),
            "payout": selectors.payout_of(statement=statement),
        },
    )


@partner_finance
@require_GET
def statement_csv(request: HttpRequest, pk: int) -> HttpResponse:
    statement = _statement(request, pk)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="{statement.reference}-{statement.currency}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(
        [
            "statement",
            "month",
            "site",
            "node",
            "contract",
            "buyer",
            "kind",
            "basis",
            "amount",
            "partner_share",
            "platform_fee",
            "currency",
        ]
    )
    month = f"{statement.month:%Y-%m}"
    for row in selectors.statement_rows(statement=statement):
        writer.writerow(
            [
                statement.reference,
                month,
                row.site,
                row.node,
                row.contract,
                row.buyer,
                row.revenue_kind,
                row.basis,
                minor_to_major(row.amount_minor),
                minor_to_major(row.partner_share_minor),
                minor_to_major(row.platform_fee_minor),
                statement.currency,
            ]
        )
    for adjustment in selectors.statement_adjustments(statement=statement):
        writer.writerow(
            [
                statement.reference,
                month,
                "",
                "",
                "",
                "",
                "adjustment",
                adjustment.reason,
                minor_to_major(adjustment.amount_minor),
                minor_to_major(adjustment.partner_share_minor),
                minor_to_major(adjustment.platform_fee_minor),
                statement.currency,
            ]
        )
    return response


def _month_earnings(request: HttpRequest) -> daily.MonthEarnings | None:
    """The month and currency asked for (``?month=2026-10&currency=USD``), else the
    latest month with earnings; None when the partner has earned nothing yet."""
    partner = request_organization(request)
    currencies = selectors.earnings_currencies(partner=partner)
    currency = request.GET.get("currency", "")
    if currency not in currencies:
        currency = currencies[0] if currencies else "USD"
    months = daily.earning_months(partner=partner, currency=currency)
    if not months:
        return None
    month = months[0]
    asked = request.GET.get("month", "")
    for candidate in months:
        if f"{candidate:%Y-%m}" == asked:
            month = candidate
    return daily.month_earnings(partner=partner, currency=currency, month=month)


@partner_finance
@require_GET
def earnings_daily(request: HttpRequest) -> HttpResponse:
    partner = request_organization(request)
    earned = _month_earnings(request)
    months: list[date] = (
        daily.earning_months(partner=partner, currency=earned.currency) if earned else []
    )
    return render(request, "billing/earnings_daily.html", {"earned": earned, "months": months})


@partner_finance
@require_GET
def earnings_daily_csv(request: HttpRequest) -> HttpResponse:
    earned = _month_earnings(request)
    month = f"{earned.month:%Y-%m}" if earned else "none"
    currency = earned.currency if earned else "USD"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="earnings-{month}-{currency}-per-day.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(
        [
            "day_utc",
            "site",
            "node",
            "gpus",
            f"your_share_{currency.lower()}",
            f"your_share_per_gpu_{currency.lower()}",
        ]
    )
    for row in earned.rows if earned else []:
        writer.writerow(
            [
                f"{row.day:%Y-%m-%d}" if row.day else f"{month} (month)",
                row.site,
                row.node,
                row.gpu_count,
                minor_to_major(row.partner_share_minor),
                minor_to_major(row.per_gpu_minor),
            ]
        )
    return response


def _onboarding_redirect(request: HttpRequest) -> HttpResponse:
    try:
        url = payouts.onboarding_link(
            partner=request_organization(request),
            actor=request_actor(request),
            return_url=request.build_absolute_uri(reverse("billing:payouts_return")),
            refresh_url=request.build_absolute_uri(reverse("billing:payouts_refresh")),
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("billing:earnings")
    except stripe_gateway.StripeGatewayError as error:
        messages.error(request, stripe_gateway.error_message(error))
        return redirect("billing:earnings")
    return redirect(url)


@partner_finance
@require_POST
def payouts_setup(request: HttpRequest) -> HttpResponse:
    return _onboarding_redirect(request)


@partner_finance
@require_GET
def payouts_refresh(request: HttpRequest) -> HttpResponse:
    """Stripe sends the partner here when the onboarding link expired: a fresh one."""
    return _onboarding_redirect(request)


@partner_finance
@require_GET
def payouts_return(request: HttpRequest) -> HttpResponse:
    try:
        account = payouts.connect_account_sync(
            partner=request_organization(request), actor=request_actor(request)
        )
    except stripe_gateway.StripeGatewayError as error:
        messages.error(request, stripe_gateway.error_message(error))
        return redirect("billing:earnings")
    if account is not None and account.can_receive_payouts:
        messages.success(request, "Your payout account is ready: statements will be paid to it.")
    else:
        messages.warning(request, "Stripe still needs some details before payouts can start.")
    return redirect("billing:earnings")
