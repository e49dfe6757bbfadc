"""Primary navigation: one list of entries, filtered per request.

Entries name URLs that later issues add; an entry whose URL name does not resolve yet is
skipped, so the menu grows as the apps land without anyone editing the template. Which
entries show depends on the current organization's kind (buyer, partner or both) and on
staff status. The ``navigation`` context processor hands the template a ready list.

The active entry is the one whose URL is the longest prefix of the page's path, or of the
``nav_section`` a view puts in its context when the path alone cannot tell (an instance's
page, ``/contracts/workloads/<pk>/``, belongs under Instances; a reserved workload's under
Contracts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, get_script_prefix, reverse

from accounts.tenancy import current_organization


class Audience(StrEnum):
    ANY = "any"  # every signed-in user with an organization
    BUYER = "buyer"  # organizations that buy capacity
    PARTNER = "partner"  # organizations that list capacity
    STAFF = "staff"  # platform staff (finance admins)


@dataclass(frozen=True)
class NavEntry:
    label: str
    url_name: str
    audience: Audience


@dataclass(frozen=True)
class NavLink:
    """A resolved entry, ready for the template."""

    label: str
    url: str
    audience: Audience
    active: bool


NAVIGATION: tuple[NavEntry, ...] = (
    NavEntry("Dashboard", "dashboard", Audience.ANY),
    NavEntry("Marketplace", "marketplace:search", Audience.BUYER),
    NavEntry("Contracts", "contracts:list", Audience.BUYER),
    NavEntry("Instances", "contracts:instances", Audience.BUYER),
    NavEntry("Usage", "contracts:usage", Audience.BUYER),
    NavEntry("Playground", "marketplace:playground", Audience.BUYER),
    NavEntry("Invoices", "billing:invoices", Audience.BUYER),
    NavEntry("API keys", "api_keys", Audience.BUYER),
    NavEntry("Sites", "capacity:sites", Audience.PARTNER),
    NavEntry("Nodes", "capacity:nodes", Audience.PARTNER),
    NavEntry("Offers", "capacity:offers", Audience.PARTNER),
    NavEntry("Earnings", "billing:earnings", Audience.PARTNER),
    NavEntry("Team", "organization_members", Audience.ANY),
    NavEntry("Admin", "admin:index", Audience.STAFF),
)


def _visible(entry: NavEntry, *, is_buyer: bool, is_partner: bool, is_staff: bool) -> bool:
    if entry.audience is Audience.STAFF:
        return is_staff
    if entry.audience is Audience.BUYER:
        return is_buyer
    if entry.audience is Audience.PARTNER:
        return is_partner
    return is_buyer or is_partner


def _is_active(url: str, path: str) -> bool:
    """The entry whose URL is the longest prefix of the current path is active."""
    return path == url or (url != "/" and path.startswith(url))


# (script prefix, URL name) -> path, or None when the name does not resolve: the URL
# configuration does not change while a process runs, and every page renders the menu.
_URLS: dict[tuple[str, str], str | None] = {}


def _url(url_name: str) -> str | None:
    key = (get_script_prefix(), url_name)
    if key not in _URLS:
        try:
            _URLS[key] = reverse(url_name)
        except NoReverseMatch:
            _URLS[key] = None
    return _URLS[key]


def build_navigation(request: HttpRequest, *, section: str | None = None) -> list[NavLink]:
    """The entries the request's user may see; the active one chosen by ``section`` (a
    path the page belongs under) when given, else by the request's path."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    organization = current_organization(request)
    is_buyer = bool(organization and organization.is_buyer)
    is_partner = bool(organization and organization.is_partner)
    resolved: list[tuple[NavEntry, str]] = []
    for entry in NAVIGATION:
        if not _visible(entry, is_buyer=is_buyer, is_partner=is_partner, is_staff=user.is_staff):
            continue
        url = _url(entry.url_name)
        if url is None:
            continue  # that part of the product has not shipped yet
        resolved.append((entry, url))

    path = section or request.path
    matching = [url for _, url in resolved if _is_active(url, path)]
    active_url = max(matching, key=len) if matching else None
    return [
        NavLink(label=entry.label, url=url, audience=entry.audience, active=url == active_url)
        for entry, url in resolved
    ]


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Context processor: ``nav_links`` for the top bar."""
    return {"nav_links": build_navigation(request)}
