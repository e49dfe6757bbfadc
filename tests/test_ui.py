"""The shared UI: layout, navigation, components, error pages and static files."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest
from django import forms
from django.core.management import call_command
from django.core.paginator import Paginator
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.urls import NoReverseMatch

from accounts.models import Role
from marketplace import navigation
from tests.factories import MembershipFactory
from tests.fixtures import client_for

pytestmark = pytest.mark.django_db


def _primary_nav(html: str) -> str:
    match = re.search(r'<nav class="primary-nav" aria-label="Primary">(.*?)</nav>', html, re.S)
    return match.group(1) if match else ""


def _nav_labels(html: str) -> list[str]:
    return re.findall(r'class="nav-link[^"]*"[^>]*>([^<]+)</a>', _primary_nav(html))


@pytest.fixture
def every_url_exists(monkeypatch):
    """Pretend every navigation entry's URL exists, whatever has shipped so far."""
    monkeypatch.setattr(
        navigation, "reverse", lambda name: "/" + name.replace(":", "/").replace("_", "-") + "/"
    )
    # A cache of its own: the pretended URLs must not outlive the test (the process's
    # later pages would link to them).
    monkeypatch.setattr(navigation, "_URLS", {})


# --- landing ------------------------------------------------------------------------


def test_landing_speaks_to_buyers_and_partners(client):
    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-cta="buyer"' in html
    assert 'data-cta="partner"' in html
    assert 'href="/accounts/signup/"' in html
    assert 'href="/accounts/login/"' in html
    for phrase in ("North America", "Middle East", "South America", "East Africa"):
        assert phrase in html
    assert "per million tokens" in html
    assert "Stripe" in html
    assert 'class="skip-link" href="#main"' in html
    assert '<main id="main"' in html


def test_landing_for_a_signed_in_user_links_to_the_dashboard(buyer_client):
    html = buyer_client.get("/").content.decode()

    assert "Go to your dashboard" in html
    assert 'data-cta="buyer"' not in html


# --- navigation ---------------------------------------------------------------------


def test_partner_entries_are_shown_only_to_partner_organizations(
    every_url_exists, buyer_client, partner_client
):
    buyer_labels = _nav_labels(buyer_client.get("/dashboard/").content.decode())
    partner_labels = _nav_labels(partner_client.get("/dashboard/").content.decode())

    assert buyer_labels == [
        "Dashboard",
        "Marketplace",
        "Contracts",
        "Instances",
        "Usage",
        "Playground",
        "Invoices",
        "API keys",
        "Team",
    ]
    assert partner_labels == ["Dashboard", "Sites", "Nodes", "Offers", "Earnings", "Team"]


def test_an_organization_that_buys_and_sells_sees_both_sides(every_url_exists, other_client):
    labels = _nav_labels(other_client.get("/dashboard/").content.decode())

    assert "Marketplace" in labels
    assert "Sites" in labels
    assert "Admin" not in labels


def test_staff_see_the_admin_entry(every_url_exists, buyer_owner):
    # Staff must enroll MFA before any page renders (StaffMfaRequiredMiddleware), so this
    # checks the navigation itself rather than a rendered page.
    buyer_owner.is_staff = True
    request = RequestFactory().get("/dashboard/")
    request.user = buyer_owner
    request.session = {}

    labels = [link.label for link in navigation.build_navigation(request)]

    assert labels[-1] == "Admin"


def test_entries_whose_url_does_not_exist_yet_are_skipped(monkeypatch, buyer_owner):
    def reverse(name):
        if name == "contracts:list":
            raise NoReverseMatch(name)
        return f"/{name}/"

    monkeypatch.setattr(navigation, "reverse", reverse)
    monkeypatch.setattr(navigation, "_URLS", {})  # what the process resolved so far
    request = RequestFactory().get("/")
    request.user = buyer_owner
    request.session = {}

    labels = [link.label for link in navigation.build_navigation(request)]

    assert "Contracts" not in labels
    assert "Marketplace" in labels


def test_the_current_page_is_marked_active(buyer_client):
    nav = _primary_nav(buyer_client.get("/dashboard/").content.decode())

    assert re.search(r'href="/dashboard/"[^>]*aria-current="page"[^>]*>Dashboard<', nav)
    assert nav.count('aria-current="page"') == 1


def test_navigation_context_processor_returns_links(buyer_owner):
    request = RequestFactory().get("/dashboard/")
    request.user = buyer_owner
    request.session = {}

    context = navigation.navigation(request)

    assert context["nav_links"][0].label == "Dashboard"
    assert context["nav_links"][0].active


def test_anonymous_visitors_get_no_primary_navigation(client):
    html = client.get("/").content.decode()

    assert _primary_nav(html) == ""
    assert "Sign in" in html


def test_organization_switcher_lists_every_membership(buyer_owner, partner_org):
    MembershipFactory(user=buyer_owner, organization=partner_org, role=Role.VIEWER)

    html = client_for(buyer_owner).get("/dashboard/?tab=x").content.decode()

    assert 'action="/organizations/switch/"' in html
    assert 'name="next" value="/dashboard/?tab=x"' in html
    assert f'name="organization" value="{partner_org.pk}"' in html
    assert "Andes Hash" in html


