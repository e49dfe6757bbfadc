"""A stateful Stripe Connect emulator (localstripe has no Connect), for the tests and the
demo: the tests start it in-process (``running_connect_fake``), ``make run`` as a process
of its own (``python -m devtools.stripe_connect --port 8421``) that
``settings.STRIPE_CONNECT_API_BASE`` points the gateway's Connect calls at.

Serves, on loopback, the Connect endpoints the gateway uses, with the request and
response shapes Stripe documents:

- ``POST /v1/accounts``, ``GET /v1/accounts/{id}``: Express accounts; the ``transfers``
  capability is ``inactive`` until onboarding is done;
- ``POST /v1/account_links``: an onboarding URL on this server; visiting it (what the
  partner's browser does at Stripe) completes onboarding and redirects to
  ``return_url`` (an expired or used link goes to ``refresh_url``);
- ``POST /v1/transfers``, ``GET /v1/transfers/{id}``, ``GET /v1/transfers``: transfers
  from the platform's balance to an onboarded account, each with its
  ``balance_transaction`` (type ``transfer``, negative amount);
- ``GET /v1/balance_transactions``: newest first, ``created[gte|lt]``, ``type``,
  ``source``, ``limit``, ``starting_after``; a ``list`` object with ``has_more``.

Requests are form-encoded like Stripe's (``capabilities[transfers][requested]=true``);
errors are Stripe's JSON (``{"error": {"type", "code", "message", "param"}}``) with
Stripe's status codes. Idempotency as Stripe does it: a POST with an ``Idempotency-Key``
seen before with the same parameters gets the stored response (``Idempotent-Replayed:
true``); with different parameters a 400 ``idempotency_error``. Only successful
responses are stored (Stripe does not store requests refused before they ran).

Knobs for the tests: ``fail_next_after_create`` (answer 500 once *after* making the
object — the response is lost, the client retries with the same key),
``available_minor`` (the platform's available balance per currency).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

API_KEY_PREFIX = "sk_"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding → nested dicts and lists (``a[b][c]=1``, ``a[0]=x``)."""
    result: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = raw_key.replace("]", "").split("[")
        target: Any = result
        for part, following in itertools.pairwise(parts):
            container: Any = [] if following.isdigit() or following == "" else {}
            if isinstance(target, list):
                index = int(part) if part.isdigit() else len(target)
                while len(target) <= index:
                    target.append(container)
                target = target[index]
            else:
                target = target.setdefault(part, container)
        last = parts[-1]
        if isinstance(target, list):
            target.append(value)
        else:
            target[last] = value
    return result


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str = "",
        param: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"type": type, "message": message}}
        if code:
            self.body["error"]["code"] = code
            self.body["error"]["doc_url"] = f"https://stripe.com/docs/error-codes/{code}"
        if param:
            self.body["error"]["param"] = param


@dataclass
class ConnectState:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    balance_transactions: list[dict[str, Any]] = field(default_factory=list)
    # (auth, key) → (fingerprint of method, path and params; status; body)
    idempotency: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    available_minor: dict[str, int] = field(default_factory=lambda: {"usd": 10**12, "eur": 10**12})
    # Path prefixes whose next POST makes its object and then answers 500 (lost response).
    fail_next_after_create: set[str] = field(default_factory=set)
    # Every POST that reached the handlers, for assertions: (path, idempotency key).
    posts: list[tuple[str, str]] = field(default_factory=list)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1")


