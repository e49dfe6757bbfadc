"""Contracts endpoints under /api/v1/."""

from django.urls import path

from contracts import api
from contracts.api import budget as budget_api
from contracts.api import inference
from contracts.api import serving as serving_api
from contracts.api import workloads as workloads_api

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
    path(
        "contracts/<int:pk>/inference-budget",
        budget_api.ContractBudgetApi.as_view(),
        name="api_contract_inference_budget",
    ),
    path(
        "contracts/<int:pk>/api-keys",
        budget_api.ContractKeyListApi.as_view(),
        name="api_contract_keys",
    ),
    path(
        "contracts/<int:pk>/api-keys/<int:api_key_id>",
        budget_api.ContractKeyDetailApi.as_view(),
        name="api_contract_key",
    ),
    path(
        "nodes/<int:pk>/inference-products",
        serving_api.NodeServingListApi.as_view(),
        name="api_node_inference_products",
    ),
    path(
        "nodes/<int:pk>/inference-products/<str:slug>",
        serving_api.NodeServingDetailApi.as_view(),
        name="api_node_inference_product",
    ),
    path("instances", workloads_api.InstanceListApi.as_view(), name="api_instances"),
    path("containers", workloads_api.ContainerCreateApi.as_view(), name="api_containers"),
    path("deployments", workloads_api.DeploymentCreateApi.as_view(), name="api_deployments"),
    path("workloads", workloads_api.WorkloadListApi.as_view(), name="api_workloads"),
    path("workloads/<int:pk>", workloads_api.WorkloadDetailApi.as_view(), name="api_workload"),
    path(
        "workloads/<int:pk>/stop",
        workloads_api.WorkloadStopApi.as_view(),
        name="api_workload_stop",
    ),
    path(
        "workloads/<int:pk>/redeploy",
        workloads_api.WorkloadRedeployApi.as_view(),
        name="api_workload_redeploy",
    ),
    path(
        "image-templates",
        workloads_api.ImageTemplateListApi.as_view(),
        name="api_image_templates",
    ),
]
