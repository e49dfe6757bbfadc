"""`make run` (``python -m devtools.devrun``): everything a demo needs, in the foreground,
stopped by Ctrl-C.

Starts the embedded PostgreSQL (unless DATABASE_URL is set), migrates, seeds the demo
once, then runs the fleet simulator, a Celery worker with beat, the web server and the
inference gateway. It prints the URLs and the demo logins, and on Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from devtools import devdb
from devtools.demo import DEMO_API_KEY_FILE, DEMO_INFERENCE_PRODUCT, DEMO_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The web server and the gateway listen where the settings say the platform and the
# gateway are (HASHGRID_SITE_URL, HASHGRID_GATEWAY_URL), so links, snippets and the
# printed curl line point at what is running.
URL = os.environ.get("HASHGRID_SITE_URL", "http://127.0.0.1:8000").rstrip("/")
WEB_PORT = urlsplit(URL).port or 80
GATEWAY_URL = os.environ.get("HASHGRID_GATEWAY_URL", "http://127.0.0.1:8001").rstrip("/")
GATEWAY_PORT = urlsplit(GATEWAY_URL).port or 80
# Beat's metering sweep pushes assignments and reads workloads' states on its polls: every
# 5 s in the demo (the least the settings allow), so an instance or a deployment started in
# the browser is running within seconds rather than a minute or two.
DEMO_POLL_INTERVAL_SECONDS = 5
DEMO_LOGINS = [
    ("buyer", "buyer@hashgrid.test"),
    ("partner", "partner@hashgrid.test"),
    ("finance admin (staff, /admin/)", "finance@hashgrid.test"),
]


def _manage(*args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True)  # noqa: S603


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port} after {timeout_s:.0f} s")


def _receipt_public_key() -> str:
    """The platform's receipt key (derived from the settings), for the fleet's agents."""
    return subprocess.run(  # noqa: S603
        [
            PYTHON,
            "-c",
            "import django; django.setup(); "
            "from config.gateway_keys import receipt_public_key_b64; "
            "print(receipt_public_key_b64())",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def fleet_command(*, port: int, nodes: int, state_dir: Path, platform_key: str) -> list[str]:
    """The demo fleet: ``nodes`` simulated agents on ``port``, resumable from ``state_dir``,
    checking receipts and assignments with the platform's key (without it every request
    through the gateway and every assignment is refused). Its simulated runtime starts
    what it is assigned at once: the poll that pushes a workload usually reads it running,
    so the buyer sees it running within a sweep or two (seconds, ``DEMO_POLL_INTERVAL_SECONDS``)."""
    return [
        PYTHON,
        "-m",
        "capacity.agent.fleet",
        f"--nodes={nodes}",
        f"--port={port}",
        "--seed=7",
        f"--state-dir={state_dir}",
        f"--platform-key={platform_key}",
        "--pending-seconds=0",
        "--pull-seconds=0",
        "--start-seconds=0",
    ]


def _start_localstripe(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """Stripe for the demo: localstripe on loopback (API, webhooks and a fake Stripe.js),
    and the Connect emulator the tests use (``devtools.stripe_connect``: localstripe has
    no Connect) for the partners' payout accounts and transfers."""
    port = int(os.environ.get("HASHGRID_LOCALSTRIPE_PORT", "8420"))
    connect_port = int(os.environ.get("HASHGRID_STRIPE_CONNECT_PORT", str(port + 1)))
    connect = spawn(PYTHON, "-m", "devtools.stripe_connect", "--port", str(connect_port))
    base = f"http://127.0.0.1:{port}"
    stripe = spawn(str(Path(PYTHON).parent / "localstripe"), "--port", str(port))
    _wait_for_port(port, stripe)
    _wait_for_port(connect_port, connect)
    connect_base = f"http://127.0.0.1:{connect_port}"
    webhook_secret = "whsec_hashgrid_demo"  # noqa: S105 - a local emulator's secret
    httpx.post(
        f"{base}/_config/webhooks/hashgrid",
        data={"url": f"{URL}/billing/stripe/webhook/", "secret": webhook_secret},
        timeout=5,
    ).raise_for_status()
    os.environ.update(
        STRIPE_SECRET_KEY="sk_test_hashgrid_demo",  # noqa: S106 - localstripe accepts any key
        STRIPE_PUBLISHABLE_KEY="pk_test_hashgrid_demo",
        STRIPE_WEBHOOK_SECRET=webhook_secret,
        STRIPE_API_BASE=base,
        STRIPE_JS_URL=f"{base}/js.stripe.com/v3/",
        STRIPE_CONNECT_API_BASE=connect_base,
    )
    print(f"stripe: localstripe at {base}, Connect emulator at {connect_base}")


