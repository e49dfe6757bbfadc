"""The real agent's enroll command against a live server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.core.cache import cache

from capacity import services
from capacity.agent.protocol import hash_token, public_key_b64
from capacity.models import Node, NodeStatus
from config.gateway_keys import receipt_signing_key
from tests.factories import catalog_gpu


@pytest.mark.django_db(transaction=True)
def test_agent_enroll_cli_against_live_server(live_server, site, tmp_path):
    cache.clear()
    created = services.node_create(
        site=site,
        actor=None,
        name="cli-01",
        gpu_model=catalog_gpu(),
        gpu_count=2,
        cpu_cores=8,
        ram_gib=64,
    )
    journal = tmp_path / "agent.sqlite"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "capacity.agent",
            "enroll",
            "--simulate",
            "--gpus",
            "2",
            "--gpu-model",
            "h100",
            "--journal",
            str(journal),
            "--platform",
            live_server.url,
            "--code",
            created.enrollment_code,
            "--url",
            "http://127.0.0.1:9100",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    node = Node.objects.get(pk=created.node.pk)
    assert node.status == NodeStatus.UNREACHABLE
    assert node.agent_url == "http://127.0.0.1:9100"
    assert node.gpus.count() == 2
    state_files = list(tmp_path.glob("*state*"))
    assert len(state_files) == 1
    state = json.loads(state_files[0].read_text())
    assert state["poll_token_sha256"] == hash_token(node.poll_token())
    assert str(state["node_id"]) == str(node.pk)
    # The receipt key the gateway's receipts will be checked with (protocol v1.1).
    assert state["platform_public_key"] == public_key_b64(receipt_signing_key())

    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "capacity.agent",
            "enroll",
            "--simulate",
            "--gpus",
            "2",
            "--journal",
            str(tmp_path / "other.sqlite"),
            "--platform",
            live_server.url,
            "--code",
            created.enrollment_code,
            "--url",
            "http://127.0.0.1:9100",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1
    assert "enrollment code already used" in again.stderr
