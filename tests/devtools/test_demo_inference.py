"""`make run`'s inference demo: fleet nodes serve the demo product and are online at once,
the demo buyer has a line and a working key in a 0600 file, devrun prints a one-line
streaming curl, and that request, made with the demo key through a real gateway to the
fleet devrun starts, streams an answer whose tokens reach the buyer's usage page after
one poll."""

from __future__ import annotations

import io
import json
import stat
import sys
import time
from datetime import timedelta

import httpx
import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from accounts.models import ApiKey
from capacity.metering.batch import poll_and_store
from capacity.metering.models import InferenceRequest, NodePollState
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_public_key_b64
from contracts.models import ContractLine, InferenceProduct, LineApiKey
from contracts.usage import usage_buckets
from devtools import devrun
from devtools.demo import DEMO_INFERENCE_PRODUCT, inference, people
from devtools.demo import fleet as demo_fleet
from devtools.gateway_process import GatewayProcess
from tests.devtools.test_demo import (
    _free_port,
    fleet_url,  # noqa: F401 (the real fleet simulator)
    serve_fleet,
)
from tests.factories import OrganizationFactory


@pytest.mark.django_db
def test_seed_inference_serves_the_demo_product_with_a_key_on_file(
    fleet_url,  # noqa: F811
    settings,
    tmp_path,
):
    settings.FLEET_URL = fleet_url
    organizations = people.seed_people()
    partners = [organizations["partner"], OrganizationFactory(is_buyer=False, is_partner=True)]
    demo_fleet.seed_fleet(partners, node_count=4, out=io.StringIO())
    key_file = tmp_path / ".run" / "demo_api_key"

    summary = inference.seed_inference(
        buyer=organizations["buyer"], partners=partners, key_file=key_file, out=io.StringIO()
    )

    product = InferenceProduct.objects.get(slug=DEMO_INFERENCE_PRODUCT)
    assert summary["serving_nodes"] == 4
    # Polled once already: online, so the gateway routes to them from its start.
    assert summary["online_nodes"] == 4
    assert set(product.nodes.values_list("status", flat=True)) == {NodeStatus.ONLINE}
    # ... and due again, for beat's first sweep to poll them in step with the rest.
    states = NodePollState.objects.filter(node__in=product.nodes.all())
    assert [state.next_poll_at <= timezone.now() for state in states] == [True] * 4
    assert sorted(product.nodes.values_list("agent_url", flat=True)) == [
        f"{fleet_url}/n/{i}" for i in range(4)
    ]
    # The demo partner's own nodes (sites alternate between the two partners) first.
    assert sorted(
        product.nodes.values_list("site__organization__slug", "agent_url").order_by("agent_url")
    ) == sorted(
        [(organizations["partner"].slug, f"{fleet_url}/n/{i}") for i in (0, 2)]
        + [(partners[1].slug, f"{fleet_url}/n/{i}") for i in (1, 3)]
    )
    line = ContractLine.objects.get(
        contract__buyer=organizations["buyer"], inference_product=product
    )
    assert line.contract.state == "active"
    secret = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    link = LineApiKey.objects.select_related("api_key").get(line=line)
    assert link.api_key.key_hash == ApiKey.hash_key(secret)
    assert link.api_key.name == "Demo key"

    # Again: nothing new, the same key.
    inference.seed_inference(
        buyer=organizations["buyer"], partners=partners, key_file=key_file, out=io.StringIO()
    )
    assert key_file.read_text().strip() == secret
    assert LineApiKey.objects.filter(line=line).count() == 1

    # The file lost: the old demo key is revoked and a new one written.
    key_file.unlink()
    inference.seed_inference(
        buyer=organizations["buyer"], partners=partners, key_file=key_file, out=io.StringIO()
    )
    fresh = key_file.read_text().strip()
    assert fresh != secret
    assert ApiKey.objects.get(pk=link.api_key_id).revoked_at is not None
    assert ApiKey.objects.active().get(name="Demo key").key_hash == ApiKey.hash_key(fresh)


def test_devrun_prints_the_key_and_a_one_line_streaming_curl(settings, tmp_path, monkeypatch):
    settings.GATEWAY_URL = "http://127.0.0.1:8001"
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "demo_api_key").write_text("hg_demo_secret\n")
    monkeypatch.setattr(devrun, "ROOT", tmp_path)
    assert devrun._inference_demo_lines() == [
        "  demo API key (buyer, llama-3.1-8b-instruct): hg_demo_secret",
        "  stream an answer through the gateway:",
        "  curl -N http://127.0.0.1:8001/v1/chat/completions "
        '-H "Authorization: Bearer hg_demo_secret" -H "Content-Type: application/json" '
        """-d '{"model": "llama-3.1-8b-instruct", "stream": true, "max_tokens": 64, "messages": """
        """[{"role": "user", "content": "Say hello in one sentence."}]}'""",
    ]


