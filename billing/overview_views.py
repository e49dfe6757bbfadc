"""Finance's overview page and reconciliation runs, inside the admin site.

Thin views: the overview selector reads, ``reconcile_runs`` writes. Each is wrapped in
``admin.site.admin_view`` (``billing/overview_urls.py``): a visitor who is not active
staff is sent to the sign-in; staff without the permission get 403.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.requests import request_actor
from billing.models import ReconcileRun
from billing.overview import finance_overview
from billing.periods import month_of, parse_month, previous_month
from billing.reconcile_runs import reconcile_run_request

VIEW_PERMISSION = "billing.view_invoice"
RUN_PERMISSION = "billing.add_reconcilerun"


class ReconcileForm(forms.Form):
    month = forms.CharField(label="Month (YYYY-MM)", max_length=7)
    include_stripe = forms.BooleanField(
        label="Compare with Stripe's balance transactions", required=False, initial=True
    )

    def clean_month(self) -> object:
        try:
            return parse_month(self.cleaned_data["month"])
        except ValueError:
            raise forms.ValidationError("Use YYYY-MM, e.g. 2026-10.") from None


def _require(request: HttpRequest, permission: str) -> None:
    if not request_actor(request).has_perm(permission):
        raise PermissionDenied


def _context(request: HttpRequest, title: str) -> dict[str, object]:
    return {**admin.site.each_context(request), "title": title}


def overview(request: HttpRequest) -> HttpResponse:
    _require(request, VIEW_PERMISSION)
    last_month = previous_month(month_of(timezone.now()))
    return TemplateResponse(
        request,
        "admin/finance/overview.html",
        {
            **_context(request, "Finance overview"),
            "overview": finance_overview(),
            "form": ReconcileForm(initial={"month": f"{last_month:%Y-%m}", "include_stripe": True}),
            "can_reconcile": request_actor(request).has_perm(RUN_PERMISSION),
        },
    )


@require_POST
def reconcile_start(request: HttpRequest) -> HttpResponse:
    _require(request, RUN_PERMISSION)
    form = ReconcileForm(request.POST)
    if not form.is_valid():
        return TemplateResponse(
            request,
            "admin/finance/overview.html",
            {
                **_context(request, "Finance overview"),
                "overview": finance_overview(),
                "form": form,
                "can_reconcile": True,
            },
            status=400,
        )
    run = reconcile_run_request(
        month=form.cleaned_data["month"],
        include_stripe=form.cleaned_data["include_stripe"],
        actor=request_actor(request),
    )
    return HttpResponseRedirect(reverse("finance-reconcile-run", args=[run.pk]))


def reconcile_run(request: HttpRequest, pk: int) -> HttpResponse:
    """A run's page; htmx polls it for the progress fragment until the run is done."""
    _require(request, VIEW_PERMISSION)
    run = get_object_or_404(ReconcileRun.objects.select_related("requested_by"), pk=pk)
    template = (
        "admin/finance/reconcile_progress.html"
        if request.headers.get("HX-Request")
        else "admin/finance/reconcile_run.html"
    )
    return TemplateResponse(
        request, template, {**_context(request, f"Reconciliation of {run.month:%Y-%m}"), "run": run}
    )
