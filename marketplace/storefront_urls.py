"""Buyer storefront pages, mounted at /marketplace/ (namespace "marketplace")."""

from django.urls import path

from marketplace import playground_views
from marketplace import storefront_views as views

app_name = "marketplace"

urlpatterns = [
    path("", views.search, name="search"),
    path("offers/<int:pk>/", views.offer_detail, name="offer_detail"),
    path("quote/", views.quote, name="quote"),
    path("checkout/", views.checkout_confirm, name="checkout"),
    path("playground/", playground_views.playground, name="playground"),
    path("playground/key/", playground_views.playground_key, name="playground_key"),
]
