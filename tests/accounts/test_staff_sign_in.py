"""Staff sign-in (issue 16, point 11): staff without organizations land on the admin, and
the password is not asked again right after signing in."""

from __future__ import annotations

from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
    yield_hotp_counters_from_time,
)
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

PASSWORD = "correct-horse-battery"


def _current_code(secret: str) -> str:
    counter = next(iter(yield_hotp_counters_from_time()))
    return format_hotp_value(hotp_value(secret, counter))


def _sign_in_with_totp(client: Client, email: str, secret: str):  # type: ignore[no-untyped-def]
    password_step = client.post(reverse("account_login"), {"login": email, "password": PASSWORD})
    assert (password_step.status_code, password_step.url) == (302, reverse("mfa_authenticate"))
    return client.post(reverse("mfa_authenticate"), {"code": _current_code(secret)}, follow=True)


def test_staff_without_organizations_land_on_the_admin(db):
    secret = generate_totp_secret()
    staff = UserFactory(is_staff=True, is_superuser=True)
    TOTP.activate(staff, secret)

    response = _sign_in_with_totp(Client(), staff.email, secret)

    assert [url for url, _status in response.redirect_chain] == ["/dashboard/", "/admin/"]
    assert response.status_code == 200
    assert b"Hashgrid finance" in response.content


def test_staff_with_an_organization_land_on_its_dashboard(db):
    secret = generate_totp_secret()
    organization = OrganizationFactory(name="Platform Ops", is_buyer=True)
    staff = MembershipFactory(organization=organization, role=Role.OWNER).user
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    TOTP.activate(staff, secret)

    response = _sign_in_with_totp(Client(), staff.email, secret)

    assert [url for url, _status in response.redirect_chain] == ["/dashboard/"]
    assert response.status_code == 200


def test_new_staff_set_up_totp_right_after_signing_in_without_a_password_prompt(db):
    """Staff without TOTP are sent to set it up; the page opens at once instead of asking
    for the password they just typed."""
    staff = UserFactory(is_staff=True, is_superuser=True)
    client = Client()

    response = client.post(
        reverse("account_login"), {"login": staff.email, "password": PASSWORD}, follow=True
    )

    assert [url for url, _status in response.redirect_chain] == [
        "/dashboard/",
        reverse("mfa_activate_totp"),
    ]
    assert response.status_code == 200
    assert response.resolver_match.url_name == "mfa_activate_totp"


def test_a_user_without_organization_still_lands_on_organization_create(db):
    user = UserFactory()
    response = Client().post(
        reverse("account_login"), {"login": user.email, "password": PASSWORD}, follow=True
    )
    assert [url for url, _status in response.redirect_chain] == [
        "/dashboard/",
        reverse("organization_create"),
    ]
