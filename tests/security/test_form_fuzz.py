"""Form fuzz: every HTML form a member, buyer or partner can open, posted with hostile
values, answers a 4xx or the form again (200 with its errors), never a 5xx, and stores
nothing when it refused the input (a 4xx, or a page showing form errors).

The forms are found, not listed: each page below is fetched as the organization's owner,
its ``<form method="post">`` elements are parsed with their default values, and every
field is posted once with each of ``HOSTILE_VALUES`` (the other fields keep their
defaults). Each post runs in a savepoint rolled back afterwards, so one accepted post
cannot change what the next one sees; rows of every table are counted before and after.
The API's write endpoints get the same treatment from a table (``API_WRITES``: a valid
body per operation, each field replaced in turn by each of ``HOSTILE_JSON``); a test
checks the table lists every write operation of the schema. ``test_api_fuzz`` adds
schemathesis' generated requests and checks the answers against the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.apps import apps
from django.db import DatabaseError, connection, transaction
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.tenancy import SESSION_KEY
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from contracts.workloads import container_create
from tests.billing.settlement_builders import ensure_finance_group
from tests.contracts.usage_builders import reserved_line
from tests.contracts.workload_builders import PYTORCH
from tests.factories import (
    ApiKeyFactory,
    MembershipFactory,
    NodeWindowFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    UserFactory,
    catalog_gpu,
    gpu_pool,
)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

HOSTILE_VALUES = (
    "0",
    "-1",
    "100000000000000000000",  # 10**20
    "99999999999999",
    "1e400",
    "",
    "Ω≈ç√ 東京 💥",
    "0001-01-01",
    "9999-12-31T23:59",
    "1900-01-01T00:00",
)
# Fields that are not user data: posting garbage there is a 403 (CSRF) or a no-op.
SKIPPED_FIELDS = {"csrfmiddlewaretoken"}
_WINDOW_START = (timezone.now() + timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
# Valid values for fields a blank form leaves empty, so that every post but the fuzzed
# field passes validation and the hostile value reaches the service and the database.
VALID = {
    "name": "Fuzz thing",
    "country": "US",
    "latitude": "31.9",
    "longitude": "-102.1",
    "power_capacity_kw": "2000",
    "energy_price_per_kwh": "0.021",
    "gpu_count": "4",
    "cpu_cores": "64",
    "ram_gib": "512",
    # A window inside the bounds (a start within 365 days, at most 31 days long).
    "start": f"{_WINDOW_START:%Y-%m-%dT%H:%M}",
    "end": f"{_WINDOW_START + timedelta(days=1):%Y-%m-%dT%H:%M}",
    "reason": "fuzz",
    "on_demand_price_per_gpu_hour": "2.5000",
    "reserved_price_1m_per_gpu_hour": "2.0000",
    "reserved_price_3m_per_gpu_hour": "1.9000",
    "reserved_price_6m_per_gpu_hour": "1.8000",
    "reserved_price_12m_per_gpu_hour": "1.7000",
    "email": "fuzz-invitee@example.com",
}
# What a page shows when it refuses a post (templates/components/form_fields.html).
# ... and the admin's (errornote above the form, errorlist under a field).
REFUSAL_MARKERS = (
    b'class="form-errors"',
    b'class="field-errors"',
    b'class="errornote"',
    b'class="errorlist',
)


class _Forms(HTMLParser):
    """The post forms of a page: (action, {field: default value})."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self._fields: dict[str, str] | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        name = attributes.get("name", "")
        if tag == "form" and attributes.get("method", "get").lower() == "post":
            self._fields = {}
            self.forms.append((attributes.get("action", ""), self._fields))
        elif self._fields is None or (not name and tag != "option"):
            return
        elif tag == "input":
            kind = attributes.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in attributes:
                if kind == "radio":
                    self._fields.setdefault(name, "")
                return
            if kind not in ("submit", "button", "file"):
                self._fields[name] = attributes.get("value", "on" if kind == "checkbox" else "")
        elif tag == "select":
            self._select = name
            self._fields[name] = ""
        elif tag == "option" and self._select:
            if "selected" in attributes or not self._fields[self._select]:
                self._fields[self._select] = attributes.get("value", "")
        elif tag == "textarea":
            self._textarea = name
            self._fields[name] = ""

    def handle_data(self, data: str) -> None:
        if self._fields is not None and self._textarea:
            self._fields[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._fields = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


def _row_counts() -> dict[str, int]:
    """Rows of every table of the project's models, in one query."""
    tables = sorted({model._meta.db_table for model in apps.get_models()})
    sql = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM \"{table}\"" for table in tables)  # noqa: S608 (table names from model metadata)
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return dict(cursor.fetchall())


