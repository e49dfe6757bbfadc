"""Enrollment: one-time codes and POST /api/v1/agents/enroll."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.cache import cache
from django.db import connection

from accounts.models import AuditEvent
from capacity import services
from capacity.models import EnrollmentCode, GpuDevice, Node, NodeStatus, hash_enrollment_code
from config.gateway_keys import receipt_signing_key
from tests.capacity.conftest import h100_inventory
from tests.factories import catalog_gpu
from tests.http_headers import NO_STORE, cache_headers

ENROLL_URL = "/api/v1/agents/enroll"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_throttle():
    cache.clear()  # the enroll throttle counts in the default cache
    yield
    cache.clear()


def _body(code: str, public_key: str, gpus=None, **overrides):
    body = {
        "code": code,
        "public_key": public_key,
        "url": "http://10.0.4.17:9100",
        "gpus": h100_inventory(2) if gpus is None else gpus,
        "agent_version": "1.0.0",
    }
    body.update(overrides)
    return body


def _new_node(site, *, gpu_count=2):
    return services.node_create(
        site=site,
        actor=None,
        name="pf1-n02",
        gpu_model=catalog_gpu(),
        gpu_count=gpu_count,
        cpu_cores=64,
        ram_gib=512,
    )


def _node_row(node_id: int) -> tuple:
    return (
        Node.objects.filter(pk=node_id)
        .values_list(
            "status", "agent_public_key", "agent_url", "poll_token_ciphertext", "enrolled_at"
        )
        .get()
    )


@pytest.mark.django_db
def test_node_create_stores_only_the_code_hash(site):
    with time_machine.travel(T0, tick=False):
        created = _new_node(site)
    row = EnrollmentCode.objects.get(node=created.node)
    assert created.node.status == NodeStatus.PENDING
    assert row.code_hash == hash_enrollment_code(created.enrollment_code)
    assert created.enrollment_code not in row.code_hash
    assert row.expires_at == T0 + timedelta(hours=24)
    assert created.enrollment.expires_at == T0 + timedelta(hours=24)
    assert len(created.enrollment_code) == 24  # 5 groups of 4 and 4 dashes


@pytest.mark.django_db
def test_enroll_happy_path(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        response = anonymous_api.post(
            ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
        )
    assert response.status_code == 201, response.content
    assert cache_headers(response) == NO_STORE  # the body carries the poll token
    data = response.json()
    assert set(data) == {"node_id", "poll_token", "poll_interval_seconds", "platform_public_key"}
    assert data["node_id"] == created.node.pk
    # The key that verifies what the gateway's signing key signs: the receipt key.
    platform_key = Ed25519PublicKey.from_public_bytes(
        base64.b64decode(data["platform_public_key"], validate=True)
    )
    platform_key.verify(receipt_signing_key().sign(b"receipt"), b"receipt")
    assert data["poll_interval_seconds"] == 60
    node = Node.objects.get(pk=created.node.pk)
    assert node.status == NodeStatus.UNREACHABLE  # enrolled, awaiting the first poll
    assert node.agent_public_key == agent_public_key
    assert node.agent_url == "http://10.0.4.17:9100"
    assert node.agent_version == "1.0.0"
    assert node.enrolled_at == T0 + timedelta(hours=1)
    assert node.poll_token() == data["poll_token"]
    assert list(node.gpus.values_list("index", "uuid", "model", "memory_mib")) == [
        (0, "GPU-aaaa-0000", "NVIDIA H100 80GB HBM3", 81559),
        (1, "GPU-aaaa-0001", "NVIDIA H100 80GB HBM3", 81559),
    ]
    code = EnrollmentCode.objects.get(node=node)
    assert code.used_at == T0 + timedelta(hours=1)
    assert AuditEvent.objects.filter(action="node.enrolled", target_id=str(node.pk)).count() == 1


@pytest.mark.django_db
def test_poll_token_is_encrypted_at_rest(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    response = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
    )
    token = response.json()["poll_token"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM capacity_node WHERE id = %s", [created.node.pk])
        raw_row = " ".join(str(value) for value in cursor.fetchone())
        cursor.execute("SELECT data::text FROM accounts_auditevent")
        audit_text = " ".join(row[0] for row in cursor.fetchall())
    assert token not in raw_row
    assert token not in audit_text
    assert created.enrollment_code not in audit_text


@pytest.mark.django_db
def test_second_use_of_a_code_is_refused(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    body = _body(created.enrollment_code, agent_public_key)
    assert anonymous_api.post(ENROLL_URL, body, format="json").status_code == 201
    before = _node_row(created.node.pk)
    response = anonymous_api.post(ENROLL_URL, body, format="json")
    assert response.status_code == 400
    assert response.json() == {"code": ["enrollment code already used"]}
    assert _node_row(created.node.pk) == before
    assert GpuDevice.objects.filter(node=created.node).count() == 2


@pytest.mark.django_db
def test_code_expires_after_24_hours(site, anonymous_api, agent_public_key):
    with time_machine.travel(T0, tick=False):
        created = _new_node(site)
    with time_machine.travel(T0 + timedelta(hours=24), tick=False):
        response = anonymous_api.post(
            ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
        )
    assert response.status_code == 400
    assert response.json() == {"code": ["enrollment code expired"]}
    assert _node_row(created.node.pk) == (NodeStatus.PENDING, "", "", "", None)
    assert EnrollmentCode.objects.get(node=created.node).used_at is None


@pytest.mark.django_db
def test_code_just_before_expiry_works(site, anonymous_api, agent_public_key):
    with time_machine.travel(T0, tick=False):
        created = _new_node(site)
    with time_machine.travel(T0 + timedelta(hours=23, minutes=59), tick=False):
        response = anonymous_api.post(
            ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
        )
    assert response.status_code == 201


@pytest.mark.django_db
def test_regenerated_code_replaces_the_old_one(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    issued = services.enrollment_code_regenerate(node=created.node, actor=None)
    old = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
    )
    assert old.status_code == 400
    assert old.json() == {"code": ["enrollment code was replaced by a newer one"]}
    new = anonymous_api.post(ENROLL_URL, _body(issued.code, agent_public_key), format="json")
    assert new.status_code == 201


@pytest.mark.django_db
def test_unknown_code(anonymous_api, agent_public_key):
    response = anonymous_api.post(ENROLL_URL, _body("NOPE-NOPE", agent_public_key), format="json")
    assert response.status_code == 400
    assert response.json() == {"code": ["enrollment code is not valid"]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("not base64!!", "public key is not valid base64"),
        ("AAAA", "public key must be a raw 32-byte Ed25519 key, got 3 bytes"),
    ],
)
def test_bad_public_key_is_refused_and_code_stays_usable(site, anonymous_api, public_key, message):
    created = _new_node(site)
    response = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, public_key), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"public_key": [message]}
    assert _node_row(created.node.pk) == (NodeStatus.PENDING, "", "", "", None)
    assert EnrollmentCode.objects.get(node=created.node).used_at is None
    assert GpuDevice.objects.count() == 0


@pytest.mark.django_db
def test_wrong_gpu_count_is_refused(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    response = anonymous_api.post(
        ENROLL_URL,
        _body(created.enrollment_code, agent_public_key, gpus=h100_inventory(3)),
        format="json",
    )
    assert response.status_code == 400
    assert response.json() == {"gpus": ["node pf1-n02 has 2 GPUs but the agent reported 3"]}
    assert _node_row(created.node.pk) == (NodeStatus.PENDING, "", "", "", None)
    assert GpuDevice.objects.count() == 0


@pytest.mark.django_db
def test_wrong_gpu_model_and_non_http_url_are_refused(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    gpus = [{"uuid": "GPU-1", "model": "NVIDIA L40S", "memory_mib": 46068}, h100_inventory(1)[0]]
    response = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key, gpus=gpus), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "gpus": [
            "GPU 0 reports model 'NVIDIA L40S', but node pf1-n02 is registered with H100 SXM 80GB"
        ]
    }
    response = anonymous_api.post(
        ENROLL_URL,
        _body(created.enrollment_code, agent_public_key, url="ftp://10.0.0.1/"),
        format="json",
    )
    assert response.json() == {"url": ["agent URL must be an http(s) URL"]}


@pytest.mark.django_db
def test_gpu_enrolled_on_another_node_is_refused(site, anonymous_api, agent_public_key):
    first = _new_node(site)
    assert (
        anonymous_api.post(
            ENROLL_URL, _body(first.enrollment_code, agent_public_key), format="json"
        ).status_code
        == 201
    )
    second = services.node_create(
        site=site,
        actor=None,
        name="pf1-n03",
        gpu_model=first.node.gpu_model,
        gpu_count=2,
        cpu_cores=8,
        ram_gib=64,
    )
    response = anonymous_api.post(
        ENROLL_URL, _body(second.enrollment_code, agent_public_key), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "gpus": [
            "GPU GPU-aaaa-0000 is already enrolled on another node",
            "GPU GPU-aaaa-0001 is already enrolled on another node",
        ]
    }
    assert EnrollmentCode.objects.get(node=second.node).used_at is None


@pytest.mark.django_db
def test_retired_node_cannot_enroll(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    services.node_retire(node=created.node, actor=None)
    response = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"code": ["enrollment code was replaced by a newer one"]}


@pytest.mark.django_db
def test_enroll_ignores_sessions_and_csrf(site, partner_owner, agent_public_key):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(partner_owner)
    created = _new_node(site)
    response = client.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key), format="json"
    )
    assert response.status_code == 201


@pytest.mark.django_db
def test_enroll_is_throttled(anonymous_api, agent_public_key):
    statuses = [
        anonymous_api.post(ENROLL_URL, _body("WRONG", agent_public_key), format="json").status_code
        for _ in range(31)
    ]
    assert statuses == [400] * 30 + [429]


@pytest.mark.django_db
def test_agent_url_loses_userinfo_query_and_fragment(site, anonymous_api, agent_public_key):
    created = _new_node(site)
    url = "http://agent:secret@10.0.4.17:9100/base/?x=#frag"
    response = anonymous_api.post(
        ENROLL_URL, _body(created.enrollment_code, agent_public_key, url=url), format="json"
    )
    assert response.status_code == 201
    assert Node.objects.get(pk=created.node.pk).agent_url == "http://10.0.4.17:9100/base"


@pytest.mark.django_db
def test_production_rules_refuse_an_internal_agent_url(
    site, anonymous_api, agent_public_key, settings
):
    """Issue 13 (SSRF): the poller would fetch the internal URL with the node's token."""
    settings.AGENT_ALLOW_PRIVATE_URLS = False
    created = _new_node(site)
    before = _node_row(created.node.pk)
    for url in (
        "http://127.0.0.1:8372/internal/admin/config?x=#",
        "http://localhost:8372/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:10.0.0.1]:9100",
    ):
        response = anonymous_api.post(
            ENROLL_URL, _body(created.enrollment_code, agent_public_key, url=url), format="json"
        )
        assert response.status_code == 400
        assert response.json() == {
            "url": ["agent URL must resolve to public internet addresses only"]
        }
    assert _node_row(created.node.pk) == before
    assert EnrollmentCode.objects.get(node=created.node).used_at is None
    # A public address is accepted under the same rules (an IP literal: no DNS needed).
    response = anonymous_api.post(
        ENROLL_URL,
        _body(created.enrollment_code, agent_public_key, url="https://8.8.8.8:8443/"),
        format="json",
    )
    assert response.status_code == 201
    assert Node.objects.get(pk=created.node.pk).agent_url == "https://8.8.8.8:8443"


