"""Contracts endpoints under /api/v1/."""

from django.urls import path

from contracts import api

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
]
