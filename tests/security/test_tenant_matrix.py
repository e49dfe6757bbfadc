"""Tenant isolation matrix, generated from the URL configuration.

Every route of ``config.urls`` (namespaced includes too) is requested with GET and POST by
an anonymous client and by the owner of organization A, with its path converters filled
with the pk of an object that organization B owns. Nothing of B may come back: an object
route answers 404 (405 for a method the route refuses) to A and 404, 401/403 or a redirect
to login to the anonymous client; a list route shows A its own data only (none of B's
names in the body); and B's objects are unchanged afterwards.

The routes are walked, not listed: a new route with kwargs that ``OBJECT_KWARGS`` does not
know fails ``test_every_route_is_classified``, so nobody can add a page and forget it here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from django.db.models import Model
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

from accounts.models import AuditEvent
from tests.security.conftest import B_PRIVATE_MARKERS, B_PUBLISHED_MARKERS, TenantB

pytestmark = pytest.mark.django_db

# Genuinely public routes, by qualified URL name, each with why it is public.
PUBLIC_ROUTES: dict[str, str] = {
    "landing": "marketing page; renders no tenant data",
    "healthz": "load-balancer probe; reports database and broker state only",
    "status": "the human page beside healthz; database and broker state only",
    "pricing": "list prices of inference products and listed GPUs; no tenant data "
    "(tests/marketplace/test_public_storefront.py)",
    "marketplace:search": "public offers (issue 16): sites, prices, free GPUs; no buyer, "
    "partner name or node (tests/marketplace/test_public_storefront.py)",
    "marketplace:offer_detail": "one public offer: prices, servers in aggregate, default "
    "terms (tests/marketplace/test_public_storefront.py)",
    "api-schema": "the OpenAPI document; describes the API, holds no data",
    "api-docs": "Swagger UI shell that loads the schema",
    "inference_api_docs": "describes the inference API (base URL, endpoints, errors); no data",
    "api_agents_enroll": "the node agent's enrollment; the one-time code is the credential "
    "(test_outside_doors.py)",
    "billing:stripe_webhook": "Stripe calls it; the signature is the credential "
    "(test_outside_doors.py)",
    "invitation_respond": "the emailed token is the credential "
    "(tests/marketplace/test_invitations.py)",
    "admin:login": "sign-in page (allauth's secure_admin_login: 403 for non-staff)",
    "admin:logout": "sign-out; ends the caller's own session only",
}
# Public by path prefix, with the reason.
PUBLIC_PREFIXES: dict[str, str] = {
    "accounts/": "django-allauth: sign-in, sign-up, password reset and MFA pages",
}
# Django admin: staff only (finance). Non-staff are sent to the login page whatever the
# object; its kwargs get these placeholder values.
ADMIN_PREFIX = "admin/"
ADMIN_KWARG_VALUES = {
    "object_id": "1",
    "content_type_id": "1",
    "id": "1",
    "app_label": "marketplace",
    "url": "anything/",
    "pk": "1",  # finance's reconcile runs (/admin/finance/reconcile/<pk>/)
}

# The registry: for every route with kwargs, which of B's objects fills each kwarg.
OBJECT_KWARGS: dict[str, dict[str, str]] = {
    # marketplace
    "membership_update": {"pk": "membership"},
    "membership_remove": {"pk": "membership"},
    "invitation_revoke": {"pk": "invitation"},
    "api_key_revoke": {"pk": "api_key"},
    "api_api_key_revoke": {"pk": "api_key"},
    # capacity
    "capacity:site_detail": {"pk": "site"},
    "capacity:site_update": {"pk": "site"},
    "capacity:node_detail": {"pk": "node"},
    "capacity:enrollment_code_regenerate": {"pk": "node"},
    "capacity:window_create": {"pk": "node"},
    "capacity:node_retire": {"pk": "node"},
    "capacity:window_cancel": {"pk": "window"},
    "capacity:offer_update": {"pk": "offer"},
    "capacity:offer_deactivate": {"pk": "offer"},
    "api_site": {"pk": "site"},
    "api_node": {"pk": "node"},
    "api_node_enrollment_code": {"pk": "node"},
    "api_node_windows": {"pk": "node"},
    "api_window": {"pk": "window"},
    "api_offer": {"pk": "offer"},
    # storefront (catalog: B's active offer is published to every buyer)
    "marketplace:offer_detail": {"pk": "offer"},
    # contracts
    "contracts:detail": {"pk": "contract"},
    "contracts:cancel": {"pk": "contract"},
    "contracts:on_demand": {"pk": "contract"},
    "contracts:line_api_key": {"pk": "contract", "line_pk": "contract_line"},
    "api_contract": {"pk": "contract"},
    "api_contract_lines": {"pk": "contract"},
    "api_contract_allocations": {"pk": "contract"},
    "api_contract_usage": {"pk": "contract"},
    "api_inference_request": {"request_id": "inference_request"},
    "contracts:inference_cap": {"pk": "contract"},
    "contracts:line_api_key_detail": {"pk": "contract", "key_pk": "line_api_key"},
    "api_contract_inference_budget": {"pk": "contract"},
    "api_contract_keys": {"pk": "contract"},
    "api_contract_key": {"pk": "contract", "api_key_id": "line_key"},
    "contracts:instance_start": {"pk": "contract", "line_pk": "contract_line"},
    "contracts:container_create": {"pk": "contract", "line_pk": "contract_line"},
    "contracts:deployment_create": {"pk": "contract", "line_pk": "contract_line"},
    "contracts:workload": {"pk": "workload"},
    "contracts:workload_stop": {"pk": "workload"},
    "contracts:workload_redeploy": {"pk": "workload"},
    "api_workload": {"pk": "workload"},
    "api_workload_stop": {"pk": "workload"},
    "api_workload_redeploy": {"pk": "workload"},
    # serving (contracts' pages and API under capacity's node URLs)
    "serving:node_models": {"pk": "node"},
    "serving:node_models_update": {"pk": "node"},
    "api_node_inference_products": {"pk": "node"},
    "api_node_inference_product": {"pk": "node", "slug": "inference_product"},
    # billing
    "billing:invoice_detail": {"pk": "invoice"},
    "billing:invoice_print": {"pk": "invoice"},
    "billing:invoice_csv": {"pk": "invoice"},
    "billing:invoice_pdf": {"pk": "invoice"},
    "billing:invoice_pay": {"pk": "invoice"},
    "billing:invoice_payment_refresh": {"pk": "invoice"},
    "billing:statement_detail": {"pk": "statement"},
    "billing:statement_csv": {"pk": "statement"},
}
# The storefront: every partner's active offers are shown to every buyer by design, so
# B's published names may appear there (never B's private ones).
CATALOG_ROUTES = {
    "marketplace:search",
    "marketplace:offer_detail",
    "marketplace:quote",
    "marketplace:checkout",
    "api_market_offers",
    "api_market_quote",
}
# An object route may answer A only this: the object does not exist for A, or the
# method is refused before any lookup. A 403 (role check) is accepted only when a
# never-existing pk gets it too: then it cannot confirm that B's object exists.
FOREIGN_OBJECT_STATUSES = {404, 405}
MISSING_PK = "987654321"
ANONYMOUS_STATUSES = {401, 403, 404, 405}
LOGIN_PATHS = ("/accounts/login/", "/admin/login/")


@dataclass(frozen=True)
class Route:
    name: str | None  # qualified: "namespace:name"
    path: str  # the joined pattern, e.g. "partner/sites/<int:pk>/"
    kwargs: tuple[str, ...]
    parts: tuple[object, ...]  # the pattern objects from the root down

    @property
    def label(self) -> str:
        return f"{self.name or '(unnamed)'} /{self.path}"

    @property
    def is_api(self) -> bool:
        return self.path.startswith("api/")


def _pattern_kwargs(pattern: object) -> list[str]:
    if isinstance(pattern, RoutePattern):
        return list(pattern.converters)
    if isinstance(pattern, RegexPattern):
        return list(pattern.regex.groupindex)
    return []


def walk_routes(
    resolver: URLResolver | None = None,
    namespace: str | None = None,
    parts: tuple[object, ...] = (),
) -> Iterator[Route]:
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            child_namespace = namespace
            if entry.namespace:
                child_namespace = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
            yield from walk_routes(entry, child_namespace, (*parts, entry.pattern))
        elif isinstance(entry, URLPattern):
            chain = (*parts, entry.pattern)
            name = entry.name
            if name and namespace:
                name = f"{namespace}:{name}"
            yield Route(
                name=name,
                path="".join(str(p) for p in chain),
                kwargs=tuple(k for p in chain for k in _pattern_kwargs(p)),
                parts=chain,
            )


ALL_ROUTES = list(walk_routes())


def _fill_regex(regex: str, values: dict[str, str]) -> str:
    """Replace each ``(?P<name>…)`` group (balanced parentheses) by its value."""
    out, index = [], 0
    while index < len(regex):
        match = re.compile(r"\(\?P<(\w+)>").match(regex, index)
        if match is None:
            out.append(regex[index])
            index += 1
            continue
        depth, cursor = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(regex[cursor], 0)
            cursor += 1 if regex[cursor] != "\\" else 2
        out.append(values[match.group(1)])
        index = cursor
    return "".join(out).lstrip("^").rstrip("$").replace("\\", "")


def build_path(route: Route, values: dict[str, str]) -> str:
    pieces = []
    for pattern in route.parts:
        if isinstance(pattern, RoutePattern):
            pieces.append(re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], str(pattern)))
        else:
            pieces.append(_fill_regex(pattern.regex.pattern, values))  # type: ignore[attr-defined]
    return "/" + "".join(pieces)


def public_reason(route: Route) -> str | None:
    if route.name in PUBLIC_ROUTES:
        return PUBLIC_ROUTES[route.name]
    for prefix, reason in PUBLIC_PREFIXES.items():
        if route.path.startswith(prefix):
            return reason
    return None


def is_admin(route: Route) -> bool:
    return route.path.startswith(ADMIN_PREFIX)


def is_registered(route: Route) -> bool:
    """Admin, or every kwarg mapped (unregistered routes fail the classification test)."""
    if is_admin(route) or not route.kwargs:
        return True
    return set(OBJECT_KWARGS.get(route.name or "", {})) == set(route.kwargs)


def probed_routes() -> list[Route]:
    return [r for r in ALL_ROUTES if public_reason(r) is None and is_registered(r)]


def url_for(route: Route, tenant_b: TenantB, *, missing: bool = False) -> str:
    """The route's URL with B's objects in its kwargs (or a pk nobody has, ``missing``)."""
    if is_admin(route):
        return build_path(route, ADMIN_KWARG_VALUES)
    registry = OBJECT_KWARGS.get(route.name or "", {})
    values = {
        kwarg: MISSING_PK if missing else str(tenant_b.objects[registry[kwarg]].pk)  # type: ignore[attr-defined]
        for kwarg in route.kwargs
    }
    return build_path(route, values)


def body_of(response: HttpResponseBase) -> str:
    if getattr(response, "streaming", False):
        content = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    else:
        content = response.content  # type: ignore[attr-defined]
    return content.decode("utf-8", errors="replace")


def leaked_markers(route: Route, response: HttpResponseBase) -> list[str]:
    body = body_of(response)
    markers: tuple[str, ...] = B_PRIVATE_MARKERS
    if route.name not in CATALOG_ROUTES:
        markers += B_PUBLISHED_MARKERS
    return [marker for marker in markers if marker in body]


def redirects_to_login(response: HttpResponseBase) -> bool:
    location = response.get("Location", "") if response.status_code in (301, 302) else ""
    return urlsplit(location).path.startswith(LOGIN_PATHS)


def request(client: Client, method: str, url: str, route: Route) -> HttpResponseBase:
    if method == "get":
        return client.get(url)
    if route.is_api:
        return client.post(url, data="{}", content_type="application/json")
    return client.post(url, data={})


def snapshot_of_b(tenant_b: TenantB) -> dict[str, object]:
    """Every column of B's registry objects, and B's audit trail length."""
    rows: dict[str, object] = {}
    for key, instance in tenant_b.objects.items():
        assert isinstance(instance, Model)
        values = type(instance)._default_manager.filter(pk=instance.pk).values().first()
        rows[key] = {k: v for k, v in (values or {}).items() if k not in {"last_used_at"}}
    rows["audit_events"] = AuditEvent.objects.filter(organization=tenant_b.organization).count()
    return rows


# -- the registry is complete ------------------------------------------------------------


def test_every_route_is_classified():
    """A route with kwargs must be public, admin, or in OBJECT_KWARGS with every kwarg."""
    problems = []
    for route in ALL_ROUTES:
        if public_reason(route) is not None:
            continue
        if is_admin(route):
            unknown = set(route.kwargs) - set(ADMIN_KWARG_VALUES)
            if unknown:
                problems.append(f"{route.label}: admin kwargs {sorted(unknown)} have no value")
            continue
        if route.name is None:
            problems.append(f"{route.label}: unnamed route; name it and classify it")
            continue
        if not route.kwargs:
            continue
        known = OBJECT_KWARGS.get(route.name)
        if known is None or set(known) != set(route.kwargs):
            problems.append(
                f"{route.label}: kwargs {list(route.kwargs)} are not in OBJECT_KWARGS; map each "
                "to one of organization B's objects (tests/security/conftest.py)"
            )
    stale = set(OBJECT_KWARGS) - {r.name for r in ALL_ROUTES}
    assert not problems, "unclassified routes:\n" + "\n".join(problems)
    assert not stale, f"OBJECT_KWARGS names routes that no longer exist: {sorted(stale)}"
    # The walk really reaches namespaced includes and the API.
    names = {r.name for r in ALL_ROUTES}
    assert {"capacity:node_detail", "billing:invoice_detail", "api_contract"} <= names


def test_registry_objects_belong_to_b(tenant_b):
    keys = {key for mapping in OBJECT_KWARGS.values() for key in mapping.values()}
    assert keys <= set(tenant_b.objects)


# -- the matrix --------------------------------------------------------------------------


def test_anonymous_gets_no_data(tenant_b):
    client = Client()
    before = snapshot_of_b(tenant_b)
    failures = []
    for route in probed_routes():
        url = url_for(route, tenant_b)
        for method in ("get", "post"):
            response = request(client, method, url, route)
            status = response.status_code
            if not (status in ANONYMOUS_STATUSES or redirects_to_login(response)):
                failures.append(f"{method.upper()} {url} [{route.name}] → {status}")
            elif leaks := leaked_markers(route, response):
                failures.append(f"{method.upper()} {url} [{route.name}] leaks {leaks}")
    assert not failures, "anonymous requests answered:\n" + "\n".join(failures)
    assert snapshot_of_b(tenant_b) == before


@pytest.mark.parametrize("via", ["session", "api_key"])
def test_member_of_another_organization_gets_404_for_b_objects(tenant_a, tenant_b, via):
    """Object routes: A gets 404 (405 for a refused method), never B's data; B unchanged."""
    if via == "session":
        web, api = tenant_a.client(), tenant_a.api_client()
    else:  # an API key authenticates API routes only
        web, api = None, tenant_a.api_key_client()
    before = snapshot_of_b(tenant_b)
    failures = []
    for route in probed_routes():
        if not route.kwargs or route.name in CATALOG_ROUTES:
            continue
        client = api if route.is_api else web
        if client is None:
            continue
        url = url_for(route, tenant_b)
        for method in ("get", "post"):
            response = request(client, method, url, route)
            status = response.status_code
            if is_admin(route):
                ok = redirects_to_login(response)
            elif status == 403:
                missing_url = url_for(route, tenant_b, missing=True)
                ok = request(client, method, missing_url, route).status_code == 403
            else:
                ok = status in FOREIGN_OBJECT_STATUSES
            if not ok:
                failures.append(f"{method.upper()} {url} [{route.name}] → {status}")
            elif leaks := leaked_markers(route, response):
                failures.append(f"{method.upper()} {url} [{route.name}] leaks {leaks}")
    assert not failures, "requests by a member of organization A answered:\n" + "\n".join(failures)
    assert snapshot_of_b(tenant_b) == before


