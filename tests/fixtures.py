"""Shared fixtures: people and organizations built with factories."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory


@pytest.fixture
def buyer_org(db):
    return OrganizationFactory(name="Acme Vision", is_buyer=True, is_partner=False)


@pytest.fixture
def partner_org(db):
    return OrganizationFactory(name="Andes Hash", is_buyer=False, is_partner=True)


@pytest.fixture
def other_org(db):
    return OrganizationFactory(name="Other Tenant", is_buyer=True, is_partner=True)


@pytest.fixture
def buyer_owner(buyer_org):
    return MembershipFactory(organization=buyer_org, role=Role.OWNER).user


@pytest.fixture
def partner_owner(partner_org):
    return MembershipFactory(organization=partner_org, role=Role.OWNER).user


@pytest.fixture
def other_owner(other_org):
    return MembershipFactory(organization=other_org, role=Role.OWNER).user


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def buyer_client(buyer_owner) -> Client:
    return client_for(buyer_owner)


@pytest.fixture
def partner_client(partner_owner) -> Client:
    return client_for(partner_owner)


@pytest.fixture
def other_client(other_owner) -> Client:
    return client_for(other_owner)


@pytest.fixture
def user_factory(db):
    return UserFactory


@pytest.fixture
def staff_client(db) -> Client:
    """A staff superuser with TOTP set up (staff without MFA are sent to set it up)."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    staff = UserFactory(is_staff=True, is_superuser=True)
    TOTP.activate(staff, generate_totp_secret())
    return client_for(staff)
