"""`make run`'s inference demo: fleet nodes serve the demo product, the demo buyer has a
line and a working key in a 0600 file, and devrun prints a one-line streaming curl."""

from __future__ import annotations

import io
import stat

import pytest

from accounts.models import ApiKey
from contracts.models import ContractLine, InferenceProduct, LineApiKey
from devtools import devrun
from devtools.demo import DEMO_INFERENCE_PRODUCT, inference, people
from devtools.demo import fleet as demo_fleet
from tests.devtools.test_demo import fleet_url  # noqa: F401 (the real fleet simulator)
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
    assert sorted(product.nodes.values_list("agent_url", flat=True)) == [
        f"{fleet_url}/n/{i}" for i in range(4)
    ]
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
        "  stream an answer through the gateway (nodes serve once first polled, within a minute):",
        "  curl -N http://127.0.0.1:8001/v1/chat/completions "
        '-H "Authorization: Bearer hg_demo_secret" -H "Content-Type: application/json" '
        """-d '{"model": "llama-3.1-8b-instruct", "stream": true, "max_tokens": 64, "messages": """
        """[{"role": "user", "content": "Say hello in one sentence."}]}'""",
    ]
