"""Every REST endpoint under /api/v1/, one include per app."""

from django.urls import include, path

urlpatterns = [
    path("", include("accounts.api_urls")),
    path("", include("capacity.api_urls")),
    path("", include("contracts.api_urls")),
    path("", include("marketplace.api_urls")),
]