@pytest.fixture
def owner_world(settings):
    """An organization that buys and sells, its owner logged in, and one of each object
    its forms edit."""
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    org = OrganizationFactory(name="Fuzz Org", is_buyer=True, is_partner=True)
    owner = MembershipFactory(organization=org, role=Role.OWNER).user
    MembershipFactory(organization=org, role=Role.MEMBER)
    site = SiteFactory(organization=org)
    gpu_model = catalog_gpu()
    devices = gpu_pool(site=site, gpus=8, per_node=4, gpu_model=gpu_model)
    node = devices[0].node
    NodeWindowFactory(node=node)
    offer = OfferFactory(site=site, gpu_model=gpu_model, gpu_count=4)
    gpu_line = on_demand_enable(buyer=org, actor=owner, offer=offer)
    contract = gpu_line.contract
    # Reserved GPUs on the second node, with a container running on one of them.
    reserved = reserved_line(
        contract=contract,
        offer=offer,
        holds=[
            (gpu, timezone.now() - timedelta(days=1), timezone.now() + timedelta(days=29))
            for gpu in devices[4:8]
        ],
    )
    container = container_create(
        line=reserved,
        image=PYTORCH,
        ssh_public_key="",
        ports=[22],
        env={},
        actor=owner,
        gpu_count=1,
    )
    inference = on_demand_enable(
        buyer=org, actor=owner, inference_product=InferenceProduct.objects.order_by("pk").first()
    )
    line_key, _secret = line_api_key_create(line=inference, name="fuzz", actor=owner)
    starts_at = (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    session = client.session
    session[SESSION_KEY] = org.pk
    session.save()
    pages = [
        "/organizations/new/",
        "/organization/",
        "/organization/members/",
        "/organization/api-keys/",
        "/partner/sites/new/",
        f"/partner/sites/{site.pk}/edit/",
        "/partner/nodes/new/",
        f"/partner/nodes/{node.pk}/",
        f"/partner/nodes/{node.pk}/windows/new/",
        f"/partner/nodes/{node.pk}/windows/new/?kind=curtailment",
        "/partner/offers/new/",
        f"/partner/offers/{offer.pk}/edit/",
        f"/marketplace/offers/{offer.pk}/",
        f"/marketplace/quote/?offer={offer.pk}&gpu_count=1&starts_at={starts_at}&term_months=1",
        f"/contracts/{contract.pk}/",
        f"/contracts/{contract.pk}/cancel/",
        f"/contracts/{contract.pk}/inference-cap/",
        f"/contracts/{contract.pk}/api-keys/{line_key.contract_line_link.pk}/",
        f"/partner/nodes/{node.pk}/models/",  # a Serve form per product
        f"/contracts/{contract.pk}/lines/{gpu_line.pk}/instances/new/",
        f"/contracts/{contract.pk}/lines/{reserved.pk}/containers/new/",
        f"/contracts/{contract.pk}/lines/{reserved.pk}/deployments/new/",
        f"/contracts/workloads/{container.pk}/redeploy/",
        f"/contracts/workloads/{container.pk}/stop/",
        "/billing/payment-method/",
    ]
    # Choices a form's first option would get wrong: the model the site's GPUs are.
    chosen = {"gpu_model": str(gpu_model.pk)}
    return client, pages, chosen


def _refused(answer: HttpResponse) -> bool:
    return answer.status_code >= 400 or any(marker in answer.content for marker in REFUSAL_MARKERS)


def _post_rolled_back(post: Callable[[], HttpResponse], where: str) -> tuple[int, str | None]:
    """Post in a savepoint rolled back afterwards: the answer's status and what is wrong
    with it (a 5xx, or rows stored by a refused post), None when nothing is."""
    with transaction.atomic():
        before = _row_counts()
        answer = post()
        try:
            with transaction.atomic():
                after = _row_counts()
        except DatabaseError:  # the request left the transaction aborted
            after = {}
        transaction.set_rollback(True)
    where = f"{where}: {answer.status_code}"
    if answer.status_code >= 500 or not after:
        return answer.status_code, where
    if _refused(answer) and before != after:
        changed = sorted(table for table in after if after[table] != before.get(table))
        return answer.status_code, f"{where} stored rows in {changed}"
    return answer.status_code, None


def _fuzz_forms(
    client: Client, pages: list[str], chosen: dict[str, str]
) -> tuple[list[str], list[str], list[str]]:
    """Fuzz every post form of ``pages``: (forms found, forms refusing their own defaults,
    failures)."""
    found: list[str] = []
    defaults_refused: list[str] = []
    failures: list[str] = []
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        parser = _Forms()
        parser.feed(response.content.decode())
        for action, defaults in parser.forms:
            target = action or page
            if "switch" in target or "logout" in target:  # no values: a choice, a sign-out
                continue
            found.append(target)
            defaults = {
                name: chosen.get(name) or value or VALID.get(name, "")
                for name, value in defaults.items()
            }
            with transaction.atomic():
                if _refused(client.post(target, defaults)):
                    defaults_refused.append(target)
                transaction.set_rollback(True)
            for field in sorted(set(defaults) - SKIPPED_FIELDS):
                for value in HOSTILE_VALUES:
                    _, failure = _post_rolled_back(
                        lambda: client.post(target, {**defaults, field: value}),  # noqa: B023
                        f"POST {target} {field}={value!r}",
                    )
                    if failure:
                        failures.append(failure)
    return found, defaults_refused, failures


def test_every_form_refuses_hostile_values_without_a_5xx_or_a_write(owner_world):
    found, defaults_refused, failures = _fuzz_forms(*owner_world)
    assert failures == [], "\n".join(failures)
    # Every form accepts its own defaults, so a refusal above is about the hostile value.
    assert defaults_refused == []
    assert len(found) == 26, found


def test_the_finance_admin_form_refuses_hostile_values_without_a_5xx_or_a_write():
    """Finance's one add form in the admin (agreements; credit notes and statements move
    by actions on selected rows, which carry no values)."""
    partner = OrganizationFactory(name="Fuzz Partner", is_partner=True)
    user = UserFactory(is_staff=True)
    user.groups.add(ensure_finance_group())
    TOTP.activate(user, generate_totp_secret())
    client = Client(raise_request_exception=False)
    client.force_login(user)
    next_month = (timezone.now().date().replace(day=1) + timedelta(days=32)).replace(day=1)
    chosen = {
        "partner": str(partner.pk),
        "partner_share": "0.8000",
        "effective_from": next_month.isoformat(),
        "note": "fuzz",
    }
    found, defaults_refused, failures = _fuzz_forms(
        client, ["/admin/billing/partneragreement/add/"], chosen
    )
    assert failures == [], "\n".join(failures)
    assert defaults_refused == []
    assert found == ["/admin/billing/partneragreement/add/"]


HOSTILE_JSON = (
    0,
    -1,
    10**20,
    99_999_999_999_999,
    "1e400",
    "",
    "Ω≈ç√ 東京 💥",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    None,
)
_SITE = {
    "name": "Fuzz site",
    "country": "US",
    "region": "north-america",
    "latitude": "31.9",
    "longitude": "-102.1",
    "power_capacity_kw": 2000,
    "energy_source": "flare-gas",
    "energy_price_per_kwh": "0.021",
    "energy_currency": "USD",
}
_PRICES = {
    "on_demand_price_per_gpu_hour": "2.5000",
    "reserved_price_1m_per_gpu_hour": "2.0000",
    "reserved_price_3m_per_gpu_hour": "1.9000",
    "reserved_price_6m_per_gpu_hour": "1.8000",
    "reserved_price_12m_per_gpu_hour": "1.7000",
}
_RESERVE = {"gpu_count": 1, "starts_at": "{next_month}", "term_months": 1}
# (method, path, valid body); {site}, {node}, {offer} are the member's own objects.
API_WRITES = (
    ("post", "/api/v1/sites", _SITE),
    ("patch", "/api/v1/sites/{site}", _SITE),
    (
        "post",
        "/api/v1/nodes",
        {
            "site": "{site}",
            "name": "Fuzz node",
            "gpu_model": "H100 SXM 80GB",
            "gpu_count": 4,
            "cpu_cores": 64,
            "ram_gib": 512,
        },
    ),
    *(
        (
            "post",
            "/api/v1/nodes/{node}/windows",
            {
                "kind": kind,
                "start": "{next_month}",
                "end": "{next_month_and_a_day}",
                "reason": "fuzz",
            },
        )
        for kind in ("maintenance", "curtailment")
    ),
    (
        "post",
        "/api/v1/offers",
        {
            "site": "{site}",
            "gpu_model": "H100 SXM 80GB",
            "gpu_count": 1,
            **_PRICES,
            "currency": "USD",
        },
    ),
    ("patch", "/api/v1/offers/{offer}", {"gpu_count": 2, **_PRICES, "currency": "USD"}),
    ("post", "/api/v1/market/quote", {"offer": "{offer}", **_RESERVE}),
    ("post", "/api/v1/reservations", {"offer": "{offer}", **_RESERVE}),
    ("post", "/api/v1/api-keys", {"name": "Fuzz key"}),
    (
        "patch",
        "/api/v1/contracts/{contract}/inference-budget",
        {"inference_monthly_cap_minor": 500},
    ),
    (
        "patch",
        "/api/v1/contracts/{contract}/api-keys/{line_key}",
        {"monthly_cap_minor": 500, "requests_per_minute": 60, "tokens_per_minute": 10_000},
    ),
    (
        "post",
        "/api/v1/instances",
        {
            "line": "{gpu_line}",
            "gpu_count": 1,
            "image": PYTORCH,
            "ssh_public_key": "",
            "ports": [22],
            "env": {"A": "1"},
        },
    ),
    (
        "post",
        "/api/v1/containers",
        {"line": "{reserved_line}", "gpu_count": 1, "image": PYTORCH, "ports": [22], "env": {}},
    ),
    (
        "post",
        "/api/v1/deployments",
        {"line": "{reserved_line}", "model": "{model}", "gpu_count": 1},
    ),
    ("post", "/api/v1/workloads/{workload}/redeploy", {"image": PYTORCH}),
    (
        "post",
        "/api/v1/agents/enroll",
        {
            "code": "not-a-code",
            "public_key": "x",
            "url": "https://agent.example.com",
            "gpus": [],
            "agent_version": "1.0",
        },
    ),
)


def test_the_table_lists_every_api_write_operation():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    writes = {
        (method, path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in ("post", "put", "patch")
        and operation.get("requestBody", {}).get("content", {}).get("application/json")
        and schema["components"]["schemas"][
            operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        ].get("properties")
    }
    listed = {
        (
            method,
            path.replace("{site}", "{id}")
            .replace("{node}", "{id}")
            .replace("{offer}", "{id}")
            .replace("{contract}", "{id}")
            .replace("{workload}", "{id}")
            .replace("{line_key}", "{api_key_id}"),
        )
        for method, path, _ in API_WRITES
    }
    assert writes == listed


def test_every_api_write_refuses_hostile_values_without_a_5xx_or_a_write(settings):
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    org = OrganizationFactory(name="Fuzz Org", is_buyer=True, is_partner=True)
    owner = MembershipFactory(organization=org, role=Role.OWNER).user
    api_key = ApiKeyFactory(organization=org, created_by=owner)
    site = SiteFactory(organization=org)
    devices = gpu_pool(site=site, gpus=4, per_node=4, gpu_model=catalog_gpu())
    offer = OfferFactory(site=site, gpu_model=catalog_gpu(), gpu_count=2)
    next_month = (timezone.now() + timedelta(days=30)).replace(second=0, microsecond=0)
    inference = on_demand_enable(
        buyer=org, actor=owner, inference_product=InferenceProduct.objects.order_by("pk").first()
    )
    line_key, _secret = line_api_key_create(line=inference, name="fuzz", actor=owner)
    gpu_line = on_demand_enable(buyer=org, actor=owner, offer=offer)
    reserved = reserved_line(
        contract=inference.contract,
        offer=offer,
        holds=[(gpu, next_month - timedelta(days=31), next_month) for gpu in devices[2:4]],
    )
    container = container_create(
        line=reserved,
        image=PYTORCH,
        ssh_public_key="",
        ports=[],
        env={},
        actor=owner,
        gpu_count=1,
    )
    own = {
        "{gpu_line}": gpu_line.pk,
        "{reserved_line}": reserved.pk,
        "{workload}": container.pk,
        "{model}": InferenceProduct.objects.filter(is_active=True).order_by("pk").first().slug,
        "{contract}": inference.contract_id,
        "{line_key}": line_key.pk,
        "{site}": site.pk,
        "{node}": devices[0].node.pk,
        "{offer}": offer.pk,
        "{next_month}": next_month.isoformat(),
        "{next_month_and_a_day}": (next_month + timedelta(days=1)).isoformat(),
    }
    key_client = APIClient(raise_request_exception=False)
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key.key}")
    # API keys are created by a signed-in owner, not by another key.
    session_client = APIClient(raise_request_exception=False)
    session_client.force_login(owner)
    failures: list[str] = []
    accepted: dict[str, int] = {}
    for method, path, valid in API_WRITES:
        client = session_client if path == "/api/v1/api-keys" else key_client
        for marker, pk in own.items():
            path = path.replace(marker, str(pk))
        body = {
            name: own.get(value, value) if isinstance(value, str) else value
            for name, value in valid.items()
        }
        with transaction.atomic():
            answer = getattr(client, method)(path, body, format="json")
            accepted[path] = answer.status_code
            transaction.set_rollback(True)
        for field in body:
            for value in HOSTILE_JSON:
                _, failure = _post_rolled_back(
                    lambda: getattr(client, method)(  # noqa: B023
                        path,  # noqa: B023
                        {**body, field: value},  # noqa: B023
                        format="json",
                    ),
                    f"{method.upper()} {path} {field}={value!r}",
                )
                if failure:
                    failures.append(failure)
    assert failures == [], "\n".join(failures)
    # The valid bodies are accepted, so each hostile value is what a refusal is about
    # (enrollment with a made-up code is refused whatever else it carries).
    assert {path: status for path, status in accepted.items() if status >= 300} == {
        "/api/v1/agents/enroll": 400
    }
