"""Pages of the front door: landing, dashboard, health."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from marketplace import health
from marketplace.tenancy import current_membership


def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "marketplace/landing.html")


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    if membership is None:
        return redirect("organization_create")
    return render(request, "marketplace/dashboard.html", {"membership": membership})


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = health.database_ok()
    broker = health.broker_ok()
    status = 200 if database and broker else 503
    return JsonResponse(
        {
            "status": "ok" if status == 200 else "unavailable",
            "database": "ok" if database else "down",
            "broker": "ok" if broker else "down",
        },
        status=status,
    )
