"""A buyer's model deployment on their reserved GPUs, called through the real gateway
(docs/gateway.md "Deployments", issue 15 point 4).

The fleet simulator plays the partner's nodes (receipted inference, v1 polls); the buyer
reserves both GPUs of one node for the month and deploys a catalogue model on them
(``contracts.workloads.deployment_create``); the node's report that it runs goes in
through the function the sweep calls with what agents report
(``contracts.assignments.apply_reports``: the fleet does not report workloads yet). The
buyer calls the private model with the official ``openai`` SDK, whole and streamed;
another buyer's key gets 404; metering's sweep stores the tokens against the reserved
line, where they are shown and never priced: the month rates the reservation's hours only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import openai
import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Role
from billing.models import LineKind as BillingLineKind
from billing.rating import rate_month
from capacity.metering.assignments import AssignmentReport
from capacity.metering.models import InferenceRequest, InferenceUsageHour, QuarantinedRecord
from capacity.models import GpuDevice, Node
from contracts.assignments import apply_reports
from contracts.billable_usage import MeteredQuantities, UsageKey, metered_quantities
from contracts.inference_requests import buyer_inference_request
from contracts.inference_spend import inference_month_spend
from contracts.models import (
    ContractLine,
    InferenceProduct,
    LineApiKey,
    LineKind,
    Workload,
    WorkloadState,
)
from contracts.terms import add_months, month_start
from contracts.usage import month_to_date, usage_buckets
from contracts.workloads import deployment_create, workload_stop
from devtools.simulated_fleet import FleetProcess
from tests.contracts.usage_builders import active_contract, reserved_line
from tests.factories import ApiKeyFactory, MembershipFactory, OfferFactory
from tests.gateway.conftest import logged_rows
from tests.gateway.fleet_helpers import (
    MESSAGES,
    PROMPT_TOKENS,
    receipt_truth,
    running_fleet,
    serving_nodes,
    sweep_until_polled,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
D = Decimal
PRODUCT = "deploy-llama"
RATE = D("2.1000")  # per reserved GPU-hour


@dataclass
class Deployed:
    fleet: FleetProcess
    workload: Workload
    line: ContractLine
    node_ids: list[int]
    key: str  # a key of the buyer, tied to no line
    other_key: str  # another buyer's key, on an inference line of the same product
    month: datetime

    @property
    def model(self) -> str:
        return self.workload.served_model_name


def agent_reports(workload: Workload, state: str) -> None:
    """The node's agent reports ``workload`` in ``state``, as the sweep passes it on."""
    now = timezone.now()
    apply_reports(
        reports=[
            AssignmentReport(
                node_id=workload.node_id,
                polled_at=now,
                agent_generation=1,
                agent_digest=uuid.uuid4().hex * 2,
                workloads=[
                    {
                        "id": workload.public_id,
                        "state": state,
                        "since": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "reason": "",
                        "gpus": sorted(workload.gpus.values_list("uuid", flat=True)),
                        "connection": {"host": "", "ports": {}, "endpoint": ""},
                    }
                ],
            )
        ],
        now=now,
    )
    workload.refresh_from_db()
    assert workload.state == state


