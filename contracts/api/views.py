"""The buyers' API views: contracts, their lines, allocations and usage (search, quote and
reserve are the front door's: ``marketplace.api``).

Each view parses with an input serializer (``serializers``), checks the buyer's access,
calls one service or selector and renders with an output serializer.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.api_support import paginated_response
from accounts.models import OPERATOR_ROLES
from accounts.requests import request_organization
from accounts.tenancy import HasOrganization, api_membership_role, api_organization, api_scoped
from contracts import selectors, usage
from contracts.api.serializers import (
    USAGE_CSV_HEADERS,
    AllocationSerializer,
    ContractSerializer,
    LineSerializer,
    UsageBucketSerializer,
    UsageInputSerializer,
)
from contracts.models import Contract

TAG = "contracts"


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
        contracts = selectors.contract_list(organization=request_organization(request))
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
    """``?format=csv``: one row per bucket, the columns of the JSON, headed with units."""

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
            currency = data[0]["currency"] if data else "currency"
            writer.writerow([USAGE_CSV_HEADERS[name].format(currency=currency) for name in fields])
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
