"""REST API for buyers: search offers, quote, reserve; contracts, lines, allocations, usage.

Thin views: an input serializer parses, ``tenancy`` scopes (another tenant's contract is a
404), a service or selector does the work, an output serializer renders. Buyer endpoints
need a buyer organization (else 404, as the pages); reserving needs an operator role (an
API key acts as a member). Money is returned both as integer minor units and as a
decimal string in the contract's currency.
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
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, permissions, renderers, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from capacity.models import Currency, EnergySource, GpuModel, Offer, Region
from contracts import checkout, selectors, usage
from contracts.allocations import CapacityUnavailable
from contracts.models import TERM_MONTHS, Contract, ContractState, LineKind
from contracts.money import minor_to_major
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


# -- serializers -------------------------------------------------------------------------


@extend_schema_field(
    {"type": "string", "enum": LineKind.values, "description": "What a contract line buys."},
    component_name="ContractLineKind",
)
class LineKindField(serializers.ChoiceField):
    """Its own schema component: ``kind`` is also the name of capacity's window kinds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=LineKind.choices, **kwargs)


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


class ContractSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.CharField()
    state = serializers.ChoiceField(choices=ContractState.choices)
    currency = serializers.ChoiceField(choices=Currency.choices)
    starts_at = serializers.DateTimeField()
    term_months = serializers.IntegerField()
    term_ends_at = serializers.DateTimeField()
    auto_renew = serializers.BooleanField()
    cancel_at_term_end = serializers.BooleanField()
    monthly_commitment_minor = serializers.IntegerField()
    early_termination_fee_percent = serializers.DecimalField(max_digits=5, decimal_places=2)
    early_termination_fee_minor = serializers.IntegerField()
    sla_target_percent = serializers.DecimalField(
        max_digits=5,
        decimal_places=2,
        source="sla_policy.target_percent",
        allow_null=True,
        default=None,
    )
    created_at = serializers.DateTimeField()


class LineSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = LineKindField()
    offer = serializers.IntegerField(source="offer_id", allow_null=True)
    inference_product = serializers.CharField(
        source="inference_product.slug", allow_null=True, default=None
    )
    gpu_count = serializers.IntegerField()
    term_months = serializers.IntegerField(allow_null=True)
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4, allow_null=True)
    input_price_per_million_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True
    )
    output_price_per_million_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, allow_null=True
    )
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class AllocationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    line = serializers.IntegerField(source="line_id")
    gpu_uuid = serializers.CharField(source="gpu_device.uuid")
    node = serializers.CharField(source="gpu_device.node.name")
    site = serializers.CharField(source="gpu_device.node.site.name")
    starts_at = serializers.DateTimeField(source="period.lower")
    ends_at = serializers.DateTimeField(source="period.upper")


class ReservationSerializer(serializers.Serializer):
    contract = ContractSerializer()
    line = LineSerializer()
    quote = QuoteSerializer()
    allocated_gpus = serializers.IntegerField()


class UsageBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    busy_ms = serializers.IntegerField()
    energy_mj = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    requests = serializers.IntegerField()


class UsageInputSerializer(serializers.Serializer):
    bucket = serializers.ChoiceField(choices=usage.BUCKETS, default="day")
    since = serializers.DateTimeField(
        required=False, help_text="Default: 30 days (day) or 48 hours (hour) ago."
    )
    until = serializers.DateTimeField(required=False, help_text="Default: now.")


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