@pytest.fixture
def deployed(buyer_org, buyer_owner, partner_org, other_org, tmp_path) -> Iterator[Deployed]:
    product = InferenceProduct.objects.create(
        slug=PRODUCT,
        name="Deploy Llama",
        input_price_per_million_tokens=D("15000.0000"),
        output_price_per_million_tokens=D("65000.0000"),
        memory_required_mib=16_384,
    )
    month = month_start(timezone.now())
    with running_fleet(tmp_path, nodes=2, tokens_per_second=0) as fleet:
        # Both nodes serve the product to on-demand buyers; the deployment is node 0's.
        node_ids = serving_nodes(partner=partner_org, fleet=fleet, product=product)
        node = Node.objects.get(pk=node_ids[0])
        contract = active_contract(buyer=buyer_org, since=month)
        offer = OfferFactory(site=node.site, gpu_model=node.gpu_model)
        line = reserved_line(
            contract=contract,
            offer=offer,
            holds=[
                (gpu, month, add_months(month, 1))
                for gpu in GpuDevice.objects.filter(node=node).order_by("index")
            ],
            rate=RATE,
        )
        workload = deployment_create(line=line, product=product, gpu_count=2, actor=buyer_owner)
        agent_reports(workload, WorkloadState.RUNNING)

        other_contract = active_contract(buyer=other_org, since=month)
        other_line = ContractLine.objects.create(
            contract=other_contract,
            kind=LineKind.INFERENCE,
            inference_product=product,
            input_price_per_million_tokens=product.input_price_per_million_tokens,
            output_price_per_million_tokens=product.output_price_per_million_tokens,
            starts_at=month,
        )
        other_admin = MembershipFactory(organization=other_org, role=Role.ADMIN).user
        other_key = ApiKeyFactory(organization=other_org, created_by=other_admin)
        LineApiKey.objects.create(line=other_line, api_key=other_key)
        yield Deployed(
            fleet=fleet,
            workload=workload,
            line=line,
            node_ids=node_ids,
            key=ApiKeyFactory(organization=buyer_org, created_by=buyer_owner).key,
            other_key=other_key.key,
            month=month,
        )


def sdk_for(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(D("1"), rounding=ROUND_HALF_UP))


