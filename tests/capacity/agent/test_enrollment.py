"""``python -m capacity.agent enroll`` against a stub platform, then ``run`` with its token."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from tests.capacity.agent.conftest import REPO_ROOT, Launcher
from tests.capacity.agent.receipting import (
    RECEIPT_HEADER,
    chat_body,
    make_receipt,
    raw_public_b64,
)

PLATFORM_TOKEN = "tok-issued-by-the-platform"


class StubPlatform:
    """Records enrollment requests and answers with a canned status and body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 201
        self.answer: dict[str, Any] = {"poll_token": PLATFORM_TOKEN, "node_id": "node-42"}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append(
                    {"path": self.path, "content_type": self.headers["Content-Type"], "body": body}
                )
                payload = json.dumps(stub.answer).encode()
                self.send_response(stub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def platform() -> Iterator[StubPlatform]:
    stub = StubPlatform()
    yield stub
    stub.server.shutdown()


def _enroll(journal: Path, platform: StubPlatform) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "capacity.agent", "enroll"),
            *("--platform", platform.url + "/", "--code", "ENR-1234"),
            *("--url", "https://agent.example.net:9100", "--journal", str(journal)),
            *("--gpus", "2", "--seed", "7"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_enroll_posts_key_url_and_inventory_and_keeps_only_the_token_hash(
    tmp_path: Path, platform: StubPlatform, launcher: Launcher
) -> None:
    journal = tmp_path / "agent.sqlite3"

    result = _enroll(journal, platform)

    assert result.returncode == 0, result.stderr
    key = load_pem_private_key(Path(f"{journal}.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (request,) = platform.requests
    assert request["path"] == "/api/v1/agents/enroll"
    assert request["content_type"] == "application/json"
    assert json.loads(request["body"]) == {
        "code": "ENR-1234",
        "public_key": base64.b64encode(raw_public).decode(),
        "url": "https://agent.example.net:9100",
        "gpus": [
            {
                "uuid": "GPU-184153be-8c0f-0cda-d616-9ae3ec3f44d9",
                "model": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559,
            },
            {
                "uuid": "GPU-69ca3a1b-d018-f4ee-1109-e8a6d07d27e1",
                "model": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559,
            },
        ],
        "agent_version": "1.0.0",
    }
    assert "enrolled node node-42" in result.stdout
    assert PLATFORM_TOKEN not in result.stdout + result.stderr
    state_file = Path(f"{journal}.state.json")
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert Path(f"{journal}.key").stat().st_mode & 0o777 == 0o600
    state = json.loads(state_file.read_text())
    assert state["poll_token_sha256"] == hashlib.sha256(PLATFORM_TOKEN.encode()).hexdigest()
    assert PLATFORM_TOKEN not in state_file.read_text()

    agent = launcher.agent(journal, "--gpus", "2", "--seed", "7")
    info = httpx.get(
        f"{agent.url}/v1/info", headers={"Authorization": f"Bearer {PLATFORM_TOKEN}"}, timeout=5
    ).json()
    assert (info["node_id"], info["public_key"]) == (
        "node-42",
        base64.b64encode(raw_public).decode(),
    )
    assert httpx.get(f"{agent.url}/v1/info", timeout=5).status_code == 401


def test_refused_enrollment_fails_and_stores_nothing(
    tmp_path: Path, platform: StubPlatform
) -> None:
    platform.status, platform.answer = 400, {"error": "invalid_code"}
    journal = tmp_path / "agent.sqlite3"

    result = _enroll(journal, platform)

    assert result.returncode == 1
    assert "HTTP 400" in result.stderr
    assert not Path(f"{journal}.state.json").exists()


def test_unreachable_platform_is_a_clear_failure(tmp_path: Path, platform: StubPlatform) -> None:
    platform.server.shutdown()
    platform.server.server_close()

    result = _enroll(tmp_path / "agent.sqlite3", platform)

    assert result.returncode == 1
    assert "enrollment failed: could not reach" in result.stderr


def test_enrollment_keeps_the_platform_key_and_run_checks_receipts_with_it(
    tmp_path: Path, platform: StubPlatform, launcher: Launcher
) -> None:
    platform_key = Ed25519PrivateKey.from_private_bytes(bytes(range(50, 82)))
    platform.answer["platform_public_key"] = raw_public_b64(platform_key)
    journal = tmp_path / "agent.sqlite3"

    result = _enroll(journal, platform)

    assert result.returncode == 0, result.stderr
    state = json.loads(Path(f"{journal}.state.json").read_text())
    assert state["platform_public_key"] == raw_public_b64(platform_key)
    agent = launcher.agent(journal, "--gpus", "2", "--seed", "7", "--engine-ttft-ms", "0")
    auth = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
    own_key = httpx.get(f"{agent.url}/v1/info", headers=auth, timeout=5).json()["public_key"]
    _, signed = make_receipt(platform_key, agent=own_key)
    _, foreign = make_receipt(Ed25519PrivateKey.generate(), agent=own_key)
    url = f"{agent.url}/v1/inference/chat/completions"
    body = chat_body(max_tokens=2)

    assert httpx.post(url, json=body, headers={RECEIPT_HEADER: signed}).status_code == 200
    assert httpx.post(url, json=body, headers={RECEIPT_HEADER: foreign}).status_code == 401


def test_an_unusable_platform_key_fails_enrollment(tmp_path: Path, platform: StubPlatform) -> None:
    platform.answer["platform_public_key"] = "bm90IGEga2V5"  # "not a key"
    journal = tmp_path / "agent.sqlite3"

    result = _enroll(journal, platform)

    assert result.returncode == 1
    assert "platform_public_key is unusable: platform key is not 32 bytes" in result.stderr
    assert not Path(f"{journal}.state.json").exists()
