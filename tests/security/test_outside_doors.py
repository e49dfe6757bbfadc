"""Bad input on the three doors strangers knock on: agent enrollment, agent responses, and
Stripe webhooks. Malformed, oversized, replayed and forged payloads get a precise 4xx (or
quarantine, for agent pages), and the database holds exactly what it held before: nothing
stored that should not be, nothing billed.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.cache import cache
from django.db.models import Model

from accounts.models import AuditEvent
from billing.models import Invoice, JournalEntry, StripeEvent
from capacity import services
from capacity.agent.protocol import SIGNATURE_HEADER, encode_body, public_key_b64, sign_body
from capacity.agent_client import MAX_BODY_BYTES
from capacity.metering import batch
from capacity.metering.models import (
    HourlyUsage,
    NodePollState,
    QuarantinedRecord,
    QuarantineReason,
    UsageRecord,
)
from capacity.models import EnrollmentCode, GpuDevice, Node
from tests.billing.stripe_fakes import WEBHOOK_SECRET, sign_payload
from tests.capacity.conftest import h100_inventory
from tests.capacity.metering.conftest import (  # noqa: F401 (fixtures)
    POLL_TOKEN,
    T0,
    FakeAgent,
    agent_key,
    fake_agent,
    make_fields,
    node,
    partner_admin,
)
from tests.factories import SiteFactory, catalog_gpu

pytestmark = pytest.mark.django_db

ENROLL_URL = "/api/v1/agents/enroll"
WEBHOOK_URL = "/billing/stripe/webhook/"
# Django refuses a body above DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default) with a 400.
OVERSIZED_BYTES = 3 * 1024 * 1024


def db_state(*models: type[Model]) -> dict[str, object]:
    """Every row of ``models`` (ordered), to prove a refused request changed nothing."""
    return {
        model.__name__: list(model._default_manager.order_by("pk").values()) for model in models
    }


# -- agent enrollment --------------------------------------------------------------------

ENROLLMENT_MODELS = (Node, EnrollmentCode, GpuDevice, AuditEvent)


@pytest.fixture(autouse=True)
def _fresh_throttle():
    cache.clear()  # the enroll throttle counts in the default cache
    yield
    cache.clear()


@pytest.fixture
def enrollment_code(partner_org) -> str:
    """The one-time enrollment code of a node its partner just created."""
    created = services.node_create(
        site=SiteFactory(organization=partner_org),
        actor=None,
        name="door-n01",
        gpu_model=catalog_gpu(),
        gpu_count=2,
        cpu_cores=64,
        ram_gib=512,
    )
    return created.enrollment_code


def _enroll_body(code: str, public_key: str | None = None, **overrides: object) -> dict:
    body: dict[str, object] = {
        "code": code,
        "public_key": (
            public_key_b64(Ed25519PrivateKey.generate()) if public_key is None else public_key
        ),
        "url": "http://10.0.4.17:9100",
        "gpus": h100_inventory(2),
        "agent_version": "1.0.0",
    }
    body.update(overrides)
    return body


def _post_json(client, url: str, body: bytes | str, **headers: str):
    return client.post(url, data=body, content_type="application/json", **headers)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json at all",
        b'{"code": "x", "public_key": ',
        b"[]",
        b"null",
        b'"just a string"',
        b"\xff\xfe\x00garbage",
    ],
    ids=["truncated", "text", "cut-off", "array", "null", "string", "binary"],
)
def test_enroll_malformed_json_is_400_and_stores_nothing(client, enrollment_code, raw):
    before = db_state(*ENROLLMENT_MODELS)

    response = _post_json(client, ENROLL_URL, raw)

    assert response.status_code == 400
    assert db_state(*ENROLLMENT_MODELS) == before


def test_enroll_with_a_form_body_is_415(client, enrollment_code):
    code = enrollment_code
    before = db_state(*ENROLLMENT_MODELS)

    response = client.post(ENROLL_URL, data={"code": code})

    assert response.status_code == 415
    assert db_state(*ENROLLMENT_MODELS) == before


def test_enroll_oversized_body_is_refused_and_stores_nothing(client, enrollment_code):
    code = enrollment_code
    body = _enroll_body(code, agent_version="1.0.0")
    body["padding"] = "x" * OVERSIZED_BYTES
    before = db_state(*ENROLLMENT_MODELS)

    response = _post_json(client, ENROLL_URL, json.dumps(body))

    # Django's DATA_UPLOAD_MAX_MEMORY_SIZE refusal (RequestDataTooBig) is a 400.
    assert response.status_code == 400
    assert db_state(*ENROLLMENT_MODELS) == before


def test_enroll_too_many_gpus_is_400(client, enrollment_code):
    """A body under the size limit but listing far more GPUs than the node has."""
    code = enrollment_code
    before = db_state(*ENROLLMENT_MODELS)

    response = _post_json(
        client, ENROLL_URL, json.dumps(_enroll_body(code, gpus=h100_inventory(5000)))
    )

    assert response.status_code == 400
    assert db_state(*ENROLLMENT_MODELS) == before


def test_enroll_replayed_code_is_400_and_keeps_the_first_agent(client, enrollment_code):
    code = enrollment_code
    first = _post_json(client, ENROLL_URL, json.dumps(_enroll_body(code)))
    assert first.status_code == 201
    after_first = db_state(*ENROLLMENT_MODELS)

    # The same request again (a replay), then the code with an attacker's key and URL.
    replay = _post_json(client, ENROLL_URL, json.dumps(_enroll_body(code)))
    hijack = _post_json(
        client, ENROLL_URL, json.dumps(_enroll_body(code, url="http://attacker.example:9100"))
    )

    assert replay.status_code == 400
    assert replay.json() == {"code": ["enrollment code already used"]}
    assert hijack.status_code == 400
    assert "poll_token" not in hijack.json()
    assert db_state(*ENROLLMENT_MODELS) == after_first


@pytest.mark.parametrize(
    "public_key",
    [
        "not base64 !!",
        base64.b64encode(b"\x01" * 31).decode(),  # one byte short
        base64.b64encode(b"\x01" * 33).decode(),  # one byte long
        base64.b64encode(b"\x01" * 4096).decode(),  # absurdly long
        "",
        "AAAA" * 20 + "=",  # bad padding
    ],
    ids=["not-base64", "31-bytes", "33-bytes", "4096-bytes", "empty", "bad-padding"],
)
def test_enroll_forged_public_key_is_400_and_leaves_the_code_usable(
    client, enrollment_code, public_key
):
    code = enrollment_code
    before = db_state(*ENROLLMENT_MODELS)

    response = _post_json(client, ENROLL_URL, json.dumps(_enroll_body(code, public_key)))

    assert response.status_code == 400
    assert "poll_token" not in response.json()
    assert db_state(*ENROLLMENT_MODELS) == before
    # Refused input consumed nothing: the real agent can still enroll.
    assert _post_json(client, ENROLL_URL, json.dumps(_enroll_body(code))).status_code == 201


def test_enroll_unknown_code_is_400(client, enrollment_code):
    before = db_state(*ENROLLMENT_MODELS)

    response = _post_json(client, ENROLL_URL, json.dumps(_enroll_body("HG-FORGED-CODE")))

    assert response.status_code == 400
    assert db_state(*ENROLLMENT_MODELS) == before


# -- agent responses (metering) ----------------------------------------------------------

METERING_MODELS = (UsageRecord, HourlyUsage, QuarantinedRecord, Invoice, JournalEntry)
NOW = T0 + timedelta(hours=2)


def poll(node_pk: int, transport: httpx.MockTransport) -> batch.BatchResult:
    return batch.poll_and_store(
        [node_pk],
        now=NOW,
        interval_seconds=60,
        transport=transport,
        always_check_health=False,
    )


def cursor_of(node_pk: int) -> tuple:
    state = NodePollState.objects.get(node_id=node_pk)
    return (state.journal_epoch, state.last_seq, state.last_hash)


def crafted(body: bytes, *, key: Ed25519PrivateKey | None, token: str = POLL_TOKEN):
    """An agent that answers every authorized request with ``body`` (signed by ``key``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return httpx.Response(401)
        headers = {SIGNATURE_HEADER: sign_body(key, body)} if key is not None else {}
        return httpx.Response(200, content=body, headers=headers)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"journal_epoch": "e", "records": "nope", "head_seq": 1}',
        b'{"journal_epoch": "e", "records": [], "head_seq": -1}',
        b'{"journal_epoch": "' + b"e" * 65 + b'", "records": [], "head_seq": 0}',
        b'{"journal_epoch": "e", "records": [1, 2], "head_seq": 2}',
    ],
    ids=["truncated", "array", "records-not-list", "negative-head", "long-epoch", "scalars"],
)
def test_malformed_signed_page_is_a_poll_error_and_stores_nothing(node, agent_key, body):  # noqa: F811
    before, cursor = db_state(*METERING_MODELS), cursor_of(node.pk)

    result = poll(node.pk, crafted(body, key=agent_key))

    assert (result.polled, result.inserted, result.quarantined, result.failed) == (1, 0, 0, 1)
    assert NodePollState.objects.get(node=node).last_error.startswith("malformed")
    assert db_state(*METERING_MODELS) == before
    assert cursor_of(node.pk) == cursor


