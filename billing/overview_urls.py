"""``/admin/finance/``: finance's overview and reconciliation runs, behind the admin's
sign-in (``admin.site.admin_view``)."""

from django.contrib import admin
from django.urls import path

from billing import overview_views

urlpatterns = [
    path("", admin.site.admin_view(overview_views.overview), name="finance-overview"),
    path(
        "reconcile/",
        admin.site.admin_view(overview_views.reconcile_start),
        name="finance-reconcile-start",
    ),
    path(
        "reconcile/<int:pk>/",
        admin.site.admin_view(overview_views.reconcile_run),
        name="finance-reconcile-run",
    ),
]
