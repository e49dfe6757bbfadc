"""Billing pages, mounted at /billing/ (namespace "billing")."""

from django.urls import path

from billing import views
from billing.settlement import views as settlement_views

app_name = "billing"

urlpatterns = [
    path("invoices/", views.invoice_list, name="invoices"),
    path("invoices/<int:pk>/", views.invoice_detail, name="invoice_detail"),
    path("invoices/<int:pk>/print/", views.invoice_print, name="invoice_print"),
    path("invoices/<int:pk>/csv/", views.invoice_csv, name="invoice_csv"),
    path("invoices/<int:pk>/pdf/", views.invoice_pdf_download, name="invoice_pdf"),
    path("invoices/<int:pk>/pay/", views.invoice_pay, name="invoice_pay"),
    path(
        "invoices/<int:pk>/payment-refresh/",
        views.invoice_payment_refresh,
        name="invoice_payment_refresh",
    ),
    path("payment-method/", views.payment_method, name="payment_method"),
    path("payment-method/confirm/", views.payment_method_confirm, name="payment_method_confirm"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe_webhook"),
    # Partners: earnings, statements, payouts (Stripe Connect onboarding).
    path("earnings/", settlement_views.earnings, name="earnings"),
    path("earnings/daily/", settlement_views.earnings_daily, name="earnings_daily"),
    path("earnings/daily/csv/", settlement_views.earnings_daily_csv, name="earnings_daily_csv"),
    path(
        "earnings/statements/<int:pk>/",
        settlement_views.statement_detail,
        name="statement_detail",
    ),
    path("earnings/statements/<int:pk>/csv/", settlement_views.statement_csv, name="statement_csv"),
    path("earnings/payouts/setup/", settlement_views.payouts_setup, name="payouts_setup"),
    path("earnings/payouts/return/", settlement_views.payouts_return, name="payouts_return"),
    path("earnings/payouts/refresh/", settlement_views.payouts_refresh, name="payouts_refresh"),
]
