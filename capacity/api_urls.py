"""Capacity endpoints under /api/v1/."""

from django.urls import path

from capacity import api

urlpatterns = [
    path("sites", api.SiteListCreateApi.as_view(), name="api_sites"),
    path("sites/<int:pk>", api.SiteDetailApi.as_view(), name="api_site"),
    path("nodes", api.NodeListCreateApi.as_view(), name="api_nodes"),
    path("nodes/<int:pk>", api.NodeDetailApi.as_view(), name="api_node"),
    path(
        "nodes/<int:pk>/enrollment-code",
        api.NodeEnrollmentCodeApi.as_view(),
        name="api_node_enrollment_code",
    ),
    path("nodes/<int:pk>/windows", api.NodeWindowListCreateApi.as_view(), name="api_node_windows"),
    path("windows/<int:pk>", api.WindowDetailApi.as_view(), name="api_window"),
    path("offers", api.OfferListCreateApi.as_view(), name="api_offers"),
    path("offers/<int:pk>", api.OfferDetailApi.as_view(), name="api_offer"),
    path("agents/enroll", api.AgentEnrollApi.as_view(), name="api_agents_enroll"),
]
