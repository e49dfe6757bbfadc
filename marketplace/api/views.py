"""REST API of the front door: search offers, quote, reserve.

The API twin of the storefront pages (``storefront_views``): search reads
``marketplace.search``, a quote or a reservation goes through ``contracts.checkout``, the
one service that writes contracts. Thin views: an input serializer parses, a service or
selector does the work, an output serializer renders. Buyer organizations only (else 404,
as the pages); reserving needs an operator role (an API key acts as a member at most).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.api_support import IDEMPOTENCY_HEADER, idempotency_key, paginated_response, refusal
from accounts.requests import request_actor, request_organization
from accounts.tenancy import HasOrganization
from capacity.models import Offer
from contracts import checkout
from contracts.allocations import CapacityUnavailable
from contracts.api import BUYER_PERMISSIONS, BuyerOnly
from contracts.api.views import TAG as CONTRACTS_TAG
from marketplace.api.serializers import (
    OfferResultSerializer,
    OfferSearchInputSerializer,
    QuoteSerializer,
    ReservationCreateInputSerializer,
    ReservationInputSerializer,
    ReservationSerializer,
)
from marketplace.search import SearchFilters, best_offer, offer_search

MARKET_TAG = "marketplace"
# Asking for a quote changes nothing: every member of a buyer may, whatever the method.
BUYER_READ_PERMISSIONS = [permissions.IsAuthenticated, HasOrganization, BuyerOnly]
_REFUSED = OpenApiResponse(description="Refused: the body names each field at fault and why.")
_NO_OFFER = OpenApiResponse(description="No listed offer has that id.")


class OfferSearchApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[MARKET_TAG],
        operation_id="offers_search",
        parameters=[OfferSearchInputSerializer],
        responses={
            200: OfferResultSerializer(many=True),
            400: OpenApiResponse(description="Invalid filter, e.g. an unknown GPU model."),
        },
        summary="Search offers with the GPUs free over a window",
    )
    def get(self, request: Request) -> Response:
        params = OfferSearchInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        filters = SearchFilters(
            gpu_model_id=data["gpu_model"].pk if data.get("gpu_model") else None,
            region=data.get("region"),
            country=data.get("country"),
            energy_source=data.get("energy_source"),
            gpu_count=data.get("gpu_count"),
            starts_at=data.get("starts_at"),
            term_months=int(data["term_months"]),
            max_price=data.get("max_price"),
            min_availability=data.get("min_availability"),
            sort=data["sort"],
        )
        return paginated_response(
            request, self, offer_search(filters=filters), OfferResultSerializer
        )


def _requested_offer(data: dict[str, Any]) -> Offer:
    if data.get("offer"):
        return get_object_or_404(
            Offer.objects.active().select_related("site", "gpu_model"), pk=data["offer"]
        )
    offer = best_offer(
        gpu_model_id=data["gpu_model"].pk,
        gpu_count=data["gpu_count"],
        starts_at=data["starts_at"],
        term_months=int(data["term_months"]),
        region=data.get("region"),
    )
    if offer is None:
        raise exceptions.ValidationError(
            {"detail": ["No listed offer has that many GPUs free for this window."]}
        )
    return offer


class QuoteApi(APIView):
    permission_classes = BUYER_READ_PERMISSIONS

    @extend_schema(
        tags=[MARKET_TAG],
        operation_id="reservation_quote",
        request=ReservationInputSerializer,
        responses={200: QuoteSerializer, 400: _REFUSED, 404: _NO_OFFER},
        summary="Price N GPUs of an offer (or the best offer) for a term",
    )
    def post(self, request: Request) -> Response:
        payload = ReservationInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            quote = checkout.reservation_quote(
                offer=_requested_offer(data),
                gpu_count=data["gpu_count"],
                starts_at=data["starts_at"],
                term_months=int(data["term_months"]),
            )
        except DjangoValidationError as error:
            raise refusal(error) from None
        return Response(QuoteSerializer(quote).data)


class ReservationCreateApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[CONTRACTS_TAG],
        operation_id="reservation_create",
        request=ReservationCreateInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="16-64 characters, new for each reservation: a request repeated "
                "with the same key returns the first one's reservation (200) and creates "
                "nothing.",
            )
        ],
        responses={
            200: ReservationSerializer,
            201: ReservationSerializer,
            400: _REFUSED,
            404: _NO_OFFER,
            409: OpenApiResponse(
                description="No GPUs free, or the price changed since the quote (the body "
                "carries the new `quote`)."
            ),
        },
        summary="Reserve GPUs: creates the contract or a new line on the open one",
    )
    def post(self, request: Request) -> Response:
        payload = ReservationCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        submission_key = idempotency_key(request, what="reservation")
        offer = _requested_offer(data)
        try:
            result = checkout.reservation_checkout(
                buyer=request_organization(request),
                offer=offer,
                gpu_count=data["gpu_count"],
                starts_at=data["starts_at"],
                term_months=int(data["term_months"]),
                actor=request_actor(request),
                quoted=payload.quoted(),
                submission_key=submission_key,
            )
        except checkout.QuoteChanged as error:
            return Response(
                {"detail": error.messages, "quote": QuoteSerializer(error.quote).data},
                status=status.HTTP_409_CONFLICT,
            )
        except CapacityUnavailable as error:
            return Response({"detail": error.messages}, status=status.HTTP_409_CONFLICT)
        except DjangoValidationError as error:
            raise refusal(error) from None
        body = {
            "contract": result.contract,
            "line": result.line,
            "quote": result.quote,
            "allocated_gpus": len(result.allocations),
        }
        return Response(
            ReservationSerializer(body).data,
            status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED,
        )
