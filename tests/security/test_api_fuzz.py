"""API fuzzing: schemathesis against /api/schema/, in process, as a real organization member.

The schema is loaded from the running WSGI application (Django's handler, the same one
gunicorn serves) and every operation gets a bounded number of generated requests with a
fixed seed, authenticated by an organization API key. Object paths are fuzzed twice: with
generated pks (mostly unknown: 404) and with the member's own objects, so success
responses are exercised as well. Every answer must be a non-5xx that the schema
documents (status code) and whose body matches the documented schema.
"""

from __future__ import annotations

import re

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from accounts.models import Role
from capacity.models import NodeStatus
from config.wsgi import application
from tests.factories import (
    ApiKeyFactory,
    MembershipFactory,
    NodeWindowFactory,
    OfferFactory,
    OrganizationFactory,
    SiteFactory,
    gpu_pool,
)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

SEED = 20_260_101
# Generated requests per operation and strategy; the whole test stays well under a minute.
MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture
def wsgi_keeps_test_connection():
    """Django's handler closes old connections when a request starts and finishes, which
    would end the test's transaction; the test client avoids that the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def member_world(settings, wsgi_keeps_test_connection):
    """An organization (buyer and partner) with a site, nodes, a window, an offer, an
    on-demand contract, and an API key of its owner."""
    from contracts.on_demand import on_demand_enable

    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    org = OrganizationFactory(name="Fuzz Org", is_buyer=True, is_partner=True)
    owner = MembershipFactory(organization=org, role=Role.OWNER).user
    api_key = ApiKeyFactory(organization=org, created_by=owner)
    site = SiteFactory(organization=org)
    devices = gpu_pool(site=site, gpus=4, per_node=4, status=NodeStatus.ONLINE)
    window = NodeWindowFactory(node=devices[0].node)
    offer = OfferFactory(site=site, gpu_count=4)
    line = on_demand_enable(buyer=org, actor=owner, offer=offer)
    own_pks = {
        "/sites/{": site.pk,
        "/nodes/{": devices[0].node.pk,
        "/windows/{": window.pk,
        "/offers/{": offer.pk,
        "/contracts/{": line.contract.pk,
        "/api-keys/{": api_key.pk,
    }
    return {"headers": {"Authorization": f"Bearer {api_key.key}"}, "own_pks": own_pks}


def _own_path_parameters(path: str, own_pks: dict[str, int]) -> dict[str, int] | None:
    """``{"id": pk}`` of the member's own object for an object path (``/sites/{id}``)."""
    names = re.findall(r"\{(\w+)\}", path)
    for prefix, pk in own_pks.items():
        if prefix in path and len(names) == 1:
            return {names[0]: pk}
    return None


def test_api_answers_match_the_schema_and_never_5xx(member_world):
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    headers = member_world["headers"]
    failures: list[str] = []
    exercised = 0
    answered_2xx: set[str] = set()
    seen: dict[str, set[int]] = {}

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        strategies = [
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        ]
        own = _own_path_parameters(operation.path, member_world["own_pks"])
        if own is not None:
            strategies.append(operation.as_strategy(path_parameters=own))
        for strategy in strategies:

            @hypothesis.seed(SEED)
            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                database=None,
                deadline=None,
                derandomize=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=strategy)
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                if response.status_code < 300:
                    answered_2xx.add(case.operation.label)
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                fuzz()
            except (AssertionError, FailureGroup) as failure:
                failures.append(f"{operation.label}:\n{failure}")
            exercised += 1

    assert exercised >= 20, f"only {exercised} operation strategies fuzzed"
    assert not failures, "\n\n".join(failures)
    # The key really authenticated: most operations succeeded at least once.
    assert len(answered_2xx) >= 15, (sorted(answered_2xx), seen)
