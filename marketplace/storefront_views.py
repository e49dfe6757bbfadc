"""Buyer storefront: search offers, see one, get a quote, confirm the reservation.

Thin: parse the form, call one selector or service, render. Offers are public listings:
anyone, signed in or not, may search them and open an offer page (prices, hardware,
terms: nothing of any buyer, nor the partner's name or nodes). A quote needs a buyer
organization; confirming needs an operator role (owner, admin, member). What a checkout
creates belongs to the buyer and is reached through ``contracts.views`` with
``get_for_org_or_404``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_http_methods

from accounts.models import OPERATOR_ROLES, Organization
from accounts.requests import request_actor, request_membership, request_organization
from accounts.tenancy import current_membership, org_required
from capacity.forms import add_service_errors
from capacity.metering.selectors import offer_availability
from capacity.models import Offer
from capacity.selectors import offer_hardware
from contracts import checkout
from contracts.money import minor_to_major
from contracts.selectors import buyer_has_payment_method, reservation_terms
from marketplace import search_cache
from marketplace.search import best_offer, next_minute, offer_search
from marketplace.storefront_forms import CheckoutForm, ReservationForm, SearchForm

PAGE_SIZE = 20
# What the search form and its pagination send; other query strings are not cached.
SEARCH_PARAMETERS = frozenset(SearchForm.base_fields) | {"page"}

buyer_member = org_required(buyer=True)
buyer_operator = org_required(OPERATOR_ROLES, buyer=True)


def _default_start() -> str:
    start = (timezone.now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m-%dT%H:%M")


@require_http_methods(["GET"])
def search(request: HttpRequest) -> HttpResponse:
    """Offers matching the filters. The form and its results are one fragment that depends
    only on the query and the inventory, cached until a commit changes the inventory
    (``marketplace.search_cache``); the window's default start (the next whole minute) is
    part of the key because an empty start means "now"."""
    now = timezone.now()
    if set(request.GET) <= SEARCH_PARAMETERS:
        query = (sorted(request.GET.lists()), next_minute(now).isoformat())
        page = search_cache.cached("page", query, lambda: _search_fragment(request, now))
    else:
        page = _search_fragment(request, now)  # parameters no form sends: never cached
    return render(
        request,
        "marketplace/storefront/search.html",
        {
            "results": mark_safe(page["html"]),  # noqa: S308 (rendered by our template)
            "window_start": page["window_start"],
            "window_end": page["window_end"],
        },
    )


def _search_fragment(request: HttpRequest, now: datetime) -> dict[str, Any]:
    form = SearchForm(request.GET or None)
    filters = form.filters()
    offers = offer_search(filters=filters, now=now)
    page = Paginator(offers, PAGE_SIZE).get_page(request.GET.get("page"))
    start, end = filters.window(now)
    # What each result's "View" link carries to the offer page, built once for the page.
    detail_params: dict[str, int | str] = {
        "gpu_count": filters.gpu_count or 1,
        "term_months": filters.term_months,
        "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
    }
    html = render_to_string(
        "marketplace/storefront/_search_results.html",
        {
            "form": form,
            "page_obj": page,
            "filters": filters,
            "detail_query": urlencode(detail_params),
        },
        request=request,
    )
    return {"html": str(html), "window_start": start, "window_end": end}


@require_http_methods(["GET"])
def offer_detail(request: HttpRequest, pk: int) -> HttpResponse:
    offer = get_object_or_404(Offer.objects.active().select_related("site", "gpu_model"), pk=pk)
    buyer = _buyer_of(request)
    initial = {
        "offer": offer.pk,
        "gpu_count": request.GET.get("gpu_count") or 1,
        "starts_at": request.GET.get("starts_at") or _default_start(),
        "term_months": request.GET.get("term_months") or 1,
    }
    return render(
        request,
        "marketplace/storefront/offer_detail.html",
        {
            "offer": offer,
            "form": ReservationForm(initial=initial),
            "availability": _availability(offer),
            "reserved_prices": sorted(offer.reserved_prices().items()),
            "hardware": offer_hardware(offer=offer),
            "terms": reservation_terms(buyer=buyer, currency=offer.currency),
            # Who may ask for a quote here; others are invited to sign up or in.
            "can_quote": buyer is not None,
            "here": request.get_full_path(),
        },
    )


def _buyer_of(request: HttpRequest) -> Organization | None:
    """The signed-in user's current organization when it buys; None otherwise."""
    membership = current_membership(request) if request.user.is_authenticated else None
    if membership is None or not membership.organization.is_buyer:
        return None
    return membership.organization


