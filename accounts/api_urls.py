"""Accounts endpoints under /api/v1/: who am I, my organizations, API keys."""

from django.urls import path

from accounts import api

urlpatterns = [
    path("me", api.MeApi.as_view(), name="api_me"),
    path("organizations", api.OrganizationListApi.as_view(), name="api_organizations"),
    path("api-keys", api.ApiKeyListCreateApi.as_view(), name="api_api_keys"),
    path("api-keys/<int:pk>/revoke", api.ApiKeyRevokeApi.as_view(), name="api_api_key_revoke"),
]