@pytest.mark.django_db
def test_enroll_throttle_ignores_a_forwarded_for_the_client_chose(anonymous_api, agent_public_key):
    """With no trusted proxy (the default) X-Forwarded-For is the client's own words: a
    new one per request must not make a new client."""
    statuses = [
        anonymous_api.post(
            ENROLL_URL,
            _body("WRONG", agent_public_key),
            format="json",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{attempt}",
        ).status_code
        for attempt in range(31)
    ]
    assert statuses == [400] * 30 + [429]


@pytest.mark.django_db
def test_behind_one_proxy_the_throttle_keys_on_the_address_it_wrote(
    anonymous_api, agent_public_key, settings
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}

    def attempt(forwarded_for: str) -> int:
        return anonymous_api.post(
            ENROLL_URL,
            _body("WRONG", agent_public_key),
            format="json",
            HTTP_X_FORWARDED_FOR=forwarded_for,
        ).status_code

    # The client prepends whatever it likes; the proxy appends the address it saw.
    spoofed = [attempt(f"198.51.100.{n}, 203.0.113.7") for n in range(31)]
    other_client = attempt("198.51.100.1, 203.0.113.8")

    assert spoofed == [400] * 30 + [429]
    assert other_client == 400


def test_one_setting_says_how_many_proxies_are_trusted(settings):
    """DRF and allauth read the client's address with the same count of trusted proxies."""
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == settings.TRUSTED_PROXY_COUNT == 0
    assert settings.ALLAUTH_TRUSTED_PROXY_COUNT == settings.TRUSTED_PROXY_COUNT
