"""The front door's endpoints under /api/v1/: search offers, quote, reserve."""

from django.urls import path

from marketplace import api

urlpatterns = [
    path("market/offers", api.OfferSearchApi.as_view(), name="api_market_offers"),
    path("market/quote", api.QuoteApi.as_view(), name="api_market_quote"),
    path("reservations", api.ReservationCreateApi.as_view(), name="api_reservations"),
]
