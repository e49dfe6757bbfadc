"""The one adapter to Stripe: the only module that imports ``stripe``.

Every call goes through a ``StripeClient`` with the API version pinned, explicit connect
and read timeouts, and automatic network retries (the SDK re-sends the *same*
idempotency key, so a timed-out create is answered by Stripe with the object it already
made). ``settings.STRIPE_API_BASE`` points it elsewhere (localstripe in tests and
development). Callers get plain dataclasses and our own exceptions, never Stripe types.

Settings (read with defaults until config lists them): ``STRIPE_SECRET_KEY``,
``STRIPE_API_BASE``, ``STRIPE_API_VERSION``, ``STRIPE_CONNECT_TIMEOUT_SECONDS``,
``STRIPE_READ_TIMEOUT_SECONDS``, ``STRIPE_MAX_NETWORK_RETRIES``, ``STRIPE_WEBHOOK_SECRET``,
``STRIPE_WEBHOOK_TOLERANCE_SECONDS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings

# The API version every request is pinned to; responses are parsed for this shape.
DEFAULT_API_VERSION = "2025-03-31.basil"
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_READ_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_NETWORK_RETRIES = 2
DEFAULT_WEBHOOK_TOLERANCE_SECONDS = 300
# Decline codes that mean "the bank wants the buyer to authenticate" (3-D Secure).
AUTHENTICATION_CODES = frozenset({"authentication_required", "card_declined_authentication"})


class StripeGatewayError(Exception):
    """Stripe could not do what was asked."""


class StripeNotConfigured(StripeGatewayError):
    """No secret key: payments are off in this environment."""


class StripeUnavailable(StripeGatewayError):
    """Network failure, timeout, rate limit or a 5xx after the SDK's retries: retry later
    with the same idempotency key."""


class StripeRequestRejected(StripeGatewayError):
    """Stripe refused the request (4xx): retrying the same request will not help."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class CardRejected(StripeRequestRejected):
    """The card was declined or could not be set up."""


class IdempotencyConflict(StripeGatewayError):
    """Stripe refused a key sent again with other parameters. The key's first request may
    have done its work (charged, transferred): its outcome is unknown, so this is never
    taken for a refusal. Our keys always carry the same parameters; seeing this is a bug."""


class WebhookSignatureInvalid(StripeGatewayError):
    """The webhook's signature does not match its raw body (or it is stale or missing)."""


@dataclass(frozen=True)
class SetupIntentView:
    id: str
    status: str
    client_secret: str
    customer_id: str
    payment_method_id: str


@dataclass(frozen=True)
class CardView:
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None
    customer_id: str


@dataclass(frozen=True)
class PaymentIntentView:
    id: str
    # Stripe's status: succeeded, processing, requires_action, requires_payment_method, …
    status: str
    amount_minor: int
    currency: str  # upper case, like ours
    customer_id: str
    latest_charge_id: str
    failure_code: str
    failure_message: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def needs_authentication(self) -> bool:
        return self.status == "requires_action" or self.failure_code in AUTHENTICATION_CODES


@dataclass(frozen=True)
class ChargeSettlement:
    """What Stripe kept and paid out for one charge (its balance transaction)."""

    charge_id: str
    balance_transaction_id: str
    amount_minor: int
    fee_minor: int
    net_minor: int


@dataclass(frozen=True)
class RefundView:
    id: str
    status: str
    amount_minor: int
    payment_intent_id: str
    charge_id: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    created_at: datetime | None
    object_id: str
    object_type: str
    payload: dict[str, Any]


# -- the client ---------------------------------------------------------------------------


def _setting(name: str, default: Any) -> Any:
    value = getattr(settings, name, default)
    return default if value in (None, "") else value


def is_configured() -> bool:
    return bool(getattr(settings, "STRIPE_SECRET_KEY", ""))


