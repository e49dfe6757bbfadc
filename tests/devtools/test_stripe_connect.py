"""The Connect emulator ``make run`` starts (``python -m devtools.stripe_connect``) is the
one the tests use in-process: a partner's account is made and onboarded through it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from billing import stripe_gateway

ROOT = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("METERING_TEST_FLEET_PORT", "9100")) + 15


@pytest.fixture
def emulator_process():
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.stripe_connect", "--port", str(PORT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("the Connect emulator did not start")
    yield f"http://127.0.0.1:{PORT}"
    process.terminate()
    process.wait(timeout=10)


def test_the_demo_connect_emulator_serves_accounts_and_onboarding(settings, emulator_process):
    settings.STRIPE_SECRET_KEY = "sk_test_hashgrid_demo"
    settings.STRIPE_CONNECT_API_BASE = emulator_process
    account = stripe_gateway.create_connect_account(
        organization_id=7, country="US", email="ops@miner.test", idempotency_key="acct-7"
    )
    assert account.id.startswith("acct_")
    assert (account.details_submitted, account.payouts_enabled) == (False, False)
    assert account.transfers_capability == "inactive"
    link = stripe_gateway.create_account_link(
        account_id=account.id,
        refresh_url="http://127.0.0.1:8000/refresh",
        return_url="http://127.0.0.1:8000/return",
    )
    assert link.startswith(f"{emulator_process}/connect/onboarding/")
    visit = httpx.get(link, follow_redirects=False)
    assert (visit.status_code, visit.headers["location"]) == (302, "http://127.0.0.1:8000/return")
    onboarded = stripe_gateway.retrieve_connect_account(account.id)
    assert (onboarded.details_submitted, onboarded.payouts_enabled) == (True, True)
    assert onboarded.transfers_capability == "active"
