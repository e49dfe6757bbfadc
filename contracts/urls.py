"""Buyer pages for contracts, mounted at /contracts/ (namespace "contracts")."""

from django.urls import path

from contracts import views

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
]
