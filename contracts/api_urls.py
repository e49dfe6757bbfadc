"""Contracts endpoints under /api/v1/."""

from django.urls import path

from contracts import api
from contracts.api import inference

urlpatterns = [
    path("contracts", api.ContractListApi.as_view(), name="api_contracts"),
    path("contracts/<int:pk>", api.ContractDetailApi.as_view(), name="api_contract"),
    path("contracts/<int:pk>/lines", api.ContractLineListApi.as_view(), name="api_contract_lines"),
    path(
        "contracts/<int:pk>/allocations",
        api.ContractAllocationListApi.as_view(),
        name="api_contract_allocations",
    ),
    path("contracts/<int:pk>/usage", api.ContractUsageApi.as_view(), name="api_contract_usage"),
    path(
        "inference/requests/export",
        inference.InferenceRequestExportApi.as_view(),
        name="api_inference_requests_export",
    ),
    path(
        "inference/requests/<str:request_id>",
        inference.InferenceRequestDetailApi.as_view(),
        name="api_inference_request",
    ),
]
