"""Whom a request acts for (``accounts.requests``): the signed-in user, the current
membership and organization, or a refusal where a view has none."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from rest_framework.request import ForcedAuthentication, Request

from accounts.requests import request_actor, request_membership, request_organization
from tests.factories import ApiKeyFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def _page_request(user):
    request = RequestFactory().get("/")
    request.user = user
    request.session = SessionStore()
    return request


def test_a_member_acts_as_themselves_for_their_organization(buyer_org, buyer_owner):
    request = _page_request(buyer_owner)

    assert request_actor(request) == buyer_owner
    assert request_membership(request).organization == buyer_org
    assert request_organization(request) == buyer_org


def test_an_api_key_acts_for_its_own_organization(buyer_org, buyer_owner):
    key = ApiKeyFactory(organization=OrganizationFactory(), created_by=buyer_owner)
    request = Request(
        _page_request(buyer_owner), authenticators=[ForcedAuthentication(buyer_owner, key)]
    )

    assert request_actor(request) == buyer_owner
    assert request_organization(request) == key.organization != buyer_org


def test_no_user_or_no_organization_is_refused():
    anonymous = _page_request(AnonymousUser())
    lone = _page_request(UserFactory())

    with pytest.raises(PermissionDenied):
        request_actor(anonymous)
    with pytest.raises(PermissionDenied):
        request_membership(lone)
    with pytest.raises(PermissionDenied):
        request_organization(lone)
