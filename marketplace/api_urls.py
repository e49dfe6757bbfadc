"""Marketplace endpoints under /api/v1/."""

from django.urls import path

from marketplace import api

urlpatterns = [
    path("me", api.MeApi.as_view(), name="api_me"),
    path("organizations", api.OrganizationListApi.as_view(), name="api_organizations"),
    path("api-keys", api.ApiKeyListCreateApi.as_view(), name="api_api_keys"),
    path("api-keys/<int:pk>/revoke", api.ApiKeyRevokeApi.as_view(), name="api_api_key_revoke"),
]
