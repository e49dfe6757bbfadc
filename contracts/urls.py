"""Buyer pages for contracts, mounted at /contracts/ (namespace "contracts")."""

from django.urls import path

from contracts import views
from contracts import workload_views as workloads

app_name = "contracts"

urlpatterns = [
    path("", views.contract_list, name="list"),
    path("usage/", views.usage_overview, name="usage"),
    path("<int:pk>/", views.contract_detail, name="detail"),
    path("<int:pk>/cancel/", views.contract_cancel, name="cancel"),
    path("<int:pk>/on-demand/", views.on_demand_enable, name="on_demand"),
    path("<int:pk>/lines/<int:line_pk>/api-keys/", views.line_api_key_create, name="line_api_key"),
    path("<int:pk>/inference-cap/", views.inference_cap_update, name="inference_cap"),
    path("<int:pk>/api-keys/<int:key_pk>/", views.line_api_key_detail, name="line_api_key_detail"),
    path("instances/", workloads.instance_list, name="instances"),
    path(
        "<int:pk>/lines/<int:line_pk>/instances/new/",
        workloads.instance_start,
        name="instance_start",
    ),
    path(
        "<int:pk>/lines/<int:line_pk>/containers/new/",
        workloads.container_create,
        name="container_create",
    ),
    path(
        "<int:pk>/lines/<int:line_pk>/deployments/new/",
        workloads.deployment_create,
        name="deployment_create",
    ),
    path("workloads/<int:pk>/", workloads.workload_detail, name="workload"),
    path("workloads/<int:pk>/stop/", workloads.workload_stop, name="workload_stop"),
    path("workloads/<int:pk>/redeploy/", workloads.workload_redeploy, name="workload_redeploy"),
]
