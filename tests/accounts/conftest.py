"""Helpers for the accounts tests."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from accounts.models import Membership


@pytest.fixture(autouse=True)
def _fresh_cache():
    """allauth keeps rate limits in the cache: start every test with none spent."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def owner_membership(buyer_org, buyer_owner) -> Membership:
    return Membership.objects.get(organization=buyer_org, user=buyer_owner)
