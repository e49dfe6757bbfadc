"""Tenant scoping: the one mechanism every view and API endpoint uses.

The current organization belongs to the request (``current_organization(request)``),
chosen by the organization switcher and remembered in the session; API keys pin it to
the key's organization (``api_organization(request)``). Views reach tenant data only through
``TenantQuerySet.for_organization`` or :func:`get_for_org_or_404`, so an object of
another organization answers 404 — never 403, which would confirm that it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from rest_framework import permissions

from accounts.models import ApiKey, Membership, Organization, TenantQuerySet

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

SESSION_KEY = "current_organization_id"

M = TypeVar("M", bound=Model)


def memberships_of(user: Any) -> QuerySet[Membership]:
    """A user's memberships with their organizations, by organization name."""
    if not user.is_authenticated:
        return Membership.objects.none()
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name", "pk")
    )


def request_memberships(request: HttpRequest) -> list[Membership]:
    """The signed-in user's memberships (``memberships_of``), read once per request: the
    current organization and the switcher both use them."""
    cached = getattr(request, _MEMBERSHIPS_ATTR, None)
    if cached is None:
        cached = list(memberships_of(request.user))
        setattr(request, _MEMBERSHIPS_ATTR, cached)
    return cached


def _resolve_membership(request: HttpRequest) -> Membership | None:
    memberships = request_memberships(request)
    wanted = request.session.get(SESSION_KEY)
    for membership in memberships:
        if membership.organization_id == wanted:
            return membership
    chosen = min(memberships, key=lambda m: (m.created_at, m.pk), default=None)
    if chosen is not None:
        request.session[SESSION_KEY] = chosen.organization_id
    return chosen


_UNSET = object()
_CACHE_ATTR = "_hashgrid_membership"
_MEMBERSHIPS_ATTR = "_hashgrid_memberships"


class CurrentOrganizationMiddleware:
    """Resolve the current membership once per request, on first use.

    Views call :func:`current_membership` / :func:`current_organization`; the lookup (one
    query) happens only for requests that need it and is cached on the request.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        setattr(request, _CACHE_ATTR, _UNSET)
        setattr(request, _MEMBERSHIPS_ATTR, None)
        return self.get_response(request)


def current_membership(request: HttpRequest) -> Membership | None:
    cached = getattr(request, _CACHE_ATTR, _UNSET)
    if cached is _UNSET:
        cached = _resolve_membership(request)
        setattr(request, _CACHE_ATTR, cached)
    return cached  # type: ignore[return-value]


def current_organization(request: HttpRequest) -> Organization | None:
    membership = current_membership(request)
    return membership.organization if membership is not None else None


def switch_organization(request: HttpRequest, organization: Organization) -> None:
    """Make ``organization`` current. The caller has checked the membership exists."""
    request.session[SESSION_KEY] = organization.pk
    setattr(request, _CACHE_ATTR, _UNSET)
    setattr(request, _MEMBERSHIPS_ATTR, None)


def organization_context(request: HttpRequest) -> dict[str, Any]:
    """Template context: the current organization and the switcher's choices."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {
        "current_membership": current_membership(request),
        "current_organization": current_organization(request),
        "user_memberships": request_memberships(request),
    }


def scoped(queryset: QuerySet[M], request: HttpRequest) -> QuerySet[M]:
    """Restrict a tenant queryset to the request's organization (none if it has none)."""
    if not isinstance(queryset, TenantQuerySet):
        raise TypeError(f"{queryset.model.__name__} is not tenant-scoped (use TenantQuerySet)")
    return queryset.for_organization(current_organization(request))  # type: ignore[return-value]


def get_for_org_or_404(queryset: QuerySet[M], request: HttpRequest, **lookup: Any) -> M:
    """Fetch one object of the current organization, or 404 — also for other tenants' objects."""
    return get_object_or_404(scoped(queryset, request), **lookup)


def org_required(
    roles: Iterable[str] | None = None, *, partner: bool = False, buyer: bool = False
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """View decorator: signed in, with a current organization (of the right kind and role).

    No organization yet → the create-organization page. Wrong kind → 404 (the page does
    not exist for this tenant). Insufficient role → 403: the user may see the
    organization, just not change it.
    """
    allowed = frozenset(roles) if roles is not None else None

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = current_membership(request)
            if membership is None:
                return redirect("organization_create")
            organization = membership.organization
            if (partner and not organization.is_partner) or (buyer and not organization.is_buyer):
                raise Http404("Not available for this organization")
            if allowed is not None and membership.role not in allowed:
                raise PermissionDenied("Your role does not allow this action")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class HasOrganization(permissions.BasePermission):
    """DRF permission: the caller acts for an organization (session member or API key)."""

    message = "No organization: create one or use an organization API key."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.user.is_authenticated and api_organization(request) is not None


def api_organization(request: Request) -> Organization | None:
    """The organization an API request acts for: the API key's, else the session's."""
    key_organization = getattr(request.auth, "organization", None)
    if key_organization is not None:
        return key_organization  # type: ignore[no-any-return]
    return current_organization(request._request)


def api_membership_role(request: Request) -> str | None:
    """Role for an API request: a key's ``acting_role`` (a member at most, never above its
    creator's current role), else the session member's role."""
    if isinstance(request.auth, ApiKey):
        return request.auth.acting_role
    membership = current_membership(request._request)
    return membership.role if membership is not None else None


def api_scoped(queryset: QuerySet[M], request: Request) -> QuerySet[M]:
    if not isinstance(queryset, TenantQuerySet):
        raise TypeError(f"{queryset.model.__name__} is not tenant-scoped (use TenantQuerySet)")
    return queryset.for_organization(api_organization(request))  # type: ignore[return-value]
