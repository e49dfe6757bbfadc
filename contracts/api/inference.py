"""The buyers' inference requests: one request by its id, and a month of them as CSV.

A request exists for the organization whose contract holds its line (another
organization's request is a 404, as any other tenant's object).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Iterator

from django.http import Http404, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.requests import request_organization
from contracts.api.serializers import InferenceExportInputSerializer, InferenceRequestSerializer
from contracts.api.views import BUYER_READ_PERMISSIONS
from contracts.inference_requests import (
    BuyerInferenceRequest,
    buyer_inference_request,
    buyer_inference_requests,
)

TAG = "inference"
CSV_COLUMNS = (
    "request_id",
    "key_name",
    "key_prefix",
    "product",
    "state",
    "gateway_status",
    "gateway_input_tokens",
    "gateway_output_tokens",
    "billed_input_tokens",
    "billed_output_tokens",
    "cost",
    "currency",
    "issued_at",
    "served_at",
    "time_to_first_token_ms",
    "duration_ms",
)


class InferenceRequestDetailApi(APIView):
    permission_classes = BUYER_READ_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="inference_request_retrieve",
        responses={
            200: InferenceRequestSerializer,
            404: OpenApiResponse(description="No such request of this organization's lines."),
        },
        summary="One inference request by its id (X-Request-Id): tokens and cost",
    )
    def get(self, request: Request, request_id: str) -> Response:
        try:
            rid = uuid.UUID(request_id)
        except ValueError as error:
            raise Http404 from error
        row = buyer_inference_request(organization=request_organization(request), request_id=rid)
        if row is None:
            raise Http404
        return Response(InferenceRequestSerializer(row).data)


class _Echo:
    """A file-like object whose ``write`` hands back the line (csv.writer → stream)."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[BuyerInferenceRequest]) -> Iterator[str]:
    """The export's CSV, line by line: a header, then one row per request."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for row in rows:
        data = InferenceRequestSerializer(row).data
        key = data.pop("key")
        data.update(key_name=key["name"], key_prefix=key["prefix"])
        yield writer.writerow(["" if data[name] is None else data[name] for name in CSV_COLUMNS])


class InferenceRequestExportApi(APIView):
    permission_classes = BUYER_READ_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="inference_requests_export",
        parameters=[InferenceExportInputSerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            400: OpenApiResponse(description="month is not YYYY-MM."),
        },
        summary="Every inference request of a UTC month, as CSV (one row per request)",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        params = InferenceExportInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        month = params.validated_data["month"]
        rows = buyer_inference_requests(organization=request_organization(request), month=month)
        response = StreamingHttpResponse(csv_lines(rows), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="inference-requests-{month:%Y-%m}.csv"'
        )
        return response
