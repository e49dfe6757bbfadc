"""The buyers' API views: offer search, quotes and reservations; contracts, their lines,
allocations and usage.

Each view parses with an input serializer (``serializers``), checks the buyer's access,
calls one service or selector and renders with an output serializer.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, renderers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from capacity.models import Offer
from contracts import checkout, selectors, usage
from contracts.allocations import CapacityUnavailable
from contracts.api.serializers import (
    AllocationSerializer,
    ContractSerializer,
    LineSerializer,
    OfferResultSerializer,
    OfferSearchInputSerializer,
    QuoteSerializer,
    ReservationInputSerializer,
    ReservationSerializer,
    UsageBucketSerializer,
    UsageInputSerializer,
)
from contracts.models import Contract
from marketplace.api_support import paginated_response, refusal, required_organization
from marketplace.models import OPERATOR_ROLES
from marketplace.search import SearchFilters, offer_search
from marketplace.tenancy import (
    HasOrganization,
    api_membership_role,
    api_organization,
    api_scoped,
)

TAG = "contracts"
MARKET_TAG = "marketplace"


class BuyerOnly(permissions.BasePermission):
    """A buyer organization. Not a buyer → 404, as the pages: these endpoints do not exist
    for partners."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        organization = api_organization(request)
        if organization is None or not organization.is_buyer:
            raise exceptions.NotFound("Not available for this organization.")
        return True


class BuyerAccess(BuyerOnly):
    """A buyer organization; writes need an operator role (owner, admin, member)."""

    message = "Your role does not allow this action."

    def has_permission(self, request: Request, view: APIView) -> bool:
        super().has_permission(request, view)
        if request.method in permissions.SAFE_METHODS:
            return True
        return api_membership_role(request) in OPERATOR_ROLES


BUYER_PERMISSIONS = [permissions.IsAuthenticated, HasOrganization, BuyerAccess]
# Asking for a quote changes nothing: every member of a buyer may, whatever the method.
BUYER_READ_PERMISSIONS = [permissions.IsAuthenticated, HasOrganization, BuyerOnly]
_REFUSED = OpenApiResponse(description="Refused: the body names each field at fault and why.")
_NOT_FOUND = OpenApiResponse(description="No such object in this organization.")


# -- marketplace -------------------------------------------------------------------------


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
    offer = checkout.best_offer(
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
        tags=[TAG],
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
                buyer=required_organization(request),
                offer=offer,
                gpu_count=data["gpu_count"],
                starts_at=data["starts_at"],
                term_months=int(data["term_months"]),
                actor=request.user,  # type: ignore[arg-type]
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


# -- contracts ---------------------------------------------------------------------------


def _contract(request: Request, pk: int) -> Contract:
    return get_object_or_404(
        api_scoped(Contract.objects.select_related("sla_policy"), request), pk=pk
    )


class ContractListApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG], operation_id="contracts_list", responses={200: ContractSerializer(many=True)}
    )
    def get(self, request: Request) -> Response:
        contracts = selectors.contract_list(organization=required_organization(request))
        return paginated_response(request, self, contracts, ContractSerializer)


class ContractDetailApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="contracts_retrieve",
        responses={200: ContractSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(ContractSerializer(_contract(request, pk)).data)


class ContractLineListApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="contract_lines_list",
        responses={200: LineSerializer(many=True), 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        lines = selectors.contract_lines(contract=_contract(request, pk))
        return paginated_response(request, self, lines, LineSerializer)


class ContractAllocationListApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="contract_allocations_list",
        responses={200: AllocationSerializer(many=True), 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        allocations = selectors.contract_allocations(contract=_contract(request, pk))
        return paginated_response(request, self, allocations, AllocationSerializer)


class UsageCsvRenderer(renderers.BaseRenderer):
    """``?format=csv``: one row per bucket, the columns of the JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if isinstance(data, list):
            fields = list(UsageBucketSerializer().fields)
            writer.writerow(fields)
            writer.writerows([row[name] for name in fields] for row in data)
        else:  # an error body: one "field,message" row each
            writer.writerow(["field", "message"])
            writer.writerows(
                [key, " ".join(map(str, value)) if isinstance(value, list) else str(value)]
                for key, value in (data or {}).items()
            )
        return buffer.getvalue().encode("utf-8")


class ContractUsageApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    renderer_classes = [renderers.JSONRenderer, UsageCsvRenderer]

    @extend_schema(
        tags=[TAG],
        operation_id="contract_usage",
        parameters=[
            UsageInputSerializer,
            OpenApiParameter(
                "format",
                OpenApiTypes.STR,
                enum=["json", "csv"],
                description="csv: text/csv, one row per bucket.",
            ),
        ],
        responses={
            (200, "application/json"): UsageBucketSerializer(many=True),
            (200, "text/csv"): OpenApiTypes.STR,
            400: OpenApiResponse(description="Invalid period or bucket."),
            404: _NOT_FOUND,
        },
        summary="Usage of a contract per UTC hour or day (JSON or CSV)",
    )
    def get(self, request: Request, pk: int) -> Response:
        contract = _contract(request, pk)
        params = UsageInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        bucket = params.validated_data["bucket"]
        until = params.validated_data.get("until") or timezone.now()
        default_span = timedelta(days=30) if bucket == "day" else timedelta(hours=48)
        since = params.validated_data.get("since") or until - default_span
        if since >= until or until - since > timedelta(days=400):
            raise exceptions.ValidationError(
                {"since": ["Ask for a non-empty period of at most 400 days."]}
            )
        rows = usage.usage_buckets(contract=contract, bucket=bucket, since=since, until=until)
        response = Response(UsageBucketSerializer(rows, many=True).data)
        if request.accepted_renderer.format == "csv":
            response["Content-Disposition"] = (
                f'attachment; filename="{contract.reference}-usage-{bucket}.csv"'
            )
        return response