def _availability(offer: Offer) -> Decimal | None:
    return offer_availability(offer=offer).percent


def _quote_from(request: HttpRequest, form: ReservationForm) -> checkout.Quote | None:
    """The quote the form asks for, or None with the reason on the form."""
    data = form.cleaned_data
    if data.get("offer"):
        offer = (
            Offer.objects.active()
            .select_related("site", "gpu_model")
            .filter(pk=data["offer"])
            .first()
        )
    else:
        offer = best_offer(
            gpu_model_id=data["gpu_model"].pk,
            gpu_count=data["gpu_count"],
            starts_at=data["starts_at"],
            term_months=data["term_months"],
            region=data.get("region") or None,
        )
    if offer is None:
        form.add_error(None, "No listed offer has that many GPUs free for this window.")
        return None
    try:
        return checkout.reservation_quote(
            offer=offer,
            gpu_count=data["gpu_count"],
            starts_at=data["starts_at"],
            term_months=data["term_months"],
        )
    except ValidationError as error:
        add_service_errors(form, error)
        return None


def _render_quote(
    request: HttpRequest, form: ReservationForm, quote: checkout.Quote | None, status: int = 200
) -> HttpResponse:
    membership = request_membership(request)
    terms = (
        reservation_terms(buyer=membership.organization, currency=quote.currency) if quote else None
    )
    return render(
        request,
        "marketplace/storefront/quote.html",
        {
            "form": form,
            "quote": quote,
            "terms": terms,
            "early_termination_fee": (
                minor_to_major(
                    checkout.early_termination_fee_at_start_minor(
                        quote=quote, fee_percent=terms.early_termination_fee_percent
                    )
                )
                if quote and terms
                else None
            ),
            "quote_url": _quote_url(quote) if quote else None,
            "total": minor_to_major(quote.total_minor) if quote else None,
            "monthly": minor_to_major(quote.monthly_average_minor) if quote else None,
            "has_payment_method": buyer_has_payment_method(membership.organization),
            "can_reserve": membership.can_operate,
            "can_add_card": membership.can_see_finance,
            # A new key on every render: a form submitted twice creates one reservation.
            "confirm_form": CheckoutForm.for_quote(quote) if quote else None,
        },
        status=status,
    )


def _quote_url(quote: checkout.Quote) -> str:
    """The quote page for ``quote``: where the card page sends the buyer back to."""
    query = urlencode(
        {
            "offer": str(quote.offer.pk),
            "gpu_count": str(quote.gpu_count),
            "starts_at": quote.starts_at.strftime("%Y-%m-%dT%H:%M"),
            "term_months": str(quote.term_months),
        }
    )
    return f"{reverse('marketplace:quote')}?{query}"


@buyer_member
@require_http_methods(["GET"])
def quote(request: HttpRequest) -> HttpResponse:
    form = ReservationForm(request.GET or None)
    result = _quote_from(request, form) if form.is_valid() else None
    return _render_quote(
        request, form, result, status=200 if result else 400 if request.GET else 200
    )


@buyer_operator
@require_http_methods(["POST"])
def checkout_confirm(request: HttpRequest) -> HttpResponse:
    """Confirm a quote: refused (409, with the new price to review) when the offer's price
    changed since; a repeated submission of one rendered form lands on the contract of the
    first without reserving again."""
    form = CheckoutForm(request.POST)
    result = _quote_from(request, form) if form.is_valid() else None
    if result is None:
        return _render_quote(request, form, None, status=400)
    try:
        done = checkout.reservation_checkout(
            buyer=request_organization(request),
            offer=result.offer,
            gpu_count=result.gpu_count,
            starts_at=result.starts_at,
            term_months=result.term_months,
            actor=request_actor(request),
            quoted=form.quoted(),
            submission_key=form.cleaned_data["submission_key"],
        )
    except checkout.QuoteChanged as error:
        add_service_errors(form, error)
        return _render_quote(request, form, error.quote, status=409)
    except ValidationError as error:
        add_service_errors(form, error)
        return _render_quote(request, form, result, status=409)
    if done.replayed:
        messages.info(
            request,
            f"This reservation was already confirmed on contract {done.contract.reference}; "
            "nothing more was reserved.",
        )
        return redirect("contracts:detail", pk=done.contract.pk)
    messages.success(
        request,
        f"Reserved {done.line.gpu_count} x {result.offer.gpu_model.name} at "
        f"{result.offer.site.name} until {done.line.ends_at:%d %b %Y} on contract "
        f"{done.contract.reference}.",
    )
    return redirect("contracts:detail", pk=done.contract.pk)
