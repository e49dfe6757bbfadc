"""Buyer storefront pages, mounted at /marketplace/ (namespace "marketplace")."""

from django.urls import path

from marketplace import storefront_views as views

app_name = "marketplace"

urlpatterns = [
    path("", views.search, name="search"),
    path("offers/<int:pk>/", views.offer_detail, name="offer_detail"),
    path("quote/", views.quote, name="quote"),
    path("checkout/", views.checkout_confirm, name="checkout"),
]
