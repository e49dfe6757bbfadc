"""Pages of an organization: creating and switching, settings, members, invitations, keys.

Views parse input, check the role (``org_required``), call one service or selector and
render. Objects are fetched with ``get_for_org_or_404`` only, so another tenant's object
answers 404.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services
from accounts.forms import (
    ApiKeyForm,
    InvitationForm,
    OrganizationForm,
    OrganizationSwitchForm,
    RoleForm,
    role_choices,
)
from accounts.models import MANAGER_ROLES, ApiKey, Invitation, Membership, Role
from accounts.pages import render_confirm
from accounts.requests import request_actor, request_membership
from accounts.tenancy import (
    get_for_org_or_404,
    memberships_of,
    org_required,
    switch_organization,
)

PAGE_SIZE = 25


def _page(request: HttpRequest, queryset: QuerySet[Any]) -> Page:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def _flash_refusal(request: HttpRequest, error: ValidationError) -> None:
    for text in error.messages:
        messages.error(request, text)


# -- organizations -----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def organization_create(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None, initial={"is_buyer": True})
    if request.method == "POST" and form.is_valid():
        try:
            organization = services.organization_create(
                name=form.cleaned_data["name"],
                is_buyer=form.cleaned_data["is_buyer"],
                is_partner=form.cleaned_data["is_partner"],
                creator=request_actor(request),
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            switch_organization(request, organization)
            messages.success(request, f"{organization.name} is ready. You are its owner.")
            return redirect("dashboard")
    return render(
        request,
        "accounts/organization_create.html",
        {
            "form": form,
            "has_organizations": memberships_of(request.user).exists(),
            "invitations": selectors.pending_invitations_for_user(user=request_actor(request)),
        },
    )


@login_required
@require_POST
def organization_switch(request: HttpRequest) -> HttpResponse:
    form = OrganizationSwitchForm(request.POST)
    if not form.is_valid():
        raise Http404("No such organization")
    membership = get_object_or_404(
        memberships_of(request.user), organization_id=form.cleaned_data["organization"]
    )
    switch_organization(request, membership.organization)
    next_url = form.cleaned_data["next"]
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(next_url)
    return redirect("dashboard")


@org_required()
@require_http_methods(["GET", "POST"])
def organization_settings(request: HttpRequest) -> HttpResponse:
    membership = request_membership(request)
    organization = membership.organization
    if request.method == "POST" and not membership.can_manage:
        raise PermissionDenied("Only owners and admins can change the organization.")
    form = OrganizationForm(
        request.POST or None,
        initial={
            "name": organization.name,
            "is_buyer": organization.is_buyer,
            "is_partner": organization.is_partner,
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.organization_update(
                organization=organization,
                name=form.cleaned_data["name"],
                is_buyer=form.cleaned_data["is_buyer"],
                is_partner=form.cleaned_data["is_partner"],
                actor=request_actor(request),
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, "Organization settings saved.")
            return redirect("organization_settings")
    return render(
        request,
        "accounts/organization_settings.html",
        {"form": form, "organization": organization, "membership": membership},
    )


# -- members and invitations -------------------------------------------------------------


def _members_page(
    request: HttpRequest, *, invite_form: InvitationForm | None = None
) -> HttpResponse:
    membership = request_membership(request)
    organization = membership.organization
    if invite_form is None and membership.can_manage:
        invite_form = InvitationForm(actor_role=membership.role)
    return render(
        request,
        "accounts/organization_members.html",
        {
            "membership": membership,
            "organization": organization,
            "page_obj": _page(request, selectors.organization_members(organization=organization)),
            "invitations": selectors.pending_invitations(organization=organization),
            "invite_form": invite_form,
            "role_choices": role_choices(actor_role=membership.role),
        },
    )


@org_required()
@require_GET
def organization_members(request: HttpRequest) -> HttpResponse:
    return _members_page(request)


@org_required(roles=MANAGER_ROLES)
@require_http_methods(["GET", "POST"])
def membership_update(request: HttpRequest, pk: int) -> HttpResponse:
    actor = request_membership(request)
    target = get_for_org_or_404(Membership.objects.select_related("user"), request, pk=pk)
    form = RoleForm(request.POST or None, actor_role=actor.role, initial={"role": target.role})
    if request.method == "POST" and form.is_valid():
        try:
            services.membership_change_role(
                membership=target,
                role=form.cleaned_data["role"],
                actor=request_actor(request),
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            role_label = Role(form.cleaned_data["role"]).label.lower()
            messages.success(request, f"{target.user.email} is now {role_label}.")
            return redirect("organization_members")
    return render(request, "accounts/membership_update.html", {"form": form, "target": target})


@org_required(roles=MANAGER_ROLES)
@require_http_methods(["GET", "POST"])
def membership_remove(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_for_org_or_404(
        Membership.objects.select_related("user", "organization"), request, pk=pk
    )
    if request.method == "GET":
        return render_confirm(
            request,
            title=f"Remove {target.user.email}?",
            message=f"They lose access to {target.organization.name} immediately. "
            + _keys_stop_sentence(
                selectors.api_keys_created_by(organization=target.organization, user=target.user)
            ),
            action_label="Remove member",
            cancel_url=reverse("organization_members"),
            danger=True,
        )
    try:
        revoked = services.membership_remove(membership=target, actor=request_actor(request))
    except ValidationError as error:
        _flash_refusal(request, error)
    else:
        removed = f"{target.user.email} was removed from the organization."
        messages.success(request, f"{removed} {_keys_revoked_sentence(revoked)}".strip())
    return redirect("organization_members")


def _key_names(api_keys: list[ApiKey]) -> str:
    return ", ".join(f"“{api_key.name}” ({api_key.prefix}…)" for api_key in api_keys)


def _keys_stop_sentence(api_keys: QuerySet[ApiKey]) -> str:
    """What removal does to the member's API keys, for the confirmation page."""
    keys = list(api_keys)
    if not keys:
        return "They have created no API key that is still active."
    return (
        f"The API keys they created are revoked with them and refused from now on: "
        f"{_key_names(keys)}."
    )


