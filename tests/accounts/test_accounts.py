"""Account rules configured in settings: email verification, staff MFA, admin sign-in."""

from __future__ import annotations

import re

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.core import mail
from django.urls import reverse

from accounts.models import User
from tests.factories import UserFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-unusual-passphrase-42"


def test_sign_up_requires_email_verification(client):
    signup = client.post(
        reverse("account_signup"),
        {"email": "nina@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )

    assert signup.status_code == 302
    assert signup.url == reverse("account_email_verification_sent")
    assert "_auth_user_id" not in client.session
    user = User.objects.get(email="nina@example.com")
    assert user.emailaddress_set.get().verified is False
    assert len(mail.outbox) == 1

    login = client.post(
        reverse("account_login"), {"login": "nina@example.com", "password": PASSWORD}
    )

    assert login.status_code == 302
    assert login.url == reverse("account_email_verification_sent")
    assert "_auth_user_id" not in client.session


def test_after_verification_a_user_without_organization_lands_on_organization_create(client):
    client.post(
        reverse("account_signup"),
        {"email": "nina@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    confirm_url = re.search(
        r"http://testserver(/accounts/confirm-email/\S+/)", mail.outbox[0].body
    ).group(1)

    response = client.post(confirm_url, follow=True)

    assert response.redirect_chain[-1] == (reverse("organization_create"), 302)
    assert response.status_code == 200
    assert User.objects.get(email="nina@example.com").emailaddress_set.get().verified is True


@pytest.mark.parametrize("path", ["/admin/", "/dashboard/"])
def test_staff_without_totp_must_set_it_up(path):
    staff = UserFactory(is_staff=True, is_superuser=True)

    response = client_for(staff).get(path)

    assert response.status_code == 302
    assert response.url == reverse("mfa_activate_totp")


def test_staff_with_totp_reaches_the_admin():
    staff = UserFactory(is_staff=True, is_superuser=True)
    TOTP.activate(staff, generate_totp_secret())

    response = client_for(staff).get("/admin/")

    assert response.status_code == 200
    assert b"Hashgrid finance" in response.content


def test_non_staff_are_not_asked_for_totp(buyer_client):
    assert buyer_client.get("/dashboard/").status_code == 200


def test_admin_login_goes_through_allauth(client):
    response = client.get("/admin/login/")

    assert response.status_code == 302
    assert response.url == f"{reverse('account_login')}?next=%2Fadmin%2Flogin%2F"