def test_devrun_starts_the_fleet_with_the_platforms_receipt_key(tmp_path):
    """Without ``--platform-key`` every fleet node refuses every receipt (401), so every
    request through the gateway would fail over and end 503, and every assignment (403).
    Its runtime runs what it is assigned at once (tests/devtools/test_demo_compute.py)."""
    key = receipt_public_key_b64()
    assert devrun._receipt_public_key() == key  # what devrun derives from the settings
    assert devrun.fleet_command(
        port=9100, nodes=24, state_dir=tmp_path / "fleet", platform_key=key
    ) == [
        sys.executable,
        "-m",
        "capacity.agent.fleet",
        "--nodes=24",
        "--port=9100",
        "--seed=7",
        f"--state-dir={tmp_path / 'fleet'}",
        f"--platform-key={key}",
        "--pending-seconds=0",
        "--pull-seconds=0",
        "--start-seconds=0",
    ]


@pytest.fixture
def demo_fleet_url(tmp_path):
    """The fleet as devrun starts it (its command line), four nodes, on a free port."""
    port = _free_port()
    yield from serve_fleet(
        devrun.fleet_command(
            port=port, nodes=4, state_dir=tmp_path / "fleet", platform_key=receipt_public_key_b64()
        ),
        port=port,
    )


def _curl_body() -> dict[str, object]:
    """The JSON body of the curl line devrun prints."""
    line = devrun._inference_demo_lines()[-1]
    return json.loads(line.split(" -d '", 1)[1].rstrip("'"))


@pytest.mark.django_db(transaction=True)
def test_the_printed_curl_streams_through_the_gateway_and_reaches_the_usage_page(
    demo_fleet_url, settings, tmp_path, monkeypatch
):
    settings.FLEET_URL = demo_fleet_url
    organizations = people.seed_people()
    partners = [organizations["partner"], OrganizationFactory(is_buyer=False, is_partner=True)]
    demo_fleet.seed_fleet(partners, node_count=4, out=io.StringIO())
    monkeypatch.setattr(devrun, "ROOT", tmp_path)
    summary = inference.seed_inference(
        buyer=organizations["buyer"],
        partners=partners,
        key_file=tmp_path / ".run" / "demo_api_key",
        out=io.StringIO(),
    )
    assert (summary["serving_nodes"], summary["online_nodes"]) == (4, 4)
    api_key = (tmp_path / ".run" / "demo_api_key").read_text().strip()
    body = _curl_body()
    assert body["stream"] is True
    assert body["max_tokens"] == 64

    gateway = GatewayProcess(
        port=_free_port(),
        env={
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "HASHGRID_DB_NAME_OVERRIDE": django_settings.DATABASES["default"]["NAME"],
        },
        log_path=tmp_path / "gateway.log",
    ).start()
    try:
        content, chunks = [], 0
        with httpx.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}"},
            json=body,
            timeout=30,
        ) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunks += 1
                for choice in json.loads(line[6:])["choices"]:
                    content.append(choice["delta"].get("content") or "")
        # 64 tokens streamed, one per chunk, after the role chunk.
        assert "".join(content) == "".join(f" tok{i}" for i in range(64))
        assert chunks == 65
        deadline = time.monotonic() + 10
        while not InferenceRequest.objects.filter(pk=request_id, logged_at__isnull=False):
            assert time.monotonic() < deadline, "the gateway did not log the request"
            time.sleep(0.1)
    finally:
        gateway.stop()

    # The next poll of the node that served it (what beat's next sweep does).
    served = InferenceRequest.objects.get(pk=request_id)
    assert Node.objects.get(pk=served.node_id).status == NodeStatus.ONLINE
    poll_and_store(
        [served.node_id],
        now=timezone.now(),
        interval_seconds=int(settings.METERING_POLL_INTERVAL_SECONDS),
    )
    served.refresh_from_db()
    # "Say hello in one sentence.": 5 words + 4 for the message; 64 tokens out.
    assert (served.gateway_input_tokens, served.gateway_output_tokens) == (9, 64)
    assert (served.agent_input_tokens, served.agent_output_tokens) == (9, 64)
    assert (served.billed_input_tokens, served.billed_output_tokens) == (9, 64)
    line = ContractLine.objects.get(contract__buyer=organizations["buyer"])
    now = timezone.now()
    rows = usage_buckets(
        contract=line.contract, bucket="hour", since=now - timedelta(hours=2), until=now
    )
    assert [(row.input_tokens, row.output_tokens, row.requests) for row in rows] == [(9, 64, 1)]
