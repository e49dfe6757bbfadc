"""Contract pages and API: what a buyer sees and does; tenant isolation of every one."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.apps import apps
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from capacity.metering.models import UsageRecord
from contracts import on_demand
from contracts.attribution import attribute_usage_records
from contracts.billable_usage import MeteredQuantities, UsageKey, metered_quantities
from contracts.checkout import reservation_checkout
from contracts.models import (
    Allocation,
    Contract,
    ContractLine,
    ContractState,
    InferenceProduct,
    LineApiKey,
    LineKind,
)
from contracts.money import minor_to_major, round_money
from tests.capacity.metering.receipt_builders import meter_requests
from tests.contracts.usage_builders import instance
from tests.factories import stored_usage
from tests.http_headers import NO_STORE, cache_headers
from tests.tenancy import assert_hidden_from

# Reservations start minutes from now and usage lands in this hour: the calendar matters.
pytestmark = pytest.mark.calendar


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def start():
    return timezone.now() + timedelta(minutes=5)


@pytest.fixture
def reservation(offer, buyer_org, buyer_owner, start):
    return reservation_checkout(
        buyer=buyer_org,
        offer=offer,
        gpu_count=2,
        starts_at=start,
        term_months=1,
        actor=buyer_owner,
    )


@pytest.fixture
def inference_line(reservation, buyer_org, buyer_owner):
    return on_demand.on_demand_enable(
        buyer=buyer_org,
        actor=buyer_owner,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
    )


def page_urls(contract, line):
    return [
        reverse("contracts:detail", args=[contract.pk]),
        reverse("contracts:cancel", args=[contract.pk]),
        reverse("contracts:on_demand", args=[contract.pk]),
        reverse("contracts:line_api_key", args=[contract.pk, line.pk]),
    ]


def api_urls(contract):
    return [
        reverse("api_contract", args=[contract.pk]),
        reverse("api_contract_lines", args=[contract.pk]),
        reverse("api_contract_allocations", args=[contract.pk]),
        reverse("api_contract_usage", args=[contract.pk]),
    ]


def test_every_page_and_endpoint_is_hidden_from_other_tenants(
    reservation, inference_line, other_client, other_owner
):
    contract = reservation.contract
    for url in page_urls(contract, inference_line):
        assert_hidden_from(other_client, url)
    for url in page_urls(contract, inference_line)[1:]:
        assert_hidden_from(other_client, url, method="post", data={"name": "x", "choice": "x"})
    other_api = api_client(other_owner)
    for url in api_urls(contract):
        assert_hidden_from(other_api, url)
    assert other_api.get(reverse("api_contracts")).json()["count"] == 0
    other_page = other_client.get(reverse("contracts:list"))
    assert contract.reference.encode() not in other_page.content
    assert Contract.objects.get(pk=contract.pk).state == ContractState.ACTIVE


def test_partner_only_org_gets_404(reservation, partner_client, partner_owner):
    assert partner_client.get(reverse("contracts:list")).status_code == 404
    assert api_client(partner_owner).get(reverse("api_contracts")).status_code == 404


def test_list_and_detail(reservation, buyer_client):
    contract = reservation.contract
    listing = buyer_client.get(reverse("contracts:list"))
    assert contract.reference.encode() in listing.content
    detail = buyer_client.get(reverse("contracts:detail", args=[contract.pk]))
    assert detail.status_code == 200
    assert detail.content.count(b"GPU-") >= 2  # the two allocated GPUs' UUIDs


def test_cancel_at_term_end_through_the_page(reservation, buyer_client):
    url = reverse("contracts:cancel", args=[reservation.contract.pk]) + "?when=term_end"
    assert buyer_client.get(url).status_code == 200
    assert buyer_client.post(url).status_code == 302
    contract = Contract.objects.get()
    assert (contract.state, contract.cancel_at_term_end) == (ContractState.ACTIVE, True)


def test_enable_inference_and_create_key_through_pages(reservation, buyer_client, buyer_org):
    contract = reservation.contract
    product = InferenceProduct.objects.get(slug="llama-3.1-70b-instruct")
    response = buyer_client.post(
        reverse("contracts:on_demand", args=[contract.pk]), {"choice": f"product:{product.pk}"}
    )
    assert response.status_code == 302
    line = contract.lines.get(kind=LineKind.INFERENCE)
    page = buyer_client.post(
        reverse("contracts:line_api_key", args=[contract.pk, line.pk]), {"name": "chatbot"}
    )
    assert page.status_code == 200
    link = LineApiKey.objects.select_related("api_key").get(line=line)
    assert page.context["secret"].startswith(link.api_key.prefix)
    assert link.api_key.organization == buyer_org


def test_line_api_key_page_with_the_secret_is_not_stored(reservation, buyer_client):
    contract = reservation.contract
    product = InferenceProduct.objects.get(slug="llama-3.1-70b-instruct")
    buyer_client.post(
        reverse("contracts:on_demand", args=[contract.pk]), {"choice": f"product:{product.pk}"}
    )
    url = reverse(
        "contracts:line_api_key", args=[contract.pk, contract.lines.get(kind=LineKind.INFERENCE).pk]
    )

    form = buyer_client.get(url)
    page = buyer_client.post(url, {"name": "chatbot"})

    assert cache_headers(form) == (None, None)
    assert page.context["secret"] in page.content.decode()
    assert cache_headers(page) == NO_STORE


def test_api_reserve_quote_and_read(offer, buyer_owner, start):
    client = api_client(buyer_owner)
    body = {"offer": offer.pk, "gpu_count": 3, "starts_at": start.isoformat(), "term_months": 1}
    quote = client.post(reverse("api_market_quote"), body, format="json")
    assert quote.status_code == 200
    created = client.post(reverse("api_reservations"), body, format="json")
    assert created.status_code == 201
    assert created.json()["allocated_gpus"] == 3
    assert created.json()["quote"]["total_minor"] == quote.json()["total_minor"]
    contract_id = created.json()["contract"]["id"]
    # The new contract as checkout answers it is the contract as stored: signed, active,
    # on the default SLA policy.
    stored = client.get(reverse("api_contract", args=[contract_id])).json()
    assert created.json()["contract"] == stored
    assert (stored["state"], stored["sla_target_percent"]) == ("active", "99.50")
    lines = client.get(reverse("api_contract_lines", args=[contract_id])).json()
    assert [line["kind"] for line in lines["results"]] == ["reserved"]
    allocations = client.get(reverse("api_contract_allocations", args=[contract_id])).json()
    assert allocations["count"] == 3
    too_many = client.post(reverse("api_reservations"), {**body, "gpu_count": 9}, format="json")
    assert too_many.status_code == 400  # more than the offer lists
    assert "gpu_count" in too_many.json()
    taken = client.post(reverse("api_reservations"), {**body, "gpu_count": 6}, format="json")
    assert taken.status_code == 409  # 5 of the 8 are still free
    assert "Only 5 GPUs" in taken.json()["detail"][0]


def test_api_confirm_is_tied_to_the_quote(offer, partner_owner, buyer_owner):
    """Issue 13 #5: quoted at 2.10 (1 GPU for January: 744 h, 1,562.40), the partner cannot
    list 999999.9999, and a price raised within bounds refuses the buyer's confirm."""
    # Listed before the quote's day, whatever day the suite runs on (HASHGRID_TEST_NOW).
    type(offer).objects.filter(pk=offer.pk).update(available_from=datetime(2026, 1, 1, tzinfo=UTC))
    with time_machine.travel(datetime(2026, 12, 20, 9, tzinfo=UTC), tick=True):
        buyer, partner = api_client(buyer_owner), api_client(partner_owner)
        body = {"offer": offer.pk, "gpu_count": 1, "starts_at": "2027-01-01T00:00:00Z"}
        body["term_months"] = 1
        quote = buyer.post(reverse("api_market_quote"), body, format="json").json()
        assert (quote["price_per_gpu_hour"], quote["currency"], quote["total_minor"]) == (
            "2.1000",
            "USD",
            156240,
        )
        absurd = {"on_demand_price_per_gpu_hour": "999999.9999"}
        absurd["reserved_price_1m_per_gpu_hour"] = "999999.9999"
        refused = partner.patch(reverse("api_offer", args=[offer.pk]), absurd, format="json")
        assert refused.status_code == 400
        assert set(refused.json()) == set(absurd)
        raised = {"on_demand_price_per_gpu_hour": "9.9000", "reserved_price_1m_per_gpu_hour": "9.5"}
        changed = partner.patch(reverse("api_offer", args=[offer.pk]), raised, format="json")
        assert changed.status_code == 200
        confirm = {
            **body,
            "expected_price_per_gpu_hour": quote["price_per_gpu_hour"],
            "expected_currency": quote["currency"],
            "expected_total_minor": quote["total_minor"],
        }
        response = buyer.post(reverse("api_reservations"), confirm, format="json")
        assert response.status_code == 409
        assert response.json()["detail"] == [
            "The price changed since your quote: it was 2.1000 USD per GPU-hour, 1562.40 USD "
            "for the term, it is now 9.5000 USD per GPU-hour, 7068.00 USD for the term. "
            "Nothing was reserved; check the new price and confirm again."
        ]
        assert response.json()["quote"]["total_minor"] == 706800
        assert response.json()["quote"]["free_gpus"] == 8
        assert (Contract.objects.count(), ContractLine.objects.count()) == (0, 0)
        assert Allocation.objects.count() == 0
        # Only the price counts: the quote's total alone refuses too; the new quote passes.
        only_total = {**body, "expected_total_minor": 156240}
        response = buyer.post(reverse("api_reservations"), only_total, format="json")
        assert response.status_code == 409
        confirm["expected_price_per_gpu_hour"] = "9.5000"
        confirm["expected_total_minor"] = 706800
        created = buyer.post(reverse("api_reservations"), confirm, format="json")
        assert created.status_code == 201
        assert created.json()["line"]["price_per_gpu_hour"] == "9.5000"