def test_oversized_page_is_a_poll_error_and_stores_nothing(node, agent_key):  # noqa: F811
    body = encode_body(
        {"journal_epoch": "e", "records": [], "head_seq": 0, "pad": "x" * MAX_BODY_BYTES}
    )
    before, cursor = db_state(*METERING_MODELS), cursor_of(node.pk)

    result = poll(node.pk, crafted(body, key=agent_key))

    assert (result.inserted, result.quarantined, result.failed) == (0, 0, 1)
    assert "too large" in NodePollState.objects.get(node=node).last_error
    assert db_state(*METERING_MODELS) == before
    assert cursor_of(node.pk) == cursor


def test_replayed_page_is_stored_once(node, fake_agent):  # noqa: F811
    fake_agent.append(make_fields(0, 0, busy_ms=10_000), make_fields(1, 0, busy_ms=20_000))
    first = poll(node.pk, fake_agent.transport())
    assert (first.inserted, first.quarantined) == (2, 0)
    after_first, cursor = db_state(*METERING_MODELS), cursor_of(node.pk)
    page = fake_agent._respond  # the same signed page, served again from seq 0

    replay_agent = FakeAgent(key=fake_agent.key, records=list(fake_agent.records))
    replay_agent.handle = lambda request: page(  # type: ignore[method-assign]
        {
            "journal_epoch": fake_agent.epoch,
            "records": fake_agent.records,
            "head_seq": 2,
            "head_hash": fake_agent.records[-1]["hash"],
        }
    )
    replay = poll(node.pk, replay_agent.transport())

    assert (replay.inserted, replay.quarantined, replay.failed) == (0, 0, 0)
    assert db_state(*METERING_MODELS) == after_first
    assert cursor_of(node.pk) == cursor
    assert UsageRecord.objects.count() == 2