def test_buyer_calls_its_deployment_and_its_tokens_are_shown_on_the_reserved_line_unpriced(
    deployed, start_gateway, buyer_org
):
    gateway = start_gateway()
    sdk = sdk_for(gateway, deployed.key)
    model = deployed.model

    assert [m.id for m in sdk.models.list().data] == [model]
    card = sdk.models.retrieve(model)
    assert (card.id, card.owned_by, card.model_extra) == (model, "hashgrid", {"root": PRODUCT})

    raw = sdk.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=5
    )
    answer = raw.parse()
    assert answer.model == model
    assert answer.choices[0].message.content == " tok0 tok1 tok2 tok3 tok4"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (PROMPT_TOKENS, 5)
    whole = raw.headers["x-request-id"]

    raw = sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert {chunk.model for chunk in chunks} == {model}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        " tok0 tok1 tok2"
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 3)
    streamed = raw.headers["x-request-id"]

    # Another buyer's key: the private model does not exist for it.
    other = sdk_for(gateway, deployed.other_key)
    with pytest.raises(openai.NotFoundError) as refused:
        other.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
    assert refused.value.body == {
        "message": f"The model '{model}' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(model)
    assert [m.id for m in other.models.list().data] == [PRODUCT]

    # The gateway's log: both requests on the reserved line, served by the deployment's node.
    rows = logged_rows(count=2)
    assert {
        (row.request_id.hex, row.line_id, row.product_slug, row.node_id, row.gateway_status)
        for row in rows
    } == {(rid, deployed.line.pk, PRODUCT, deployed.node_ids[0], 200) for rid in (whole, streamed)}

    # The sweep: the agent's receipt records name the reserved line; the tokens go there.
    poll = sweep_until_polled()
    assert (poll.polled, poll.failed) == (2, 0)
    assert receipt_truth(deployed.fleet, [0, 1]) == {
        "records": 2,
        "input_tokens": 2 * PROMPT_TOKENS,
        "output_tokens": 8,
    }
    assert not QuarantinedRecord.objects.exists()
    assert {
        row.request_id.hex: (row.line_id, row.billed_input_tokens, row.billed_output_tokens)
        for row in InferenceRequest.objects.all()
    } == {
        whole: (deployed.line.pk, PROMPT_TOKENS, 5),
        streamed: (deployed.line.pk, PROMPT_TOKENS, 3),
    }
    assert InferenceUsageHour.objects.values("line_id").annotate(
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens")
    ).get() == {"line_id": deployed.line.pk, "input_tokens": 16, "output_tokens": 8}

    # Shown: the line's metered tokens, the usage buckets, the month to date, the lookup.
    month, until = deployed.month, add_months(deployed.month, 1)
    contract = deployed.line.contract
    assert metered_quantities(start=month, end=until, line_ids=[deployed.line.pk]) == {
        UsageKey(deployed.line.pk, None, None): MeteredQuantities(
            input_tokens=16, output_tokens=8, requests=2
        )
    }
    buckets = usage_buckets(contract=contract, bucket="day", since=month, until=until)
    assert (sum(b.input_tokens for b in buckets), sum(b.output_tokens for b in buckets)) == (16, 8)
    so_far = month_to_date(contracts=[contract], since=month, until=timezone.now())
    assert (so_far.input_tokens, so_far.output_tokens) == (16, 8)
    looked_up = buyer_inference_request(organization=buyer_org, request_id=uuid.UUID(whole))
    assert looked_up is not None
    assert (looked_up.product, looked_up.billed_input_tokens, looked_up.billed_output_tokens) == (
        PRODUCT,
        PROMPT_TOKENS,
        5,
    )
    assert (looked_up.cost, looked_up.currency) == (D(0), contract.currency)

    # Never priced: no spend against caps, and the month rates the reservation's hours only.
    spend = inference_month_spend(moment=timezone.now())
    assert contract.pk not in spend.by_contract_micros
    rated = rate_month(month=month.date(), contract_ids=[contract.pk])[contract.pk]
    gpu_hours = D(2 * (until - month).days * 24)
    # The reservation's hours (and its SLA credit, the availability's business), no meter.
    assert [
        (line.kind, line.contract_line_id, line.quantity, line.unit_price, line.amount_minor)
        for line in rated
        if line.kind != BillingLineKind.SLA_CREDIT
    ] == [(BillingLineKind.RESERVED, deployed.line.pk, gpu_hours, RATE, cents(gpu_hours * RATE))]
    assert [(line.meter, line.metered_quantity) for line in rated] == [("", None)] * len(rated)


def _seconds_until(call, outcome: type[Exception] | None, *, limit_s: float = 5.0) -> float:
    """Seconds until ``call()`` raises ``outcome`` (None: succeeds); at most ``limit_s``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            call()
        except openai.APIStatusError as error:
            if outcome is not None and isinstance(error, outcome):
                return time.monotonic() - started
        else:
            if outcome is None:
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not {outcome or 'served'} within {limit_s} s")


def test_a_deployment_serves_only_while_running_and_is_gone_within_5_seconds_of_its_stop(
    deployed, start_gateway, buyer_owner
):
    agent_reports(deployed.workload, WorkloadState.STARTING)
    gateway = start_gateway()
    sdk = sdk_for(gateway, deployed.key)

    def call() -> None:
        sdk.chat.completions.create(model=deployed.model, messages=MESSAGES, max_tokens=2)

    # Starting: its owner sees it, but no node serves it yet.
    assert [m.id for m in sdk.models.list().data] == [deployed.model]
    with pytest.raises(openai.InternalServerError) as unavailable:
        call()
    assert unavailable.value.status_code == 503
    assert unavailable.value.body["code"] == "no_healthy_node"

    agent_reports(deployed.workload, WorkloadState.RUNNING)
    assert _seconds_until(call, None) < 5.0

    workload_stop(workload=deployed.workload, actor=buyer_owner)
    assert _seconds_until(call, openai.NotFoundError) < 5.0
    with pytest.raises(openai.NotFoundError) as gone:
        call()
    assert gone.value.body["code"] == "model_not_found"
    # Only the requests served while it ran reached a node, all of them node 0.
    assert {row.node_id for row in logged_rows(count=1)} == {deployed.node_ids[0]}
    assert set(InferenceRequest.objects.values_list("gateway_status", flat=True)) == {200}