def test_lists_show_only_the_members_own_organization(tenant_a, tenant_b):
    """Routes without kwargs (lists, dashboards, forms): no B names in A's answers."""
    web, api = tenant_a.client(), tenant_a.api_client()
    before = snapshot_of_b(tenant_b)
    failures, own_data_seen = [], set()
    for route in probed_routes():
        if route.kwargs:
            continue
        client = api if route.is_api else web
        url = url_for(route, tenant_b)
        for method in ("get", "post"):
            response = request(client, method, url, route)
            if response.status_code >= 500:
                failures.append(f"{method.upper()} {url} [{route.name}] → {response.status_code}")
            elif is_admin(route) and not redirects_to_login(response):
                failures.append(f"{method.upper()} {url} [{route.name}] → admin reached")
            elif leaks := leaked_markers(route, response):
                failures.append(f"{method.upper()} {url} [{route.name}] leaks {leaks}")
            if "Aardvark Site" in body_of(response):
                own_data_seen.add(route.name)
    assert not failures, "list requests by a member of organization A:\n" + "\n".join(failures)
    assert snapshot_of_b(tenant_b) == before
    # The lists are not empty by accident: A's own site shows where sites are listed.
    assert {"capacity:sites", "api_sites"} <= own_data_seen


def test_catalog_routes_show_b_offer_but_nothing_private(tenant_a, tenant_b):
    """The storefront publishes B's offer to A (by design) without B's private data."""
    offer = tenant_b.objects["offer"]
    response = tenant_a.client().get(f"/marketplace/offers/{offer.pk}/")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert [m for m in B_PRIVATE_MARKERS if m in body_of(response)] == []


def test_switching_to_a_foreign_organization_is_refused(tenant_a, tenant_b):
    client = tenant_a.client()
    client.post("/organizations/switch/", {"organization": tenant_b.organization.pk})
    dashboard = client.get("/dashboard/")
    assert dashboard.status_code == 200
    assert [m for m in B_PRIVATE_MARKERS if m in body_of(dashboard)] == []
    assert client.session.get("current_organization_id") == tenant_a.organization.pk
