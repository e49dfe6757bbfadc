"""Input forms of the organization pages. They validate input; services do the writing."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from accounts.models import ApiKey, Invitation, Organization, Role

NO_KIND_ERROR = "Choose at least one: buyer, partner, or both."


def role_choices(*, actor_role: str) -> list[tuple[str, str]]:
    """Roles ``actor_role`` may hand out: only owners grant the owner role."""
    if actor_role == Role.OWNER:
        return list(Role.choices)
    return [(value, label) for value, label in Role.choices if value != Role.OWNER]


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=Organization._meta.get_field("name").max_length)
    is_buyer = forms.BooleanField(
        label="Buyer", required=False, help_text="Reserves GPUs and buys inference."
    )
    is_partner = forms.BooleanField(
        label="Partner",
        required=False,
        help_text="Operates mining sites and lists their GPU capacity.",
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Enter a name.")
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not cleaned.get("is_buyer") and not cleaned.get("is_partner"):
            raise forms.ValidationError(NO_KIND_ERROR, code="no_kind")
        return cleaned


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)

    def __init__(self, *args: Any, actor_role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["role"]).choices = role_choices(actor_role=actor_role)


class InvitationForm(forms.Form):
    # The column's length: a longer address would otherwise reach the database (a 500).
    email = forms.EmailField(max_length=Invitation._meta.get_field("email").max_length)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args: Any, actor_role: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["role"]).choices = role_choices(actor_role=actor_role)


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        help_text="What uses this key, e.g. “inference gateway (production)”.",
    )


class OrganizationSwitchForm(forms.Form):
    organization = forms.IntegerField(min_value=1)
    next = forms.CharField(required=False)
