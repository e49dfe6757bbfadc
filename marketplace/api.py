"""REST API of the front door: search offers, quote, reserve.

The API twin of the storefront pages (``storefront_views``): search reads
``marketplace.search``, a quote or a reservation goes through ``contracts.checkout``, the
one service that writes contracts. Thin views: an input serializer parses, a service or
selector does the work, an output serializer renders. Buyer organizations only (else 404,
as the pages); reserving needs an operator role (an API key acts as a member).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.api_support import paginated_response, refusal
from accounts.requests import request_actor, request_organization
from accounts.tenancy import HasOrganization
from capacity.models import Currency, EnergySource, GpuModel, Offer, Region
from contracts import api as contracts_api
from contracts import checkout
from contracts.allocations import CapacityUnavailable
from contracts.api import BUYER_PERMISSIONS, BuyerOnly
from contracts.models import TERM_MONTHS
from contracts.money import minor_to_major
from marketplace.search import SearchFilters, best_offer, offer_search

MARKET_TAG = "marketplace"
# Asking for a quote changes nothing: every member of a buyer may, whatever the method.
BUYER_READ_PERMISSIONS = [permissions.IsAuthenticated, HasOrganization, BuyerOnly]
_REFUSED = OpenApiResponse(description="Refused: the body names each field at fault and why.")


# -- serializers -------------------------------------------------------------------------


class OfferSearchInputSerializer(serializers.Serializer):
    gpu_model = serializers.PrimaryKeyRelatedField(queryset=GpuModel.objects.all(), required=False)
    region = serializers.ChoiceField(choices=Region.choices, required=False)
    country = serializers.CharField(min_length=2, max_length=2, required=False)
    energy_source = serializers.ChoiceField(choices=EnergySource.choices, required=False)
    gpu_count = serializers.IntegerField(
        min_value=1, required=False, help_text="GPUs free over the window, at least."
    )
    starts_at = serializers.DateTimeField(required=False, help_text="Window start; default now.")
    term_months = serializers.ChoiceField(choices=TERM_MONTHS, default=1)
    max_price = serializers.DecimalField(
        max_digits=10, decimal_places=4, required=False, help_text="Per GPU-hour for the term."
    )
    min_availability = serializers.DecimalField(
        max_digits=5, decimal_places=2, required=False, help_text="Percent, 30 days."
    )
    sort = serializers.ChoiceField(
        choices=["price", "-price", "availability", "free"], default="price"
    )


class OfferResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.CharField(source="site.name")
    region = serializers.ChoiceField(choices=Region.choices, source="site.region")
    country = serializers.CharField(source="site.country")
    energy_source = serializers.ChoiceField(
        choices=EnergySource.choices, source="site.energy_source"
    )
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField(help_text="GPUs the offer lists.")
    free_gpus = serializers.IntegerField(help_text="GPUs free over the requested window.")
    price_per_gpu_hour = serializers.DecimalField(
        max_digits=10, decimal_places=4, help_text="Reserved, for the requested term."
    )
    on_demand_price_per_gpu_hour = serializers.DecimalField(max_digits=10, decimal_places=4)
    availability_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        allow_null=True,
        help_text="Measured over 30 days; null until measured.",
    )
    currency = serializers.ChoiceField(choices=Currency.choices)


class ReservationInputSerializer(serializers.Serializer):
    offer = serializers.IntegerField(
        required=False, help_text="An offer id; or give gpu_model (and region) for the best offer."
    )
    gpu_model = serializers.PrimaryKeyRelatedField(queryset=GpuModel.objects.all(), required=False)
    region = serializers.ChoiceField(choices=Region.choices, required=False)
    gpu_count = serializers.IntegerField(min_value=1)
    starts_at = serializers.DateTimeField()
    term_months = serializers.ChoiceField(choices=TERM_MONTHS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("offer") and not attrs.get("gpu_model"):
            raise serializers.ValidationError("Give an offer, or a gpu_model for the best offer.")
        return attrs


class QuoteSerializer(serializers.Serializer):
    offer = serializers.IntegerField(source="offer.pk")
    gpu_count = serializers.IntegerField()
    term_months = serializers.IntegerField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4)
    hours_per_gpu = serializers.DecimalField(max_digits=14, decimal_places=6)
    total_minor = serializers.IntegerField(help_text="Whole term, minor units (cents).")
    total = serializers.SerializerMethodField()
    monthly_average_minor = serializers.IntegerField()
    currency = serializers.ChoiceField(choices=Currency.choices)
    free_gpus = serializers.IntegerField()

    def get_total(self, quote: checkout.Quote) -> str:
        return str(minor_to_major(quote.total_minor))


class ReservationSerializer(serializers.Serializer):
    contract = contracts_api.ContractSerializer()
    line = contracts_api.LineSerializer()
    quote = QuoteSerializer()
    allocated_gpus = serializers.IntegerField()


# -- views -----------------------------------------------------------------------------


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
        responses={200: QuoteSerializer, 400: _REFUSED},
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
        tags=[contracts_api.TAG],
        operation_id="reservation_create",
        request=ReservationInputSerializer,
        responses={201: ReservationSerializer, 400: _REFUSED, 409: _REFUSED},
        summary="Reserve GPUs: creates the contract or a new line on the open one",
    )
    def post(self, request: Request) -> Response:
        payload = ReservationInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        offer = _requested_offer(data)
        try:
            result = checkout.reservation_checkout(
                buyer=request_organization(request),
                offer=offer,
                gpu_count=data["gpu_count"],
                starts_at=data["starts_at"],
                term_months=int(data["term_months"]),
                actor=request_actor(request),
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
        return Response(ReservationSerializer(body).data, status=status.HTTP_201_CREATED)