class ConnectFake:
    def __init__(self, *, port: int = 0) -> None:
        self.state = ConnectState()
        self._lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.state = ConnectState()

    # -- helpers for tests ------------------------------------------------------------------

    def complete_onboarding(self, account_id: str) -> None:
        with self._lock:
            account = self.state.accounts[account_id]
            account.update(details_submitted=True, charges_enabled=True, payouts_enabled=True)
            account["capabilities"]["transfers"] = "active"
            account["requirements"]["currently_due"] = []

    def transfers_to(self, account_id: str) -> list[dict[str, Any]]:
        return [t for t in self.state.transfers.values() if t["destination"] == account_id]

    # -- the API ----------------------------------------------------------------------------

    def _create_account(self, params: dict[str, Any]) -> dict[str, Any]:
        kind = params.get("type", "")
        if kind and kind not in ("express", "standard", "custom"):
            raise StripeError(400, f"Invalid type: {kind}", param="type")
        requested = params.get("capabilities", {}) or {}
        account = {
            "id": _id("acct"),
            "object": "account",
            "business_profile": {"name": None, "url": None},
            "business_type": None,
            "capabilities": {
                name: "inactive"
                for name, spec in requested.items()
                if _truthy((spec or {}).get("requested"))
            },
            "charges_enabled": False,
            "country": params.get("country", "US"),
            "created": int(time.time()),
            "default_currency": "eur" if params.get("country") in ("DE", "FR", "IT") else "usd",
            "details_submitted": False,
            "email": params.get("email"),
            "metadata": params.get("metadata", {}) or {},
            "payouts_enabled": False,
            "requirements": {"currently_due": ["external_account", "tos_acceptance.date"]},
            "type": kind or "express",
        }
        self.state.accounts[account["id"]] = account
        return account

    def _account(self, account_id: str) -> dict[str, Any]:
        account = self.state.accounts.get(account_id)
        if account is None:
            raise StripeError(
                404, f"No such account: '{account_id}'", code="resource_missing", param="account"
            )
        return account

    def _create_link(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("account", "refresh_url", "return_url", "type"):
            if not params.get(name):
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        if params["type"] not in ("account_onboarding", "account_update"):
            raise StripeError(400, f"Invalid type: {params['type']}", param="type")
        self._account(params["account"])
        token = secrets.token_urlsafe(16)
        created = int(time.time())
        self.state.links[token] = {**params, "used": False, "expires_at": created + 300}
        return {
            "object": "account_link",
            "created": created,
            "expires_at": created + 300,
            "url": f"{self.url}/connect/onboarding/{token}",
        }

    def _create_transfer(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            amount = int(params.get("amount", ""))
        except ValueError:
            raise StripeError(400, "Invalid integer: amount", param="amount") from None
        if amount < 1:
            raise StripeError(400, "This value must be greater than or equal to 1.", param="amount")
        currency = str(params.get("currency", "")).lower()
        if currency not in self.state.available_minor:
            raise StripeError(400, f"Invalid currency: {currency}.", param="currency")
        destination = str(params.get("destination", ""))
        account = self.state.accounts.get(destination)
        if account is None:
            raise StripeError(
                400,
                f"No such destination: '{destination}'",
                code="resource_missing",
                param="destination",
            )
        if account["capabilities"].get("transfers") != "active":
            raise StripeError(
                400,
                "Your destination account needs to have at least one of the following "
                "capabilities enabled: transfers, crypto_transfers, legacy_payments",
                code="insufficient_capabilities_for_transfer",
                param="destination",
            )
        if self.state.available_minor[currency] < amount:
            raise StripeError(
                400,
                "You have insufficient available funds in your Stripe account.",
                code="balance_insufficient",
            )
        self.state.available_minor[currency] -= amount
        created = int(time.time())
        transfer_id, txn_id = _id("tr"), _id("txn")
        transfer = {
            "id": transfer_id,
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": txn_id,
            "created": created,
            "currency": currency,
            "description": params.get("description"),
            "destination": destination,
            "destination_payment": _id("py"),
            "livemode": False,
            "metadata": params.get("metadata", {}) or {},
            "reversals": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/transfers/{transfer_id}/reversals",
            },
            "reversed": False,
            "source_transaction": None,
            "source_type": "card",
            "transfer_group": params.get("transfer_group"),
        }
        self.state.transfers[transfer_id] = transfer
        self.state.balance_transactions.append(
            {
                "id": txn_id,
                "object": "balance_transaction",
                "amount": -amount,
                "available_on": created,
                "created": created,
                "currency": currency,
                "description": None,
                "exchange_rate": None,
                "fee": 0,
                "fee_details": [],
                "net": -amount,
                "reporting_category": "transfer",
                "source": transfer_id,
                "status": "available",
                "type": "transfer",
            }
        )
        return transfer

    def _list(self, items: list[dict[str, Any]], query: dict[str, Any], url: str) -> dict[str, Any]:
        items = sorted(items, key=lambda item: (item["created"], item["id"]), reverse=True)
        created = query.get("created", {}) or {}
        if isinstance(created, dict):
            for op, test in (
                ("gte", lambda a, b: a >= b),
                ("gt", lambda a, b: a > b),
                ("lte", lambda a, b: a <= b),
                ("lt", lambda a, b: a < b),
            ):
                if op in created:
                    bound = int(created[op])
                    items = [item for item in items if test(item["created"], bound)]
        for name in ("type", "source", "destination", "transfer_group"):
            if query.get(name):
                items = [item for item in items if item.get(name) == query[name]]
        if query.get("starting_after"):
            ids = [item["id"] for item in items]
            if query["starting_after"] not in ids:
                raise StripeError(400, "Invalid starting_after id", param="starting_after")
            items = items[ids.index(query["starting_after"]) + 1 :]
        limit = min(100, max(1, int(query.get("limit", 10))))
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}

    def dispatch(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        parts = [part for part in path.split("/") if part]
        with self._lock:
            if method == "POST" and parts == ["v1", "accounts"]:
                return 200, self._create_account(params)
            if method == "GET" and parts[:2] == ["v1", "accounts"] and len(parts) == 3:
                return 200, self._account(parts[2])
            if method == "POST" and parts == ["v1", "account_links"]:
                return 200, self._create_link(params)
            if method == "POST" and parts == ["v1", "transfers"]:
                return 200, self._create_transfer(params)
            if method == "GET" and parts == ["v1", "transfers"]:
                return 200, self._list(list(self.state.transfers.values()), params, "/v1/transfers")
            if method == "GET" and parts[:2] == ["v1", "transfers"] and len(parts) == 3:
                transfer = self.state.transfers.get(parts[2])
                if transfer is None:
                    raise StripeError(
                        404, f"No such transfer: '{parts[2]}'", code="resource_missing", param="id"
                    )
                return 200, transfer
            if method == "GET" and parts == ["v1", "balance_transactions"]:
                return 200, self._list(
                    self.state.balance_transactions, params, "/v1/balance_transactions"
                )
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def onboarding_redirect(self, token: str) -> str:
        with self._lock:
            link = self.state.links.get(token)
            if link is None:
                raise StripeError(404, "No such link")
            if link["used"] or link["expires_at"] < time.time():
                return str(link["refresh_url"])
            link["used"] = True
            self.complete_onboarding(link["account"])
            return str(link["return_url"])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Request-Id", _id("req"))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

            def _handle(self) -> None:
                split = urlsplit(self.path)
                if split.path.startswith("/connect/onboarding/"):
                    try:
                        target = fake.onboarding_redirect(split.path.rsplit("/", 1)[-1])
                    except StripeError as error:
                        self._send(error.status, json.dumps(error.body).encode())
                        return
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.send_response(302)
                        self.send_header("Location", target)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                auth = self.headers.get("Authorization", "")
                if not auth.startswith(f"Bearer {API_KEY_PREFIX}"):
                    refusal = StripeError(
                        401,
                        "You did not provide an API key. You need to provide your API key in "
                        "the Authorization header, using Bearer auth.",
                    )
                    self._send(401, json.dumps(refusal.body).encode())
                    return
                params = decode_form(body if self.command == "POST" else split.query)
                key = self.headers.get("Idempotency-Key", "") if self.command == "POST" else ""
                if self.command == "POST":
                    fake.state.posts.append((split.path, key))
                fingerprint = hashlib.sha256(
                    f"{self.command} {split.path} {urlencode(sorted(parse_qsl(body)))}".encode()
                ).hexdigest()
                store_key = hashlib.sha256(f"{auth}:{key}".encode()).hexdigest()
                with fake._lock:
                    if key and store_key in fake.state.idempotency:
                        stored_fingerprint, status, content = fake.state.idempotency[store_key]
                        if stored_fingerprint != fingerprint:
                            conflict = StripeError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request.",
                                type="idempotency_error",
                            )
                            self._send(400, json.dumps(conflict.body).encode())
                            return
                        self._send(status, content, {"Idempotent-Replayed": "true"})
                        return
                    try:
                        status, payload = fake.dispatch(self.command, split.path, params)
                    except StripeError as error:
                        self._send(error.status, json.dumps(error.body).encode())
                        return
                    content = json.dumps(payload).encode()
                    if key:
                        fake.state.idempotency[store_key] = (fingerprint, status, content)
                    lose_response = (
                        any(
                            split.path.startswith(prefix)
                            for prefix in fake.state.fail_next_after_create
                        )
                        and self.command == "POST"
                    )
                    if lose_response:
                        fake.state.fail_next_after_create = {
                            prefix
                            for prefix in fake.state.fail_next_after_create
                            if not split.path.startswith(prefix)
                        }
                if lose_response:
                    lost = StripeError(500, "An unknown error occurred", type="api_error")
                    self._send(500, json.dumps(lost.body).encode(), {"Stripe-Should-Retry": "true"})
                    return
                self._send(status, content)

            do_GET = _handle
            do_POST = _handle

        return Handler


@contextlib.contextmanager
def running_connect_fake() -> Iterator[ConnectFake]:
    fake = ConnectFake()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator in the foreground until interrupted (``make run`` starts it)."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stripe_connect",
        description="Stripe Connect emulator on loopback (accounts, onboarding links, "
        "transfers, balance transactions) for development.",
    )
    parser.add_argument("--port", type=int, default=8421, help="port on 127.0.0.1 (8421)")
    args = parser.parse_args(argv)
    fake = ConnectFake(port=args.port)
    print(f"stripe connect emulator at {fake.url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