@lru_cache(maxsize=8)
def _build_client(
    api_key: str,
    api_base: str,
    api_version: str,
    connect_timeout: float,
    read_timeout: float,
    max_retries: int,
) -> stripe.StripeClient:
    http_client = stripe.RequestsClient(timeout=(connect_timeout, read_timeout))
    base_addresses: dict[str, str] = {}
    if api_base:
        base_addresses = {"api": api_base.rstrip("/")}
    return stripe.StripeClient(
        api_key,
        stripe_version=api_version,
        base_addresses=base_addresses,  # type: ignore[arg-type]
        max_network_retries=max_retries,
        http_client=http_client,
    )


def _client() -> stripe.StripeClient:
    if not is_configured():
        raise StripeNotConfigured("STRIPE_SECRET_KEY is not set: payments are disabled.")
    return _build_client(
        settings.STRIPE_SECRET_KEY,
        _setting("STRIPE_API_BASE", ""),
        _setting("STRIPE_API_VERSION", DEFAULT_API_VERSION),
        float(_setting("STRIPE_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT_SECONDS)),
        float(_setting("STRIPE_READ_TIMEOUT_SECONDS", DEFAULT_READ_TIMEOUT_SECONDS)),
        int(_setting("STRIPE_MAX_NETWORK_RETRIES", DEFAULT_MAX_NETWORK_RETRIES)),
    )


def _options(idempotency_key: str | None = None) -> dict[str, Any]:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def error_message(error: StripeGatewayError) -> str:
    """What to tell a person about ``error``: what it is, not "cannot be reached" for all.

    Only an outage says "try again"; a refused request names Stripe's status and reason
    (a 404 from a Stripe that lacks the endpoint, an invalid parameter) because retrying
    it will not help.
    """
    if isinstance(error, StripeNotConfigured):
        return "Stripe is not configured on this platform; ask the platform's finance team."
    if isinstance(error, StripeUnavailable):
        return "Stripe cannot be reached right now; try again shortly."
    if isinstance(error, StripeRequestRejected):
        status = f" ({error.status})" if error.status else ""
        return f"Stripe refused the request{status}: {error}"
    return f"Stripe could not complete the request: {error}"


def _translate(error: stripe.StripeError) -> StripeGatewayError:
    """Stripe's exception → ours (retryable or not)."""
    if isinstance(error, stripe.CardError):
        return CardRejected(
            error.user_message or str(error), code=error.code or "card_declined", status=402
        )
    if isinstance(error, stripe.IdempotencyError):
        return IdempotencyConflict(str(error))
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return StripeUnavailable(str(error))
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        return StripeNotConfigured(str(error))
    status = getattr(error, "http_status", None)
    # 409: the same idempotency key is in flight in another request. Its outcome is not
    # known yet, so it is not a refusal: retry later with the same key.
    if status is None or status >= 500 or status == 409:
        return StripeUnavailable(str(error))
    return StripeRequestRejected(str(error), code=error.code or "", status=status)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    try:
        value = obj[name]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def _metadata(obj: Any) -> dict[str, str]:
    metadata = _get(obj, "metadata", {}) or {}
    if hasattr(metadata, "to_dict"):
        metadata = metadata.to_dict()
    return {str(key): str(value) for key, value in dict(metadata).items()}


def _id(value: Any) -> str:
    """An expandable field: either an id string or an object with an id."""
    if not value:
        return ""
    if isinstance(value, str):
        return value
    return str(_get(value, "id", ""))


# -- customers and cards ------------------------------------------------------------------


def create_customer(*, organization_id: int, name: str, email: str, idempotency_key: str) -> str:
    """A Stripe customer for a buyer organization; returns its id."""
    params: dict[str, Any] = {"name": name, "metadata": {"organization_id": str(organization_id)}}
    if email:
        params["email"] = email
    try:
        customer = _client().v1.customers.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return str(customer.id)


def _setup_intent_view(intent: Any) -> SetupIntentView:
    return SetupIntentView(
        id=str(intent["id"]),
        status=str(_get(intent, "status", "")),
        client_secret=str(_get(intent, "client_secret", "")),
        customer_id=_id(_get(intent, "customer")),
        payment_method_id=_id(_get(intent, "payment_method")),
    )


def create_setup_intent(*, customer_id: str) -> SetupIntentView:
    """A SetupIntent that saves a card for off-session charges to ``customer_id``."""
    params = {"customer": customer_id, "usage": "off_session", "payment_method_types": ["card"]}
    try:
        intent = _client().v1.setup_intents.create(params)  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _setup_intent_view(intent)


def retrieve_setup_intent(setup_intent_id: str) -> SetupIntentView:
    try:
        intent = _client().v1.setup_intents.retrieve(setup_intent_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _setup_intent_view(intent)


def _card_view(method: Any, customer_id: str) -> CardView:
    card = _get(method, "card", {}) or {}
    return CardView(
        payment_method_id=str(method["id"]),
        brand=str(_get(card, "brand", "")),
        last4=str(_get(card, "last4", "")),
        exp_month=_get(card, "exp_month"),
        exp_year=_get(card, "exp_year"),
        customer_id=customer_id,
    )


def set_default_payment_method(*, customer_id: str, payment_method_id: str) -> CardView:
    """Attach the card to the customer (a no-op when the SetupIntent already did) and make
    it the one invoices are charged to."""
    client = _client()
    try:
        method = client.v1.payment_methods.retrieve(payment_method_id)
        if _id(_get(method, "customer")) != customer_id:
            method = client.v1.payment_methods.attach(
                payment_method_id,
                {"customer": customer_id},  # type: ignore[arg-type]
            )
        client.v1.customers.update(
            customer_id,
            {"invoice_settings": {"default_payment_method": payment_method_id}},  # type: ignore[arg-type]
        )
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _card_view(method, customer_id)


# -- payments -------------------------------------------------------------------------------


def _payment_intent_view(intent: Any) -> PaymentIntentView:
    error = _get(intent, "last_payment_error", {}) or {}
    return PaymentIntentView(
        id=str(intent["id"]),
        status=str(_get(intent, "status", "")),
        amount_minor=int(_get(intent, "amount", 0)),
        currency=str(_get(intent, "currency", "")).upper(),
        customer_id=_id(_get(intent, "customer")),
        latest_charge_id=_id(_get(intent, "latest_charge")),
        failure_code=str(_get(error, "decline_code", "") or _get(error, "code", "")),
        failure_message=str(_get(error, "message", ""))[:300],
        metadata=_metadata(intent),
    )


def _payment_intent_of_error(error: stripe.StripeError) -> str:
    """The PaymentIntent a declined confirmation created: Stripe names it in the error;
    some implementations only name the charge, whose ``payment_intent`` we then read."""
    body = getattr(error, "json_body", None) or {}
    details = body.get("error", {}) if isinstance(body, dict) else {}
    intent_id = _id(details.get("payment_intent"))
    if intent_id:
        return intent_id
    charge_id = _id(details.get("charge"))
    if charge_id:
        try:
            charge = _client().v1.charges.retrieve(charge_id)
        except stripe.StripeError as lookup_error:
            raise _translate(lookup_error) from lookup_error
        return _id(_get(charge, "payment_intent"))
    return ""


def create_payment_intent(
    *,
    customer_id: str,
    payment_method_id: str,
    amount_minor: int,
    currency: str,
    idempotency_key: str,
    metadata: dict[str, str],
    off_session: bool,
) -> PaymentIntentView:
    """Create and confirm a PaymentIntent for a saved card.

    A decline is an answer, not an error: the returned view carries the PaymentIntent's
    status and the decline code. ``StripeUnavailable`` means nobody knows yet: retry with
    the same ``idempotency_key``.
    """
    params: dict[str, Any] = {
        "amount": amount_minor,
        "currency": currency.lower(),
        "customer": customer_id,
        "payment_method": payment_method_id,
        "payment_method_types": ["card"],
        "metadata": metadata,
        "confirm": True,
    }
    if off_session:
        params["off_session"] = True
    client = _client()
    try:
        intent = client.v1.payment_intents.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    except stripe.CardError as error:
        intent_id = _payment_intent_of_error(error)
        if not intent_id:
            raise _translate(error) from error
        view = retrieve_payment_intent(intent_id)
        if view.failure_code or view.status == "requires_action":
            return view
        return PaymentIntentView(
            **{
                **view.__dict__,
                "failure_code": error.code or "card_declined",
                "failure_message": (error.user_message or str(error))[:300],
            }
        )
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _payment_intent_view(intent)


def retrieve_payment_intent(payment_intent_id: str) -> PaymentIntentView:
    try:
        intent = _client().v1.payment_intents.retrieve(payment_intent_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _payment_intent_view(intent)


def find_payment_intent(
    *, customer_id: str, attempt_id: int, created_since: datetime
) -> PaymentIntentView | None:
    """The PaymentIntent made for our attempt ``attempt_id`` (its ``metadata``), if Stripe
    has one: the customer's PaymentIntents created since ``created_since``, newest first.

    Stripe keeps idempotency keys for about a day: an attempt whose answer was lost must be
    looked up before it is sent again, or a late replay would charge the card twice.
    """
    params: dict[str, Any] = {
        "customer": customer_id,
        "created": {"gte": int(created_since.timestamp())},
        "limit": 100,
    }
    try:
        page = _client().v1.payment_intents.list(params)  # type: ignore[arg-type]
        for intent in page.auto_paging_iter():
            if _metadata(intent).get("attempt_id") == str(attempt_id):
                return _payment_intent_view(intent)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return None


def cancel_payment_intent(payment_intent_id: str) -> PaymentIntentView:
    """Cancel a PaymentIntent nobody authenticated. Stripe refuses (400) once it succeeded."""
    try:
        intent = _client().v1.payment_intents.cancel(payment_intent_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _payment_intent_view(intent)


def payment_intent_client_secret(payment_intent_id: str) -> str:
    """For the invoice page's on-session authentication (never stored on our side)."""
    try:
        intent = _client().v1.payment_intents.retrieve(payment_intent_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return str(_get(intent, "client_secret", ""))


def retrieve_charge_settlement(charge_id: str) -> ChargeSettlement | None:
    """The fee and net of a charge, from its balance transaction (None until it exists)."""
    client = _client()
    try:
        charge = client.v1.charges.retrieve(charge_id)
        transaction_id = _id(_get(charge, "balance_transaction"))
        if not transaction_id:
            return None
        transaction = client.v1.balance_transactions.retrieve(transaction_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    amount = int(_get(transaction, "amount", 0))
    fee = int(_get(transaction, "fee", 0))
    return ChargeSettlement(
        charge_id=charge_id,
        balance_transaction_id=transaction_id,
        amount_minor=amount,
        fee_minor=fee,
        net_minor=int(_get(transaction, "net", amount - fee)),
    )


# -- refunds --------------------------------------------------------------------------------


def _refund_view(refund: Any) -> RefundView:
    return RefundView(
        id=str(refund["id"]),
        status=str(_get(refund, "status", "")),
        amount_minor=int(_get(refund, "amount", 0)),
        payment_intent_id=_id(_get(refund, "payment_intent")),
        charge_id=_id(_get(refund, "charge")),
        metadata=_metadata(refund),
    )


def create_refund(
    *, payment_intent_id: str, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
) -> RefundView:
    params = {"payment_intent": payment_intent_id, "amount": amount_minor, "metadata": metadata}
    try:
        refund = _client().v1.refunds.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _refund_view(refund)


def retrieve_refund(refund_id: str) -> RefundView:
    try:
        refund = _client().v1.refunds.retrieve(refund_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _refund_view(refund)


# -- webhooks -------------------------------------------------------------------------------


def verify_webhook(*, payload: bytes, signature_header: str) -> WebhookEvent:
    """Check the ``Stripe-Signature`` header against the raw body; parse the event."""
    secret = getattr(settings, "STRIPE_WEBHOOK_SECRET", "")
    if not secret:
        raise WebhookSignatureInvalid("STRIPE_WEBHOOK_SECRET is not set.")
    if not signature_header:
        raise WebhookSignatureInvalid("No Stripe-Signature header.")
    tolerance = int(_setting("STRIPE_WEBHOOK_TOLERANCE_SECONDS", DEFAULT_WEBHOOK_TOLERANCE_SECONDS))
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature_header, secret, tolerance
        )
        body = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as error:
        raise WebhookSignatureInvalid(str(error)) from error
    if not isinstance(body, dict) or not body.get("id") or not body.get("type"):
        raise WebhookSignatureInvalid("Not a Stripe event.")
    data = body.get("data") or {}
    data_object = (data.get("object") if isinstance(data, dict) else None) or {}
    created = body.get("created")
    # A signed body that is still not shaped like an event is refused, never a 500.
    if not isinstance(data, dict) or not isinstance(data_object, dict):
        raise WebhookSignatureInvalid("Not a Stripe event: data.object is not an object.")
    if created is not None and not (
        isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 10**11
    ):
        raise WebhookSignatureInvalid("Not a Stripe event: created is not a Unix time.")
    return WebhookEvent(
        id=str(body["id"]),
        type=str(body["type"]),
        created_at=datetime.fromtimestamp(int(created), tz=UTC) if created else None,
        object_id=str(data_object.get("id", "")),
        object_type=str(data_object.get("object", "")),
        payload=body,
    )


# -- Connect: partner accounts, onboarding links, transfers ------------------------------------
#
# ``settings.STRIPE_CONNECT_API_BASE``, when set, sends only these calls elsewhere (the
# tests' Connect server: localstripe has no Connect); otherwise they go where the rest go.


@dataclass(frozen=True)
class ConnectAccountView:
    id: str
    details_submitted: bool
    payouts_enabled: bool
    # The ``transfers`` capability: "active", "pending", "inactive" or "" (not requested).
    transfers_capability: str


@dataclass(frozen=True)
class TransferView:
    id: str
    amount_minor: int
    currency: str  # upper case
    destination: str
    balance_transaction_id: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BalanceTransactionView:
    id: str
    type: str
    # Signed, in the platform's balance: a transfer out is negative.
    amount_minor: int
    fee_minor: int
    net_minor: int
    currency: str  # upper case
    # The object that moved the money (``tr_…`` for a transfer, ``ch_…`` for a charge).
    source_id: str
    created_at: datetime


def _connect_client() -> stripe.StripeClient:
    if not is_configured():
        raise StripeNotConfigured("STRIPE_SECRET_KEY is not set: payouts are disabled.")
    return _build_client(
        settings.STRIPE_SECRET_KEY,
        _setting("STRIPE_CONNECT_API_BASE", "") or _setting("STRIPE_API_BASE", ""),
        _setting("STRIPE_API_VERSION", DEFAULT_API_VERSION),
        float(_setting("STRIPE_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT_SECONDS)),
        float(_setting("STRIPE_READ_TIMEOUT_SECONDS", DEFAULT_READ_TIMEOUT_SECONDS)),
        int(_setting("STRIPE_MAX_NETWORK_RETRIES", DEFAULT_MAX_NETWORK_RETRIES)),
    )


def _account_view(account: Any) -> ConnectAccountView:
    capabilities = _get(account, "capabilities", {}) or {}
    return ConnectAccountView(
        id=str(account["id"]),
        details_submitted=bool(_get(account, "details_submitted", False)),
        payouts_enabled=bool(_get(account, "payouts_enabled", False)),
        transfers_capability=str(_get(capabilities, "transfers", "")),
    )


def create_connect_account(
    *, organization_id: int, country: str, email: str, idempotency_key: str
) -> ConnectAccountView:
    """An Express account for a partner, asking for the ``transfers`` capability."""
    params: dict[str, Any] = {
        "type": "express",
        "country": country,
        "capabilities": {"transfers": {"requested": True}},
        "metadata": {"organization_id": str(organization_id)},
    }
    if email:
        params["email"] = email
    try:
        account = _connect_client().v1.accounts.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _account_view(account)


def retrieve_connect_account(account_id: str) -> ConnectAccountView:
    try:
        account = _connect_client().v1.accounts.retrieve(account_id)
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _account_view(account)


def create_account_link(*, account_id: str, refresh_url: str, return_url: str) -> str:
    """A one-time onboarding URL on Stripe for the partner (expires in minutes)."""
    params = {
        "account": account_id,
        "refresh_url": refresh_url,
        "return_url": return_url,
        "type": "account_onboarding",
    }
    try:
        link = _connect_client().v1.account_links.create(params)  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return str(link["url"])


def create_transfer(
    *,
    destination: str,
    amount_minor: int,
    currency: str,
    idempotency_key: str,
    transfer_group: str,
    metadata: dict[str, str],
) -> TransferView:
    """Move ``amount_minor`` from the platform's balance to a connected account.

    ``StripeUnavailable`` means nobody knows yet: retry with the same key, and Stripe
    answers with the transfer it already made, if it made one.
    """
    params = {
        "amount": amount_minor,
        "currency": currency.lower(),
        "destination": destination,
        "transfer_group": transfer_group,
        "metadata": metadata,
    }
    try:
        transfer = _connect_client().v1.transfers.create(params, _options(idempotency_key))  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    return _transfer_view(transfer)


def find_transfer(*, transfer_group: str) -> TransferView | None:
    """The transfer already made for ``transfer_group``, if any.

    Stripe keeps idempotency keys for about a day: a payout whose answer was lost must be
    looked up, not re-sent, or a late retry would transfer the money twice.
    """
    try:
        page = _connect_client().v1.transfers.list({"transfer_group": transfer_group, "limit": 10})  # type: ignore[arg-type]
    except stripe.StripeError as error:
        raise _translate(error) from error
    transfers = list(page.data)
    return _transfer_view(transfers[0]) if transfers else None


def _transfer_view(transfer: Any) -> TransferView:
    return TransferView(
        id=str(transfer["id"]),
        amount_minor=int(_get(transfer, "amount", 0)),
        currency=str(_get(transfer, "currency", "")).upper(),
        destination=_id(_get(transfer, "destination")),
        balance_transaction_id=_id(_get(transfer, "balance_transaction")),
        metadata=_metadata(transfer),
    )


def list_balance_transactions(
    *, created_from: datetime, created_until: datetime, type: str | None = None
) -> list[BalanceTransactionView]:
    """The platform's balance transactions created in ``[created_from, created_until)``."""
    params: dict[str, Any] = {
        "created": {"gte": int(created_from.timestamp()), "lt": int(created_until.timestamp())},
        "limit": 100,
    }
    if type:
        params["type"] = type
    try:
        page = _connect_client().v1.balance_transactions.list(params)  # type: ignore[arg-type]
        transactions = list(page.auto_paging_iter())
    except stripe.StripeError as error:
        raise _translate(error) from error
    return [
        BalanceTransactionView(
            id=str(txn["id"]),
            type=str(_get(txn, "type", "")),
            amount_minor=int(_get(txn, "amount", 0)),
            fee_minor=int(_get(txn, "fee", 0)),
            net_minor=int(_get(txn, "net", 0)),
            currency=str(_get(txn, "currency", "")).upper(),
            source_id=_id(_get(txn, "source")),
            created_at=datetime.fromtimestamp(int(_get(txn, "created", 0)), tz=UTC),
        )
        for txn in transactions
    ]