def test_forged_signature_quarantines_and_bills_nothing(node, fake_agent):  # noqa: F811
    fake_agent.append(make_fields(0, 0, busy_ms=10_000), make_fields(1, 0, busy_ms=20_000))
    fake_agent.sign_with = Ed25519PrivateKey.generate()  # not the enrolled key
    cursor = cursor_of(node.pk)

    result = poll(node.pk, fake_agent.transport())

    assert (result.inserted, result.quarantined) == (0, 2)
    assert set(QuarantinedRecord.objects.values_list("reason", flat=True)) == {
        QuarantineReason.BAD_SIGNATURE
    }
    assert not UsageRecord.objects.exists()
    assert not HourlyUsage.objects.exists()  # rating reads the rollups: nothing to bill
    assert not Invoice.objects.exists()
    assert cursor_of(node.pk) == cursor


def test_unsigned_page_quarantines_and_bills_nothing(node, fake_agent):  # noqa: F811
    fake_agent.append(make_fields(0, 0))
    page = encode_body(
        {
            "journal_epoch": fake_agent.epoch,
            "records": fake_agent.records,
            "head_seq": 1,
            "head_hash": fake_agent.records[-1]["hash"],
        }
    )
    cursor = cursor_of(node.pk)

    result = poll(node.pk, crafted(page, key=None))

    assert (result.inserted, result.quarantined) == (0, 1)
    assert not UsageRecord.objects.exists()
    assert not HourlyUsage.objects.exists()
    assert cursor_of(node.pk) == cursor


