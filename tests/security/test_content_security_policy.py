"""Every page carries a Content-Security-Policy: scripts and styles from our origin and
Stripe.js, inline blocks only with the response's nonce (issue 13, item 10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from tests.fixtures import client_for
from tests.http_headers import NO_STORE, cache_headers

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _directives(response) -> dict[str, list[str]]:
    return {
        name: sources
        for name, *sources in (
            part.split() for part in response["Content-Security-Policy"].split("; ")
        )
    }


def test_landing_page_policy(settings):
    settings.STRIPE_JS_URL = "https://js.stripe.com/v3/"
    settings.STRIPE_API_BASE = ""
    settings.STRIPE_CONNECT_API_BASE = ""
    settings.GATEWAY_URL = "https://inference.hashgrid.example/"

    response = Client().get(reverse("landing"))

    policy = _directives(response)
    nonce = policy["script-src"][1].removeprefix("'nonce-").removesuffix("'")
    assert policy == {
        "default-src": ["'self'"],
        "script-src": ["'self'", f"'nonce-{nonce}'", "https://js.stripe.com"],
        "style-src": ["'self'", f"'nonce-{nonce}'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": [
            "'self'",
            "https://js.stripe.com",
            "https://api.stripe.com",
            "https://inference.hashgrid.example",  # the playground streams from the gateway
        ],
        "frame-src": ["https://js.stripe.com", "https://hooks.stripe.com"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        # "Set up payouts with Stripe" posts a form that redirects to Connect onboarding.
        "form-action": ["'self'", "https://connect.stripe.com"],
        "frame-ancestors": ["'none'"],
    }
    assert len(nonce) == 24


def test_every_inline_script_carries_the_responses_nonce(buyer_client):
    response = buyer_client.get(reverse("dashboard"))

    nonce = _directives(response)["script-src"][1].removeprefix("'nonce-").removesuffix("'")
    html = response.content.decode()
    inline = [
        tag
        for tag in re.findall(r"<script\b[^>]*>", html)
        if "src=" not in tag and 'type="application/json"' not in tag
    ]
    assert inline == [f'<script nonce="{nonce}">']
    assert f'"inlineStyleNonce": "{nonce}"' in html  # htmx's indicator styles
    assert nonce != _directives(buyer_client.get(reverse("dashboard")))["script-src"][1]


def test_development_stripe_origin_follows_the_settings(settings):
    settings.STRIPE_JS_URL = "http://127.0.0.1:8420/js.stripe.com/v3/"
    settings.STRIPE_API_BASE = "http://127.0.0.1:8420"
    settings.STRIPE_CONNECT_API_BASE = "http://127.0.0.1:8421"  # devtools.stripe_connect
    settings.GATEWAY_URL = "http://127.0.0.1:8001"

    policy = _directives(Client().get(reverse("landing")))

    assert policy["script-src"][2:] == ["http://127.0.0.1:8420"]
    assert policy["connect-src"] == ["'self'", "http://127.0.0.1:8420", "http://127.0.0.1:8001"]
    assert policy["form-action"] == [
        "'self'",
        "https://connect.stripe.com",
        "http://127.0.0.1:8421",
    ]


def test_no_template_relies_on_what_the_policy_forbids():
    """Inline handlers, ``javascript:`` URLs and style attributes are refused by the
    browser under the policy: none in our templates (inline blocks take the nonce)."""
    offenders = []
    for path in sorted(TEMPLATES.rglob("*.html")):
        text = path.read_text()
        for pattern in (r"\son[a-z]+=\"", r"javascript:", r"\sstyle=\"", r"<(script|style)>"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(TEMPLATES)}: {pattern}")
    assert offenders == []


def test_api_docs_load_their_script_from_a_url(buyer_owner):
    response = client_for(buyer_owner).get(reverse("api-docs"))

    html = response.content.decode()
    assert response.status_code == 200
    assert '<script src="/api/docs/?script="></script>' in html
    assert re.findall(r"<script>", html) == []
    policy = _directives(response)
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]  # Swagger UI's own styles
    assert policy["script-src"][1].startswith("'nonce-")


def test_totp_setup_page_showing_the_secret_is_not_stored(buyer_owner):
    client = Client()
    signed_in = client.post(
        reverse("account_login"),
        {"login": buyer_owner.email, "password": "correct-horse-battery"},
    )
    assert signed_in.status_code == 302

    reauthenticated = client.post(
        reverse("account_reauthenticate"), {"password": "correct-horse-battery"}
    )
    assert reauthenticated.status_code == 302

    response = client.get(reverse("mfa_activate_totp"))

    assert response.status_code == 200
    assert cache_headers(response) == NO_STORE