def test_single_membership_shows_the_organization_without_a_switcher(buyer_client):
    html = buyer_client.get("/dashboard/").content.decode()

    assert "org-chip-static" in html
    assert 'action="/organizations/switch/"' not in html


# --- dashboard ----------------------------------------------------------------------


def test_dashboard_shows_organization_kind_and_role(buyer_client):
    html = buyer_client.get("/dashboard/").content.decode()

    assert "<h1>Acme Vision</h1>" in html
    assert 'data-section="buyer"' in html
    assert 'data-section="partner"' not in html
    assert "Owner" in html


def test_partner_dashboard_invites_to_register_a_site(partner_client):
    html = partner_client.get("/dashboard/").content.decode()

    assert 'data-section="partner"' in html
    assert 'data-section="buyer"' not in html
    assert 'href="/partner/sites/"' in html


# --- error pages --------------------------------------------------------------------


def test_404_page_uses_the_product_layout(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    html = response.content.decode()
    assert "We couldn't find that page" in html
    assert 'class="topbar"' in html
    assert 'class="site-footer"' in html


def test_403_and_500_templates_render_without_a_request():
    assert "permission" in render_to_string("403.html")
    assert "Something went wrong" in render_to_string("500.html")


# --- allauth pages in the product layout ----------------------------------------------


@pytest.mark.parametrize(
    "path", ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"]
)
def test_account_entrance_pages_use_the_product_layout(client, path):
    response = client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="topbar"' in html
    assert 'class="auth-card"' in html
    assert 'class="btn btn-primary' in html


@pytest.mark.parametrize("path", ["/accounts/email/", "/accounts/2fa/"])
def test_account_settings_pages_use_the_settings_layout(buyer_client, path):
    response = buyer_client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="settings-nav"' in html
    assert 'aria-current="page"' in html


# --- components ---------------------------------------------------------------------


class _SampleForm(forms.Form):
    name = forms.CharField(help_text="Shown to buyers.")
    notes = forms.CharField(required=False, widget=forms.Textarea)
    region = forms.ChoiceField(choices=[("na", "North America"), ("ea", "East Africa")])
    agree = forms.BooleanField(label="I agree")

    def clean(self):
        raise forms.ValidationError("Something is off.")


def test_form_component_links_help_and_errors_to_the_field():
    form = _SampleForm(data={"name": "", "region": "na"})
    form.is_valid()
    request = RequestFactory().get("/")

    html = render_to_string("components/form.html", {"form": form}, request=request)

    assert 'name="csrfmiddlewaretoken"' in html
    assert 'aria-describedby="id_name_helptext id_name_error"' in html
    assert 'id="id_name_helptext"' in html
    assert 'id="id_name_error"' in html
    assert 'aria-invalid="true"' in html
    assert "field-select" in html and "select-wrap" in html
    assert 'class="check"' in html
    assert "is-required" in html
    assert 'role="alert"' in html and "Something is off." in html


def test_pagination_keeps_other_query_parameters():
    page_obj = Paginator(list(range(100)), 10).page(2)
    request = RequestFactory().get("/partner/nodes/", {"status": "online", "page": "2"})

    html = render_to_string("components/pagination.html", {"page_obj": page_obj}, request=request)

    assert 'href="?status=online&amp;page=3"' in html
    assert 'href="?status=online&amp;page=1"' in html
    assert 'aria-current="page">2<' in html


def test_confirm_page_is_a_post_form_with_destructive_styling(buyer_owner):
    request = RequestFactory().get("/organization/members/3/remove/")
    request.user = buyer_owner
    request.session = {}

    html = render_to_string(
        "components/confirm.html",
        {
            "title": "Remove Ada?",
            "message": "She loses access.",
            "action_label": "Remove member",
            "cancel_url": "/organization/members/",
            "danger": True,
        },
        request=request,
    )

    assert 'method="post" action="/organization/members/3/remove/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'class="btn btn-danger">Remove member<' in html
    assert 'href="/organization/members/"' in html


def test_secret_component_has_a_copy_button():
    html = render_to_string("components/secret.html", {"secret": "hg_abc123", "label": "API key"})

    assert 'class="secret"' in html
    assert "hg_abc123" in html
    assert "data-copy" in html


# --- static files -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["css/app.css", "js/app.js", "django_htmx/htmx-2.min.js"])
def test_static_files_are_found(name):
    out = StringIO()

    call_command("findstatic", name, stdout=out, verbosity=1)

    found = Path(out.getvalue().strip().splitlines()[-1].strip())
    assert found.name == Path(name).name
    assert found.exists()


def test_base_layout_loads_htmx_and_the_app_assets(client):
    html = client.get("/").content.decode()

    assert "/static/css/app.css" in html
    assert "/static/django_htmx/htmx-2.min.js" in html
    assert "/static/js/app.js" in html
    # Every script and stylesheet is served by the app itself: no CDN, no other host.
    external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?:)?//[^"]+"', html)
    assert external == []
