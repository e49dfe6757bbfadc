"""Typed access to whom a request acts for: its user, membership and organization.

Pages behind ``org_required`` (or ``login_required``) and API views behind
``IsAuthenticated``/``HasOrganization`` always have a signed-in user and an organization;
these helpers say so in the types, so a view hands services a ``User`` and an
``Organization`` without an ``assert`` or a ``type: ignore``. Reached where that does not
hold (a view that lost its decorator), they refuse the request rather than pass on an
anonymous user or ``None``.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from rest_framework.request import Request

from accounts.models import Membership, Organization, User
from accounts.tenancy import api_organization, current_membership, current_organization


def request_actor(request: HttpRequest | Request) -> User:
    """The signed-in user making the request: the actor services record."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied("Sign in first.")
    return user


def request_membership(request: HttpRequest) -> Membership:
    """The current membership of a page behind ``org_required``."""
    membership = current_membership(request)
    if membership is None:
        raise PermissionDenied("Choose an organization first.")
    return membership


def request_organization(request: HttpRequest | Request) -> Organization:
    """The organization the request acts for: for an API call the key's, else the
    session's current one (``accounts.tenancy``)."""
    if isinstance(request, Request):
        organization = api_organization(request)
    else:
        organization = current_organization(request)
    if organization is None:
        raise PermissionDenied("Choose an organization first.")
    return organization