def test_api_idempotency_key_reserves_once(offer, buyer_owner, start):
    client = api_client(buyer_owner)
    body = {"offer": offer.pk, "gpu_count": 2, "starts_at": start.isoformat(), "term_months": 1}
    key = {"HTTP_IDEMPOTENCY_KEY": "order-7f3c9a2e-0001"}
    first = client.post(reverse("api_reservations"), body, format="json", **key)
    again = client.post(reverse("api_reservations"), body, format="json", **key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert ContractLine.objects.count() == 1
    assert Allocation.objects.count() == 2
    other = client.post(reverse("api_reservations"), {**body, "gpu_count": 3}, format="json", **key)
    assert other.status_code == 400
    assert other.json() == {
        "detail": ["This confirmation was already used for another reservation; get a new quote."]
    }
    short = client.post(
        reverse("api_reservations"), body, format="json", HTTP_IDEMPOTENCY_KEY="short"
    )
    assert short.status_code == 400
    assert short.json() == {
        "Idempotency-Key": ["Send 16 to 64 characters, new for each reservation."]
    }
    assert ContractLine.objects.count() == 1


def test_api_offer_search(offer, buyer_owner):
    response = api_client(buyer_owner).get(reverse("api_market_offers"), {"gpu_count": 2})
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [offer.pk]
    assert response.json()["results"][0]["free_gpus"] == 8


def test_api_reserve_conflict_is_409(offer, buyer_owner, other_org, start):
    reservation_checkout(
        buyer=other_org, offer=offer, gpu_count=7, starts_at=start, term_months=1, actor=None
    )
    body = {"offer": offer.pk, "gpu_count": 2, "starts_at": start.isoformat(), "term_months": 1}
    response = api_client(buyer_owner).post(reverse("api_reservations"), body, format="json")
    assert response.status_code == 409
    assert "Only 1 GPU" in response.json()["detail"][0]


def _record(*, gpu, kind, ref, start, tokens=0, busy_ms=30_000, seq):
    """A record stored as ingest stores it (with its hourly rollup)."""
    return stored_usage(
        gpu=gpu,
        start=start,
        kind=kind,
        ref=ref,
        busy_ms=busy_ms,
        energy_mj=18_000_000,
        input_tokens=tokens,
        output_tokens=tokens // 2,
        requests=1 if tokens else 0,
        seq=seq,
    )


def test_attribution_ties_reserved_work_and_leaves_inference_to_receipts(
    reservation, inference_line, buyer_owner, devices
):
    """Reserved work is the allocation's; an inference window naming the key by its
    prefix (the retired convention) is nobody's; the key's receipts bill its line."""
    api_key, _secret = on_demand.line_api_key_create(
        line=inference_line, name="gw", actor=buyer_owner
    )
    allocated = reservation.allocations[0].gpu_device
    free_gpu = next(
        d for d in devices if d.pk not in {a.gpu_device_id for a in reservation.allocations}
    )
    now = timezone.now().replace(second=0, microsecond=0)
    inside = reservation.line.starts_at + timedelta(minutes=1)
    reserved = _record(gpu=allocated, kind="allocation", ref="alloc-x", start=inside, seq=1)
    prefixed = _record(
        gpu=free_gpu,
        kind="inference",
        ref=f"llama-3.1-8b-instruct@{api_key.prefix}",
        start=now,
        tokens=1000,
        seq=2,
    )
    assert attribute_usage_records(records=UsageRecord.objects.all()) == 1
    assert attribute_usage_records(records=UsageRecord.objects.all()) == 0  # idempotent
    reserved.refresh_from_db()
    prefixed.refresh_from_db()
    assert reserved.allocation_id == reservation.allocations[0].pk
    assert (prefixed.api_key_id, prefixed.line_id) == (None, None)
    meter_requests(
        gpu=free_gpu,
        line_id=inference_line.pk,
        key_id=api_key.pk,
        product="llama-3.1-8b-instruct",
        at=now,
        input_tokens=1000,
        output_tokens=500,
    )
    assert metered_quantities(
        start=now - timedelta(hours=1), end=now + timedelta(hours=1), line_ids=[inference_line.pk]
    ) == {
        UsageKey(inference_line.pk): MeteredQuantities(
            input_tokens=1000, output_tokens=500, requests=1
        )
    }
    # The metering seam delegates to contracts.
    from capacity.metering.attribution import attribute_records

    assert attribute_records(records=UsageRecord.objects.all()) == 0


def test_on_demand_gpu_time_is_attributed_by_assignment_never_by_key_refs(
    reservation, offer, buyer_org, buyer_owner, devices
):
    line = on_demand.on_demand_enable(buyer=buyer_org, actor=buyer_owner, offer=offer)
    api_key, _secret = on_demand.line_api_key_create(line=line, name="jobs", actor=buyer_owner)
    held = {a.gpu_device_id for a in reservation.allocations}
    free_gpu = next(d for d in devices if d.pk not in held)
    reserved_gpu = next(d for d in devices if d.pk in held)
    start = timezone.now() + timedelta(minutes=1)
    workload = instance(line=line, gpus=[free_gpu], start=start - timedelta(minutes=5))
    assigned = _record(gpu=free_gpu, kind="assignment", ref=workload.public_id, start=start, seq=1)
    # The retired key-prefix ref names nobody, on a free GPU or a reserved one.
    by_key = _record(
        gpu=free_gpu, kind="allocation", ref=f"gpu@{api_key.prefix}", start=start, seq=2
    )
    inside = reservation.line.starts_at + timedelta(minutes=1)
    in_reservation = _record(
        gpu=reserved_gpu, kind="allocation", ref=f"gpu@{api_key.prefix}", start=inside, seq=3
    )

    assert attribute_usage_records(records=UsageRecord.objects.all()) == 2
    assert attribute_usage_records(records=UsageRecord.objects.all()) == 0  # idempotent

    rows = {
        r.seq: (r.allocation_id, r.workload_id, r.line_id, r.api_key_id)
        for r in UsageRecord.objects.filter(pk__in=[assigned.pk, by_key.pk, in_reservation.pk])
    }
    reserved_allocation = next(
        a for a in reservation.allocations if a.gpu_device_id == reserved_gpu.pk
    )
    instance_allocation = workload.allocations.get()
    assert rows == {
        1: (instance_allocation.pk, workload.pk, line.pk, None),
        2: (None, None, None, None),
        3: (reserved_allocation.pk, None, reservation.line.pk, None),
    }


def test_beat_attribution_catches_up_below_its_cursor_within_the_overlap(
    offer, buyer_org, buyer_owner, devices
):
    from capacity.metering.attribution import attribute_new_records
    from capacity.metering.models import AttributionCursor

    line = on_demand.on_demand_enable(buyer=buyer_org, actor=buyer_owner, offer=offer)
    start = timezone.now() + timedelta(minutes=1)
    workload = instance(line=line, gpus=[devices[6]], start=start)
    ref = workload.public_id
    late = _record(gpu=devices[6], kind="assignment", ref=ref, start=start, seq=1)
    # A run already moved past this id (its insert committed after that run's snapshot).
    AttributionCursor.objects.create(pk=1, last_id=late.pk)

    assert attribute_new_records(overlap=1) == 1
    late.refresh_from_db()
    assert late.workload_id == workload.pk
    # Below the overlap nothing is scanned again.
    missed = _record(gpu=devices[6], kind="assignment", ref=ref, start=start, seq=2)
    AttributionCursor.objects.filter(pk=1).update(last_id=missed.pk + 5)
    assert attribute_new_records(overlap=5) == 0
    missed.refresh_from_db()
    assert missed.workload_id is None
    assert AttributionCursor.objects.get().last_id == missed.pk + 5


def test_usage_api_json_and_csv(reservation, inference_line, buyer_owner, devices):
    if not apps.is_installed("capacity.metering"):
        pytest.fail("Run with --ds=tests.metering_settings (metering installed)", pytrace=False)
    api_key, _ = on_demand.line_api_key_create(line=inference_line, name="gw", actor=buyer_owner)
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1, minutes=1)
    period = {
        "since": (hour - timedelta(hours=2)).isoformat(),
        "until": (hour + timedelta(hours=2)).isoformat(),
    }
    for at, tokens in ((hour, 1000), (hour + timedelta(minutes=2), 500)):
        meter_requests(
            gpu=devices[7],
            line_id=inference_line.pk,
            key_id=api_key.pk,
            product="llama-3.1-8b-instruct",
            at=at,
            input_tokens=tokens,
            output_tokens=tokens // 2,
        )
    client = api_client(buyer_owner)
    url = reverse("api_contract_usage", args=[reservation.contract.pk])
    rows = client.get(url, {"bucket": "hour", **period}).json()
    until = hour + timedelta(hours=2)
    rate = reservation.line.price_per_gpu_hour
    # Tokens at the product's prices per million: 1500 in at 0.05, 750 out at 0.08.
    tokens_exact = Decimal(1500) * Decimal("0.05") / 10**6 + Decimal(750) * Decimal("0.08") / 10**6

    def cost(bucket_start: datetime, length: timedelta, *, tokens: bool) -> str:
        """2 reserved GPUs for the part of the bucket they are held, plus the tokens."""
        held = min(bucket_start + length, until) - max(bucket_start, reservation.line.starts_at)
        hours = Decimal(max(held, timedelta(0)) // timedelta(microseconds=1)) / 3_600_000_000
        exact = 2 * hours * rate + (tokens_exact if tokens else 0)
        return str(minor_to_major(round_money(exact)))

    def stamp(moment: datetime) -> str:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")

    used_hour = hour.replace(minute=0)
    assert [row for row in rows if row["input_tokens"]] == [
        {
            "start": stamp(used_hour),
            "busy_ms": 0,
            "energy_mj": 0,
            "input_tokens": 1500,
            "output_tokens": 750,
            "requests": 2,
            "cost": cost(used_hour, timedelta(hours=1), tokens=True),
            "currency": "USD",
        }
    ]
    # Reserved GPUs cost while held, used or not: every hour they were held is listed.
    first_hour = reservation.line.starts_at.replace(minute=0, second=0, microsecond=0)
    held_hours = [
        first_hour + timedelta(hours=n) for n in range(6) if first_hour + timedelta(hours=n) < until
    ]
    assert [row["start"] for row in rows] == [stamp(start) for start in held_hours]
    assert [row["cost"] for row in rows] == [
        cost(start, timedelta(hours=1), tokens=start == used_hour) for start in held_hours
    ]
    response = client.get(url, {"bucket": "day", "format": "csv", **period})
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table[0] == [
        "start (UTC)",
        "busy GPU time (ms)",
        "energy (mJ)",
        "input tokens (tokens)",
        "output tokens (tokens)",
        "requests (count)",
        "cost (USD)",
        "currency (ISO 4217)",
    ]
    used_day = used_hour.replace(hour=0)
    used = [row for row in table[1:] if row[0] == stamp(used_day)]
    assert [row[1:] for row in used] == [
        [
            "0",
            "0",
            "1500",
            "750",
            "2",
            cost(used_day, timedelta(days=1), tokens=True),
            "USD",
        ]
    ]


def test_dashboard_partial_renders(reservation, buyer_client):
    page = buyer_client.get(reverse("contracts:usage"))
    assert page.status_code == 200
    assert b"data-buyer-dashboard" in page.content
    assert page.context["summary"].gpus_held in (0, 2)  # starts in five minutes


def test_node_with_reservations_cannot_be_retired(reservation, partner_owner):
    from django.core.exceptions import ValidationError

    from capacity.services import node_retire

    node = reservation.allocations[0].gpu_device.node
    with pytest.raises(ValidationError, match="reservations"):
        node_retire(node=node, actor=partner_owner)