def _keys_revoked_sentence(revoked: list[ApiKey]) -> str:
    return f"Their API keys were revoked: {_key_names(revoked)}." if revoked else ""


@org_required(roles=MANAGER_ROLES)
@require_POST
def invitation_create(request: HttpRequest) -> HttpResponse:
    membership = request_membership(request)
    form = InvitationForm(request.POST, actor_role=membership.role)
    if form.is_valid():
        try:
            invitation, _token = services.invitation_create(
                organization=membership.organization,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                invited_by=request_actor(request),
            )
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("organization_members")
    return _members_page(request, invite_form=form)


@org_required(roles=MANAGER_ROLES)
@require_http_methods(["GET", "POST"])
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invitation = get_for_org_or_404(
        Invitation.objects.select_related("organization"), request, pk=pk
    )
    if request.method == "GET":
        return render_confirm(
            request,
            title=f"Revoke the invitation to {invitation.email}?",
            message="The link in the email stops working. You can invite them again later.",
            action_label="Revoke invitation",
            cancel_url=reverse("organization_members"),
            danger=True,
        )
    try:
        services.invitation_revoke(invitation=invitation, actor=request_actor(request))
    except ValidationError as error:
        _flash_refusal(request, error)
    else:
        messages.success(request, f"The invitation to {invitation.email} was revoked.")
    return redirect("organization_members")


@login_required
@require_http_methods(["GET", "POST"])
def invitation_respond(request: HttpRequest, token: str) -> HttpResponse:
    """Accept or decline an invitation: only its (verified) addressee can."""
    invitation = selectors.invitation_for_token(token=token)
    if invitation is None:
        raise Http404("No such invitation")
    user = request_actor(request)
    problem = services.invitation_problem(invitation=invitation, user=user)
    if request.method == "POST" and problem is None:
        action = request.POST.get("action")
        try:
            if action == "accept":
                membership = services.invitation_accept(invitation=invitation, user=user)
                switch_organization(request, membership.organization)
                messages.success(request, f"Welcome to {membership.organization.name}.")
                return redirect("dashboard")
            if action == "decline":
                services.invitation_decline(invitation=invitation, user=user)
                messages.info(
                    request, f"You declined the invitation to {invitation.organization.name}."
                )
                return redirect("dashboard")
            problem = "Choose accept or decline."
        except ValidationError as error:
            problem = " ".join(error.messages)
    status = 200
    if problem is not None and request.method == "POST":
        status = 400
    elif problem is not None:
        status = (
            403
            if invitation.status == Invitation.Status.PENDING and not invitation.is_expired
            else 410
        )
    return render(
        request,
        "accounts/invitation_respond.html",
        {"invitation": invitation, "problem": problem},
        status=status,
    )


# -- API keys ----------------------------------------------------------------------------


@org_required()
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """List the keys; a manager's POST creates one and shows its secret on this response only."""
    membership = request_membership(request)
    organization = membership.organization
    form = ApiKeyForm(request.POST or None) if membership.can_manage else None
    new_key: str | None = None
    created: ApiKey | None = None
    if request.method == "POST":
        if form is None:
            raise PermissionDenied("Only owners and admins can create API keys.")
        if form.is_valid():
            try:
                created, new_key = services.api_key_create(
                    organization=organization,
                    name=form.cleaned_data["name"],
                    created_by=request_actor(request),
                )
            except ValidationError as error:
                form.add_error(None, error)
            else:
                form = ApiKeyForm()
    page = _page(request, selectors.api_keys(organization=organization))
    uses = selectors.api_key_uses(api_key_ids=[api_key.pk for api_key in page.object_list])
    for api_key in page.object_list:
        api_key.serves = uses.get(api_key.pk)
    return render(
        request,
        "accounts/api_keys.html",
        {
            "membership": membership,
            "form": form,
            "new_key": new_key,
            "created": created,
            "page_obj": page,
        },
    )


@org_required(roles=MANAGER_ROLES)
@require_http_methods(["GET", "POST"])
def api_key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    api_key = get_for_org_or_404(ApiKey.objects.select_related("organization"), request, pk=pk)
    if request.method == "GET":
        if not api_key.is_active:
            messages.info(request, f"The key “{api_key.name}” is already revoked.")
            return redirect("api_keys")
        return render_confirm(
            request,
            title=f"Revoke the API key “{api_key.name}”?",
            message=(
                f"Requests with the key {api_key.prefix}… will be refused from now on. "
                "This cannot be undone."
            ),
            action_label="Revoke key",
            cancel_url=reverse("api_keys"),
            danger=True,
        )
    try:
        services.api_key_revoke(api_key=api_key, actor=request_actor(request))
    except ValidationError as error:
        _flash_refusal(request, error)
    else:
        messages.success(request, f"The API key “{api_key.name}” was revoked.")
    return redirect("api_keys")
