"""Demo people for `make run`: users and their organizations, created once."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.db import transaction

from accounts.models import Membership, Organization, Role, User
from devtools.demo import DEMO_PASSWORD


def _user(email: str, *, first_name: str, last_name: str, is_staff: bool = False) -> User:
    user, created = User.objects.get_or_create(
        email=email,
        defaults={
            "username": email.split("@")[0],
            "first_name": first_name,
            "last_name": last_name,
            "is_staff": is_staff,
            "is_superuser": is_staff,
        },
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
        EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


@transaction.atomic
def seed_people() -> dict[str, Organization]:
    buyer = _user("buyer@hashgrid.test", first_name="Giulia", last_name="Ferri")
    partner = _user("partner@hashgrid.test", first_name="Diego", last_name="Rojas")
    _user("finance@hashgrid.test", first_name="Amira", last_name="Haddad", is_staff=True)

    acme, _ = Organization.objects.get_or_create(
        slug="acme-vision", defaults={"name": "Acme Vision", "is_buyer": True, "is_partner": False}
    )
    andes, _ = Organization.objects.get_or_create(
        slug="andes-hash", defaults={"name": "Andes Hash", "is_buyer": False, "is_partner": True}
    )
    Membership.objects.get_or_create(user=buyer, organization=acme, defaults={"role": Role.OWNER})
    Membership.objects.get_or_create(
        user=partner, organization=andes, defaults={"role": Role.OWNER}
    )
    return {"buyer": acme, "partner": andes}