# -- inference demo: the demo buyer's key and a curl line that streams an answer --------


def _inference_demo_lines() -> list[str]:
    """The demo key (written by seed_demo, 0600) and a one-line curl through the gateway."""
    key_file = ROOT / DEMO_API_KEY_FILE
    if not key_file.exists():
        return [f"  no demo API key ({key_file} is missing: seed_demo could not create it)"]
    from contracts.inference_snippets import curl_snippet  # settings only, no app registry

    api_key = key_file.read_text().strip()
    return [
        f"  demo API key (buyer, {DEMO_INFERENCE_PRODUCT}): {api_key}",
        "  stream an answer through the gateway:",
        "  " + curl_snippet(model=DEMO_INFERENCE_PRODUCT, api_key=api_key, one_line=True),
    ]


# ----------------------------------------------------------------------------------------


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Ctrl-C (even when a parent shell started us with SIGINT ignored) and SIGTERM both
    # stop everything this command started.
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    # Before migrating: a fresh database's beat entry is made with it, and every process
    # started below (seeding, the worker, the gateway) reads it.
    os.environ.setdefault("METERING_POLL_INTERVAL_SECONDS", str(DEMO_POLL_INTERVAL_SECONDS))
    started_db = False
    if not os.environ.get("DATABASE_URL"):
        started_db = not devdb.is_accepting()
        print(f"database: embedded PostgreSQL at {devdb.start()}")
    else:
        # A server of your own: its database is made when missing, as `make test` does.
        devdb.ensure_database(os.environ["DATABASE_URL"])
    (ROOT / ".run" / "broker" / "queue").mkdir(parents=True, exist_ok=True)
    (ROOT / ".run" / "broker" / "processed").mkdir(parents=True, exist_ok=True)

    children: list[subprocess.Popen[bytes]] = []

    def spawn(*command: str) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(command, cwd=ROOT, start_new_session=True)  # noqa: S603
        children.append(child)
        return child

    try:
        _manage("migrate", "--no-input", "-v", "0")
        # The fleet first: seeding enrolls the demo nodes against it.
        fleet_port = int(os.environ.get("HASHGRID_FLEET_PORT", "9100"))
        # Seeding enrolls the nodes at HASHGRID_FLEET_URL: the fleet started here.
        os.environ.setdefault("HASHGRID_FLEET_URL", f"http://127.0.0.1:{fleet_port}")
        fleet = spawn(
            *fleet_command(
                port=fleet_port,
                nodes=int(os.environ.get("HASHGRID_DEMO_NODES", "24")),
                state_dir=ROOT / ".run" / "fleet",
                platform_key=_receipt_public_key(),
            )
        )
        _wait_for_port(fleet_port, fleet)
        if not os.environ.get("STRIPE_SECRET_KEY"):
            _start_localstripe(spawn)
        _manage("seed_demo")
        spawn(
            PYTHON,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--beat",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
        )
        spawn(PYTHON, "manage.py", "runserver", f"127.0.0.1:{WEB_PORT}")
        gateway = spawn(PYTHON, "-m", "gateway", "--port", str(GATEWAY_PORT))
        _wait_for_port(GATEWAY_PORT, gateway)

        print("\n" + "=" * 64)
        print(f"  Hashgrid is running at {URL}")
        print(f"  API docs: {URL}/api/docs/   health: {URL}/healthz")
        print(f"  inference gateway (OpenAI-compatible): {GATEWAY_URL}/v1")
        for role, email in DEMO_LOGINS:
            print(f"  {role:<32} {email}  /  {DEMO_PASSWORD}")
        print("  buyer: Instances → Start an instance; Contracts → the contract → Deploy a model")
        print("\n".join(_inference_demo_lines()))
        print("  Ctrl-C stops everything.")
        print("=" * 64 + "\n", flush=True)

        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…")
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        if started_db:
            devdb.stop()


if __name__ == "__main__":
    sys.exit(main())