def test_tampered_record_breaks_the_chain_and_is_quarantined(node, fake_agent):  # noqa: F811
    """A validly signed page whose record was edited after hashing (busy_ms inflated)."""
    fake_agent.append(make_fields(0, 0, busy_ms=10_000))
    fake_agent.records[0] = {**fake_agent.records[0], "busy_ms": 60_000}

    result = poll(node.pk, fake_agent.transport())

    assert (result.inserted, result.quarantined) == (0, 1)
    assert list(QuarantinedRecord.objects.values_list("reason", flat=True)) == [
        QuarantineReason.BROKEN_CHAIN
    ]
    assert not HourlyUsage.objects.exists()


# -- Stripe webhooks ---------------------------------------------------------------------

WEBHOOK_MODELS = (StripeEvent, Invoice, JournalEntry)


@pytest.fixture
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300


def _event(event_id: str = "evt_door_1", **overrides: object) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "customer.updated",  # billing stores it and does nothing else
        "created": int(time.time()),
        "data": {"object": {"id": "cus_door", "object": "customer"}},
    }
    event.update(overrides)
    return json.dumps(event).encode()


def _webhook(client, payload: bytes, signature: str):
    return client.post(
        WEBHOOK_URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"[]",
        b"null",
        b'{"id": "evt_x"}',  # no type
        b'{"type": "customer.updated"}',  # no id
        b"\xff\xfe",
        _event(created="tomorrow"),
        _event(created=10**30),
        _event(data=["not", "an", "object"]),
        _event(data={"object": "not an object"}),
    ],
    ids=[
        "truncated",
        "array",
        "null",
        "no-type",
        "no-id",
        "not-utf8",
        "created-text",
        "created-huge",
        "data-list",
        "object-string",
    ],
)
def test_webhook_malformed_but_signed_is_400_and_stores_nothing(client, webhook_secret, payload):
    before = db_state(*WEBHOOK_MODELS)

    response = _webhook(client, payload, sign_payload(payload))

    assert response.status_code == 400
    assert db_state(*WEBHOOK_MODELS) == before


def test_webhook_oversized_is_400_and_stores_nothing(client, webhook_secret):
    payload = _event(padding="x" * OVERSIZED_BYTES)
    before = db_state(*WEBHOOK_MODELS)

    response = _webhook(client, payload, sign_payload(payload))

    assert response.status_code == 400
    assert db_state(*WEBHOOK_MODELS) == before


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "garbage",
        "t=1,v1=" + "0" * 64,
        sign_payload(b"some other body"),
        sign_payload(_event(), secret="whsec_forged"),
        sign_payload(_event(), timestamp=int(time.time()) - 3600),  # replayed after an hour
    ],
    ids=["missing", "garbage", "zeros", "other-body", "wrong-secret", "stale-timestamp"],
)
def test_webhook_forged_signature_is_400_and_stores_nothing(client, webhook_secret, signature):
    before = db_state(*WEBHOOK_MODELS)

    response = _webhook(client, _event(), signature)

    assert response.status_code == 400
    assert db_state(*WEBHOOK_MODELS) == before


def test_webhook_replayed_event_is_processed_once(client, webhook_secret):
    payload = _event("evt_door_replay")

    first = _webhook(client, payload, sign_payload(payload))
    after_first = db_state(*WEBHOOK_MODELS)
    second = _webhook(client, payload, sign_payload(payload))
    # Stripe retries re-sign with a new timestamp; the event id is what makes it a replay.
    third = _webhook(client, payload, sign_payload(payload, timestamp=int(time.time()) + 1))

    assert first.status_code == 200
    assert first.json() == {"received": True, "duplicate": False}
    assert second.json() == third.json() == {"received": True, "duplicate": True}
    assert db_state(*WEBHOOK_MODELS) == after_first
    assert StripeEvent.objects.filter(event_id="evt_door_replay").count() == 1


def test_webhook_without_a_configured_secret_refuses_everything(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    payload = _event()

    response = _webhook(client, payload, sign_payload(payload))

    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
