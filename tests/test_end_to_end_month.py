"""One month, end to end: seed, the real fleet reports usage, sweeps ingest it, a buyer
reserves GPUs and uses on-demand inference, the period closes and charges the card
through localstripe, settlement drafts the partner's statement, finance approves and
pays it (a Stripe Connect transfer), and ``reconcile`` finds no difference.

The fleet simulator (a subprocess) runs on the real clock, so the month under test is
the current one: the sweep ingests the fleet's last half hour, and the clock moves
(time-machine) only to buy before the month and to close it after its grace window.
Metering runs in-process (``sweep`` enqueues straight into ``batch.poll_and_store``),
over HTTP to the fleet: the worker itself is what tests/capacity/metering tests.

The buyer's inference runs on the fleet's nodes with receipts the platform signed (agent
protocol v1.1, as the gateway sends them): the tokens billed are the ones each node's
engine answered with, journaled per receipt and metered by a poll; the nodes that
served them are the ones the partner's statement credits. No workload is assigned here,
so the fleet's GPUs are otherwise idle (tests/contracts/test_metering_attribution.py and
tests/capacity/metering/ cover assigned work).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from io import StringIO
from pathlib import Path

import httpx
import pytest
import time_machine
from django.core.management import call_command
from django.db.models import Count, Sum
from django.utils import timezone

from billing.closing import close_period
from billing.models import (
    Attribution,
    Invoice,
    InvoiceStatus,
    JournalLine,
    LineKind,
    PaymentStatus,
    Payout,
    PayoutStatus,
    RevenueKind,
    SettlementStatement,
    StatementStatus,
)
from billing.periods import finalizable_at, month_bounds, month_of, next_month
from billing.settlement.agreements import agreement_create
from billing.settlement.payouts import statement_pay
from billing.settlement.statements import statement_approve
from capacity.agent.receipts import RECEIPT_HEADER, Receipt, sign_receipt
from capacity.metering import batch, sweep
from capacity.metering.attribution import attribute_new_records
from capacity.metering.models import (
    InferenceRequest,
    InferenceUsageHour,
    NodePollState,
    UsageRecord,
)
from capacity.metering.selectors import rollup_totals, usage_totals
from capacity.models import Node
from config.gateway_keys import receipt_public_key_b64, receipt_signing_key
from contracts.checkout import reservation_checkout
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from devtools.simulated_fleet import (
    FleetProcess,
    expected_totals,
    fetch_truth,
    register_fleet_nodes,
)
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    connect_fake,
    connect_settings,
    localstripe,
    save_card,
    stripe_proxy,
    stripe_settings,
)
from tests.billing.settlement_builders import observe_available, onboard
from tests.billing.stripe_fakes import free_port
from tests.factories import OfferFactory, SiteFactory, gpu_pool

pytestmark = [pytest.mark.django_db, pytest.mark.calendar]
D = Decimal
FLEET_NODES = 4
RESERVED_GPUS = 8
RESERVED_RATE = D("2.1000")
# High prices, so the handful of requests sent make whole cents.
INPUT_PRICE, OUTPUT_PRICE = D("150.0000"), D("600.0000")
# Requests sent to each fleet node, and their max_tokens (the engine serves exactly that).
REQUEST_MAX_TOKENS = (700, 1300)
SHARES = {RevenueKind.RESERVED: D("0.8000"), RevenueKind.INFERENCE: D("0.7000")}


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(D("1"), rounding=ROUND_HALF_UP))


@contextmanager
def running_fleet(tmp_path: Path) -> Iterator[FleetProcess]:
    process = FleetProcess(
        nodes=FLEET_NODES,
        port=free_port(),
        seed=2026,
        gpus_per_node=2,
        window_seconds=60,
        backfill_windows=30,
        state_dir=tmp_path / "fleet",
        platform_key=receipt_public_key_b64(),
        engine_args=("--engine-ttft-ms=0", "--engine-tokens-per-second=0"),
    )
    with process:
        yield process


def _serve_requests(
    fleet: FleetProcess, node_ids: list[int], *, line, api_key
) -> list[tuple[int, int, int]]:
    """The buyer's chat completions, ``REQUEST_MAX_TOKENS`` on every fleet node, each with
    a receipt the platform signed for that node (as the gateway does); ``(node id, prompt
    tokens, completion tokens)`` of each answer."""
    delivered = []
    for index, node in enumerate(Node.objects.filter(pk__in=node_ids).order_by("pk")):
        assert node.agent_url == fleet.node_url(index)
        for max_tokens in REQUEST_MAX_TOKENS:
            receipt = Receipt(
                v=1,
                rid=uuid.uuid4().hex,
                node=node.pk,
                agent=node.agent_public_key,
                line=line.pk,
                key=api_key.pk,
                product=line.inference_product.slug,
                max_input_tokens=1_000,
                max_output_tokens=max_tokens,
                iat=int(timezone.now().timestamp()),
            )
            answer = httpx.post(
                f"{node.agent_url}/v1/inference/chat/completions",
                json={
                    "model": receipt.product,
                    "messages": [{"role": "user", "content": "summarize the month"}],
                    "max_tokens": max_tokens,
                },
                headers={RECEIPT_HEADER: sign_receipt(receipt_signing_key(), receipt)},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            usage = answer.json()["usage"]
            delivered.append((node.pk, usage["prompt_tokens"], usage["completion_tokens"]))
    return delivered


def _sweep_in_process(now: datetime) -> None:
    """One sweep; each batch is polled and stored here instead of on a worker."""

    def enqueue(node_ids: list[int]) -> None:
        batch.poll_and_store(node_ids, now=now, interval_seconds=60)

    sweep.sweep(now=now, interval_seconds=60, enqueue=enqueue, batch_size=2)


def test_a_month_from_fleet_usage_to_paid_out_statements_reconciles(
    buyer_org,
    buyer_owner,
    partner_org,
    tmp_path,
    localstripe,  # noqa: F811 (fixtures imported above)
    connect_fake,  # noqa: F811 (fixtures imported above)
    django_capture_on_commit_callbacks,
):
    month = month_of(timezone.now())
    month_start, month_end = month_bounds(month)

    # -- seed: the partner's sites, GPUs, offer and agreements; the buyer's card ----------
    for kind, share in SHARES.items():
        agreement_create(
            partner=partner_org,
            line_kind=kind,
            partner_share=share,
            effective_from=date(2026, 1, 1),
            actor=None,
        )
    site = SiteFactory(organization=partner_org, name="Permian Flare 1")
    devices = gpu_pool(site=site, gpus=RESERVED_GPUS, per_node=4)
    offer = OfferFactory(
        site=site,
        gpu_count=RESERVED_GPUS,
        reserved_price_1m_per_gpu_hour=RESERVED_RATE,
        available_from=month_start - timedelta(days=60),
    )
    llama = InferenceProduct.objects.create(
        slug="hashgrid-llama-70b",
        name="Llama 70B",
        input_price_per_million_tokens=INPUT_PRICE,
        output_price_per_million_tokens=OUTPUT_PRICE,
    )
    llama.nodes.set({device.node for device in devices})
    save_card(buyer_org, localstripe)

    # -- before the month: reserve 8 GPUs from the 15th, enable inference, a key ----------
    reserved_from = month_start + timedelta(days=14)
    with time_machine.travel(month_start - timedelta(days=3), tick=False):
        reserved = reservation_checkout(
            buyer=buyer_org,
            offer=offer,
            gpu_count=RESERVED_GPUS,
            starts_at=reserved_from,
            term_months=1,
            actor=buyer_owner,
        ).line
        inference = on_demand_enable(buyer=buyer_org, actor=buyer_owner, inference_product=llama)
        api_key, _secret = line_api_key_create(line=inference, name="prod", actor=buyer_owner)
    assert inference.contract_id == reserved.contract_id
    observe_available(
        [a.gpu_device for a in reserved.allocations.all()],
        since=reserved_from.date(),
        until=month_end.date(),
    )

    # -- the fleet produces usage; a sweep ingests it, exactly; the buyer's requests run
    # on its nodes with receipts, and the next poll meters them ---------------------------
    with running_fleet(tmp_path) as fleet:
        fleet_node_ids = register_fleet_nodes(organization=partner_org, fleet=fleet)
        nodes = range(len(fleet_node_ids))
        heads_before = fetch_truth(fleet, nodes).head_seqs
        with django_capture_on_commit_callbacks(execute=True):
            _sweep_in_process(timezone.now())
        heads_after = fetch_truth(fleet, nodes).head_seqs
        attribute_new_records()  # what beat runs every minute
        cursors = dict(NodePollState.objects.values_list("node_id", "last_seq"))
        last_seqs = {index: cursors[node_id] for index, node_id in enumerate(fleet_node_ids)}
        # The sweep followed every agent to its head: at least what each held when the
        # sweep began, at most what it holds now (a minute may end while the sweep runs).
        for index in nodes:
            assert heads_before[index] <= last_seqs[index] <= heads_after[index], (
                index,
                last_seqs,
            )
        stored = usage_totals(node_ids=fleet_node_ids)
        assert stored == expected_totals(fleet, last_seqs)
        assert rollup_totals(node_ids=fleet_node_ids) == stored
        delivered = _serve_requests(fleet, fleet_node_ids, line=inference, api_key=api_key)
        with django_capture_on_commit_callbacks(execute=True):
            batch.poll_and_store(fleet_node_ids, now=timezone.now(), interval_seconds=60)
    # Every request billed exactly what its node's engine answered, once.
    billed = InferenceRequest.objects.filter(line_id=inference.pk).aggregate(
        requests=Count("pk"),
        input_tokens=Sum("billed_input_tokens"),
        output_tokens=Sum("billed_output_tokens"),
    )
    assert billed == {
        "requests": len(delivered),
        "input_tokens": sum(usage[1] for usage in delivered),
        "output_tokens": sum(usage[2] for usage in delivered),
    }
    assert InferenceUsageHour.objects.filter(line_id=inference.pk).aggregate(
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens")
    ) == {"input_tokens": billed["input_tokens"], "output_tokens": billed["output_tokens"]}
    # No workload was assigned, so every other record the fleet sent is an idle GPU's.
    assert set(
        UsageRecord.objects.filter(node_id__in=fleet_node_ids)
        .exclude(workload_kind="inference")
        .values_list("workload_kind", flat=True)
    ) == {"idle"}
    assert not UsageRecord.objects.filter(api_key_id__isnull=False).exists()

    # -- the month ends: close it (draft, finalize after grace, charge, statements) -------
    closed_at = finalizable_at(month) + timedelta(hours=1)
    with time_machine.travel(closed_at, tick=False):
        result = close_period(month=month)
    assert (result.finalized, result.charged, result.charge_failures) == (1, 1, 0)
    invoice = Invoice.objects.get(contract=reserved.contract, month=month)
    lines = {line.kind: line.amount_minor for line in invoice.lines.all()}
    reserved_hours = D((month_end - reserved_from).total_seconds()) / 3600
    expected_lines = {
        LineKind.RESERVED: cents(RESERVED_GPUS * reserved_hours * RESERVED_RATE),
        LineKind.INFERENCE_INPUT: cents(D(billed["input_tokens"]) / 1_000_000 * INPUT_PRICE),
        LineKind.INFERENCE_OUTPUT: cents(D(billed["output_tokens"]) / 1_000_000 * OUTPUT_PRICE),
    }
    # A line of no tokens is not invoiced (only when this runs in a month's first minutes).
    assert lines == {kind: amount for kind, amount in expected_lines.items() if amount}
    assert (invoice.status, invoice.payment_status) == (
        InvoiceStatus.FINALIZED,
        PaymentStatus.PAID,
    )
    assert invoice.total_minor == sum(lines.values())
    # Numbers follow the finalization date: December's invoice is finalized in January.
    assert invoice.finalized_at == closed_at
    assert invoice.number == f"HG-{closed_at.year}-000001"
    intents = localstripe.payment_intents_of(buyer_org.billing_customer.stripe_customer_id)
    assert [intent["amount"] for intent in intents] == [invoice.total_minor]

    # Every paid line is attributed in full; shares + platform fees = the line, exactly.
    for line in invoice.lines.all():
        sums = Attribution.objects.filter(invoice_line=line).aggregate(
            amount=Sum("amount_minor"),
            share=Sum("partner_share_minor"),
            fee=Sum("platform_fee_minor"),
        )
        assert sums["amount"] == line.amount_minor == sums["share"] + sums["fee"], line.kind
    reserved_line = invoice.lines.get(kind=LineKind.RESERVED)
    assert {a.node_id for a in reserved_line.attributions.all()} == {d.node_id for d in devices}
    # Inference is credited to exactly the nodes that served it, by their billed tokens.
    output_line = invoice.lines.get(kind=LineKind.INFERENCE_OUTPUT)
    assert {a.node_id for a in output_line.attributions.all()} == set(fleet_node_ids)

    statement = SettlementStatement.objects.get(partner=partner_org, month=month)
    partner_total = Attribution.objects.filter(statement=statement).aggregate(
        total=Sum("partner_share_minor")
    )["total"]
    assert (statement.status, statement.earnings_minor, statement.payout_minor) == (
        StatementStatus.DRAFT,
        partner_total,
        partner_total,
    )

    # -- finance approves and pays the statement (Connect transfer) ----------------------
    onboard(partner_org, connect_fake)
    with time_machine.travel(finalizable_at(month) + timedelta(days=2), tick=False):
        statement_approve(statement=statement, actor=None)
        payout = statement_pay(statement=statement, actor=None)
    assert payout is not None
    assert (payout.status, payout.amount_minor) == (PayoutStatus.PAID, partner_total)
    statement.refresh_from_db()
    assert statement.status == StatementStatus.PAID
    assert Payout.objects.count() == 1

    # -- the books: every journal entry balances; reconcile is clean --------------------
    unbalanced = (
        JournalLine.objects.values("entry_id", "currency")
        .annotate(total=Sum("amount_minor"))
        .exclude(total=0)
    )
    assert list(unbalanced) == []
    out = StringIO()
    call_command("reconcile", month.strftime("%Y-%m"), stdout=out)  # raises on a difference
    report = out.getvalue()
    assert "No differences" in report
    assert "Stripe transfers = payouts: 1 compared" in report
    # The next month has begun: nothing of it was billed by this close.
    assert not Invoice.objects.filter(month=next_month(month)).exists()
