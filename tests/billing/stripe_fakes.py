"""Stripe for the tests: a real localstripe process, and a loopback proxy in front of it.

``LocalStripe`` runs ``localstripe`` (the Stripe API on loopback, plus a fake Stripe.js
at ``/js.stripe.com/v3/``) on a free port in 8070-8079.

``StripeProxy`` forwards to it over real HTTP and adds what localstripe lacks and the
tests need: Stripe's idempotency (a POST with an ``Idempotency-Key`` seen before gets the
stored response, as Stripe does for 24 hours, or a 400 ``idempotency_error`` when its
parameters differ from the first request's; ``forget_keys`` is the 24 hours passing),
the ``customer`` and ``created`` filters of the PaymentIntent list, a delay on the first response to a path
(the client times out and retries with the same key), and an optional fee on balance
transactions (localstripe's are always fee-free). Nothing of ours is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
LOCALSTRIPE = ROOT / ".venv" / "bin" / "localstripe"
SECRET_KEY = "sk_test_hashgrid"
PUBLISHABLE_KEY = "pk_test_hashgrid"
WEBHOOK_SECRET = "whsec_hashgrid_test"


def free_port() -> int:
    """A port nobody listens on, chosen by the kernel (suites may run side by side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalStripe:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def js_url(self) -> str:
        return f"{self.url}/js.stripe.com/v3/"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(LOCALSTRIPE), "--port", str(self.port), "--from-scratch"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.js_url, timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"localstripe did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def get(self, path: str, **params: object) -> dict:
        response = httpx.get(f"{self.url}{path}", params=params, auth=(SECRET_KEY, ""), timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, data: dict[str, str]) -> dict:
        response = httpx.post(f"{self.url}{path}", data=data, auth=(SECRET_KEY, ""), timeout=10)
        response.raise_for_status()
        return response.json()

    def register_webhook(self, *, name: str, url: str, secret: str = WEBHOOK_SECRET) -> None:
        httpx.post(
            f"{self.url}/_config/webhooks/{name}",
            data={"url": url, "secret": secret},
            timeout=5,
        ).raise_for_status()

    def payment_intents_of(self, customer_id: str) -> list[dict]:
        everything = self.get("/v1/payment_intents", limit=100)["data"]
        return [intent for intent in everything if intent.get("customer") == customer_id]

    def charges_of(self, customer_id: str) -> list[dict]:
        return self.get("/v1/charges", customer=customer_id, limit=100)["data"]

    def card_payment_method(self, number: str) -> str:
        """A card payment method as Stripe.js would create it in the browser."""
        method = self.post(
            "/v1/payment_methods",
            {
                "type": "card",
                "card[number]": number,
                "card[exp_month]": "12",
                "card[exp_year]": "2034",
                "card[cvc]": "123",
            },
        )
        return str(method["id"])

    def confirm_setup_intent(self, *, setup_intent_id: str, client_secret: str, card: str) -> dict:
        """What ``stripe.confirmCardSetup`` does in the browser (publishable key only)."""
        response = httpx.post(
            f"{self.url}/v1/setup_intents/{setup_intent_id}/confirm",
            json={
                "key": PUBLISHABLE_KEY,
                "client_secret": client_secret,
                "payment_method_data": {
                    "type": "card",
                    "card": {"number": card, "exp_month": "12", "exp_year": "2034", "cvc": "123"},
                },
            },
            timeout=10,
        )
        return response.json()

    def authenticate_payment(self, *, payment_intent_id: str, client_secret: str) -> dict:
        """What ``stripe.confirmCardPayment`` does when the buyer completes 3-D Secure."""
        response = httpx.post(
            f"{self.url}/v1/payment_intents/{payment_intent_id}/_authenticate",
            params={"success": "true"},
            json={"key": PUBLISHABLE_KEY, "client_secret": client_secret},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()


@dataclass
class ProxyBehaviour:
    # Path prefix → seconds to hold the *first* response to a POST there before sending.
    delay_first: dict[str, float] = field(default_factory=dict)
    # Fee added to every balance transaction the proxy returns (minor units).
    balance_fee_minor: int = 0
    # How many requests reached localstripe per (method, path prefix), for assertions.
    forwarded: list[tuple[str, str]] = field(default_factory=list)
    idempotent_replays: int = 0
    # Keys re-sent with other parameters, refused with Stripe's ``idempotency_error``.
    idempotency_conflicts: list[str] = field(default_factory=list)
    # Path prefix → (status, Stripe error object): the next POST there is answered with
    # that error instead of reaching localstripe (errors localstripe cannot produce).
    refuse_next: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """What Stripe compares when a key comes back: the request and its parameters (the
    form fields in any order; headers such as the SDK's retry count do not count)."""
    fields = sorted(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
    return hashlib.sha256(json.dumps([method, path, fields]).encode()).hexdigest()


def idempotency_error(key: str) -> bytes:
    """Stripe's answer to a key replayed with parameters other than its first request's."""
    message = (
        "Keys for idempotent requests can only be used with the same parameters they were "
        f"first used with. Try using a key other than '{key}' if you meant to execute a "
        "different request."
    )
    return json.dumps({"error": {"type": "idempotency_error", "message": message}}).encode()


class StripeProxy:
    """Real HTTP between our gateway and localstripe, with Stripe's idempotency added."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.behaviour = ProxyBehaviour()
        # Per key: the first request's fingerprint and Stripe's answer to it.
        self._responses: dict[str, tuple[str, int, bytes]] = {}
        self._in_flight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        self.behaviour = ProxyBehaviour()

    def forget_keys(self) -> None:
        """What Stripe does to idempotency keys after about 24 hours: drop them all."""
        with self._lock:
            self._responses.clear()

    def _list_payment_intents(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """``GET /v1/payment_intents`` with Stripe's documented ``customer`` and
        ``created[gte]`` filters, which localstripe's list does not take: forwarded
        without them, applied to the answer."""
        query = dict(parse_qsl(urlsplit(path).query))
        customer = query.pop("customer", None)
        created_gte = query.pop("created[gte]", None)
        status, content = self._forward(
            "GET", f"/v1/payment_intents?{urlencode(query)}", headers, b""
        )
        if status != 200:
            return status, content
        data = json.loads(content)
        data["data"] = [
            intent
            for intent in data["data"]
            if (customer is None or intent.get("customer") == customer)
            and (created_gte is None or intent.get("created", 0) >= int(created_gte))
        ]
        return status, json.dumps(data).encode()

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        self.behaviour.forwarded.append((method, path))
        response = httpx.request(
            method,
            f"{self.upstream}{path}",
            headers={
                k: v for k, v in headers.items() if k.lower() in ("authorization", "content-type")
            },
            content=body,
            timeout=30,
        )
        content = response.content
        if self.behaviour.balance_fee_minor and path.startswith("/v1/balance_transactions/"):
            data = response.json()
            data["fee"] = self.behaviour.balance_fee_minor
            data["net"] = data["amount"] - data["fee"]
            content = json.dumps(data).encode()
        return response.status_code, content

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _send(self, status: int, content: bytes) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                key = self.headers.get("Idempotency-Key") if self.command == "POST" else None
                delay = 0.0
                if self.command == "POST":
                    for prefix, seconds in list(proxy.behaviour.delay_first.items()):
                        if self.path.startswith(prefix):
                            delay = seconds
                            del proxy.behaviour.delay_first[prefix]
                refusal = None
                if self.command == "POST":
                    for prefix in list(proxy.behaviour.refuse_next):
                        if self.path.startswith(prefix):
                            refusal = proxy.behaviour.refuse_next.pop(prefix)
                if refusal is not None:
                    status, error = refusal
                    content = json.dumps({"error": error}).encode()
                elif self.command == "GET" and self.path.startswith("/v1/payment_intents?"):
                    status, content = proxy._list_payment_intents(self.path, headers)
                elif key is None:
                    status, content = proxy._forward(self.command, self.path, headers, body)
                else:
                    cache_key = hashlib.sha256(
                        (headers.get("Authorization", "") + key).encode()
                    ).hexdigest()
                    fingerprint = request_fingerprint(self.command, self.path, body)
                    with proxy._lock:
                        stored = proxy._responses.get(cache_key)
                        waiting = proxy._in_flight.get(cache_key)
                        if stored is None and waiting is None:
                            proxy._in_flight[cache_key] = threading.Event()
                    if stored is None and waiting is not None:
                        waiting.wait(timeout=60)
                        stored = proxy._responses.get(cache_key)
                    if stored is not None and stored[0] != fingerprint:
                        proxy.behaviour.idempotency_conflicts.append(key)
                        status, content = 400, idempotency_error(key)
                    elif stored is not None:
                        proxy.behaviour.idempotent_replays += 1
                        _first, status, content = stored
                    else:
                        status, content = proxy._forward(self.command, self.path, headers, body)
                        with proxy._lock:
                            proxy._responses[cache_key] = (fingerprint, status, content)
                            proxy._in_flight.pop(cache_key).set()
                if delay:
                    time.sleep(delay)
                self._send(status, content)

            do_GET = _handle
            do_POST = _handle
            do_DELETE = _handle

        return Handler


def sign_payload(
    payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> str:
    """A ``Stripe-Signature`` header for ``payload``, computed as Stripe does."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@contextlib.contextmanager
def running_localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe()
    server.start()
    try:
        yield server
    finally:
        server.stop()
