"""The gateway's ASGI application: OpenAI's API in front of partner nodes.

A plain ASGI callable, no framework and no database query per request (docs/gateway.md
"The path of one request"): authenticate against the cached key table, check the
contract and model, count the request against its limits and reserve its worst case
(``gateway.budget``), pick a node (``gateway.routing``), sign a receipt, relay to the
agent (``gateway.upstream``) and the answer back, settle the budget from the usage
relayed, and log the attempt (``gateway.request_log``). Failover to another node happens
only before the first byte has reached the buyer.

A model named ``d-<public id>`` is a buyer's deployment on their reserved GPUs
(``gateway.catalog.Deployment``): any key of the buyer organization may call it (another
organization's key gets 404, as for a model that does not exist), it goes only to its
own node, and, billed by the reservation, it reserves no spend (rate limits apply).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from django.conf import settings

from capacity.agent.receipts import Receipt, sign_receipt
from config.gateway_keys import receipt_signing_key
from gateway import bounds, errors
from gateway.budget import Refusal, Reservation, Store, make_store
from gateway.catalog import (
    DEPLOYMENT_MODEL,
    Catalog,
    CatalogRefresher,
    ContractView,
    InferenceLine,
    KeyGrant,
    NodeRoute,
)
from gateway.errors import GatewayError
from gateway.relay import STATUS_UPSTREAM_FAILED, STATUS_UPSTREAM_TIMEOUT, Outcome, relay_attempt
from gateway.request_log import Attempt, RequestLog
from gateway.responses import (
    Headers,
    Receive,
    Scope,
    Send,
    cors_headers,
    send_error,
    send_json,
    send_preflight,
)
from gateway.routing import Router
from gateway.upstream import AgentClient

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_KINDS = {b"/v1/chat/completions": "chat/completions", b"/v1/completions": "completions"}


@dataclass(frozen=True)
class GatewaySettings:
    store_url: str
    site_url: str
    default_requests_per_minute: int
    default_tokens_per_minute: int
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    circuit_failures: int
    circuit_cooldown_s: float

    @classmethod
    def from_django(cls) -> GatewaySettings:
        return cls(
            store_url=settings.GATEWAY_STORE_URL,
            site_url=settings.SITE_URL.rstrip("/"),
            default_requests_per_minute=settings.GATEWAY_DEFAULT_REQUESTS_PER_MINUTE,
            default_tokens_per_minute=settings.GATEWAY_DEFAULT_TOKENS_PER_MINUTE,
            connect_timeout_s=settings.GATEWAY_CONNECT_TIMEOUT_MS / 1000,
            read_timeout_s=settings.GATEWAY_READ_TIMEOUT_MS / 1000,
            max_attempts=settings.GATEWAY_MAX_ATTEMPTS,
            circuit_failures=settings.GATEWAY_CIRCUIT_FAILURES,
            circuit_cooldown_s=settings.GATEWAY_CIRCUIT_COOLDOWN_MS / 1000,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """What a request for one model bills (a line: its prices, the caps its spend counts
    against) and the nodes it may go to."""

    line: InferenceLine
    routes: tuple[NodeRoute, ...]
    contract_id: int
    contract_cap_micros: int | None
    key_cap_micros: int | None


# Request ids: this process's random half and a counter (unique, and no system call
# per request as ``secrets`` would make).
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_counter = itertools.count(secrets.randbelow(2**32))


def _new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter) % 2**64:016x}"


def _seconds_to_next_minute(now: float) -> int:
    return max(1, 60 - int(now) % 60)


def _seconds_to_next_month(now: datetime) -> int:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return max(1, int((following - now).total_seconds()))


class Gateway:
    def __init__(self, config: GatewaySettings | None = None) -> None:
        self.config = config or GatewaySettings.from_django()
        self.catalog = CatalogRefresher()
        self.router = Router(
            failures_to_open=self.config.circuit_failures,
            cooldown_s=self.config.circuit_cooldown_s,
        )
        self.request_log = RequestLog()
        self.store: Store | None = None
        self.agents: AgentClient | None = None
        self._signing_key = receipt_signing_key()
        self._cors_origin = self.config.site_url.encode("latin-1")

    # -- lifespan ---------------------------------------------------------------------

    async def startup(self) -> None:
        self.store = make_store(self.config.store_url)
        self.agents = AgentClient(
            connect_timeout_s=self.config.connect_timeout_s,
            read_timeout_s=self.config.read_timeout_s,
        )
        await self.catalog.start()
        self.request_log.start()

    async def shutdown(self) -> None:
        await self.catalog.stop()
        await self.request_log.stop()
        if self.agents is not None:
            await self.agents.close()
        if self.store is not None:
            await self.store.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- ASGI entry -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        cors = cors_headers(headers, allowed_origin=self._cors_origin)
        method = scope["method"]
        path: str = scope["path"]
        if method == "OPTIONS":
            await send_preflight(send, headers, cors)
            return
        request_id = _new_request_id()
        try:
            if path in ("/v1/chat/completions", "/v1/completions"):
                if method != "POST":
                    raise errors.method_not_allowed()
                await self._completion(
                    scope, receive, send, headers, cors, _KINDS[path.encode()], request_id
                )
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise errors.method_not_allowed()
                await self._models(send, headers, cors, path, request_id)
            elif path == "/healthz":
                body = orjson.dumps({"status": "ok", "catalog_reloads": self.catalog.reloads})
                await send_json(send, 200, body, cors, request_id)
            else:
                raise errors.not_found(path)
        except GatewayError as error:
            await send_error(send, error, cors, request_id)
        except Exception:
            # The shared store unreachable, a bug: refuse in OpenAI's shape (budgets fail
            # closed: nothing is forwarded without a reservation).
            logger.exception("gateway request %s failed", request_id)
            await send_error(send, errors.internal_error(), cors, request_id)

    # -- authentication ---------------------------------------------------------------

    def _authorize(self, headers: dict[bytes, bytes]) -> tuple[Catalog, KeyGrant]:
        """The key's grant (401 unknown, 403 when its creator can no longer spend)."""
        catalog = self.catalog.current
        authorization = headers.get(b"authorization", b"")
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise errors.invalid_api_key()
        grant = catalog.keys.get(hashlib.sha256(token.strip()).hexdigest())
        if grant is None:
            raise errors.invalid_api_key()
        if not grant.may_operate:
            raise errors.permission_denied("This API key's creator can no longer spend.")
        return catalog, grant

    @staticmethod
    def _contract(catalog: Catalog, grant: KeyGrant) -> ContractView | None:
        """The active contract of the key's inference line, or None (``_without_contract``
        says why): such a key may still call its organization's deployments."""
        contract = catalog.contracts.get(grant.contract_id) if grant.contract_id else None
        return contract if contract is not None and contract.is_active else None

    @staticmethod
    def _without_contract(grant: KeyGrant) -> GatewayError:
        if grant.contract_id is None:
            return errors.permission_denied("This API key is not tied to an inference line.")
        return errors.permission_denied("The contract of this API key is not active.")

    def _target(self, catalog: Catalog, grant: KeyGrant, model: str) -> Target:
        """What a request for ``model`` bills and where it may go: the organization's
        deployment of that private name (another organization's is as unknown as a model
        that does not exist), else the key's contract's inference line of that product."""
        deployment = catalog.deployments.get(model)
        if deployment is not None and deployment.organization_id == grant.organization_id:
            if not deployment.contract_is_active:
                raise errors.permission_denied("The contract of this deployment is not active.")
            return Target(
                line=deployment.line,
                routes=(deployment.route,) if deployment.route is not None else (),
                contract_id=deployment.contract_id,
                contract_cap_micros=None,
                key_cap_micros=None,
            )
        if DEPLOYMENT_MODEL.match(model):
            # Another organization's, ended, or never made: it does not exist for this key.
            raise errors.model_not_found(model)
        contract = self._contract(catalog, grant)
        if contract is None:
            raise self._without_contract(grant)
        line = contract.lines.get(model)
        if line is None:
            raise errors.model_not_found(model)
        return Target(
            line=line,
            routes=catalog.routes.get(line.product_slug, ()),
            contract_id=contract.contract_id,
            contract_cap_micros=contract.cap_micros,
            key_cap_micros=grant.cap_micros,
        )

    async def _models(
        self,
        send: Send,
        headers: dict[bytes, bytes],
        cors: Headers,
        path: str,
        request_id: str,
    ) -> None:
        catalog, grant = self._authorize(headers)
        contract = self._contract(catalog, grant)
        deployments = catalog.deployments_by_organization.get(grant.organization_id, ())
        if contract is None and not deployments:
            raise self._without_contract(grant)
        models: list[dict[str, object]] = [
            {
                "id": line.product_slug,
                "object": "model",
                "created": line.product_created,
                "owned_by": "hashgrid",
            }
            for line in (contract.lines.values() if contract is not None else ())
        ]
        # The organization's deployments, named privately, with the model they serve.
        models += [
            {
                "id": deployment.model,
                "object": "model",
                "created": deployment.line.product_created,
                "owned_by": "hashgrid",
                "root": deployment.line.product_slug,
            }
            for deployment in deployments
        ]
        if path == "/v1/models":
            body = orjson.dumps({"object": "list", "data": models})
        else:
            wanted = path.removeprefix("/v1/models/")
            found = [model for model in models if model["id"] == wanted]
            if not found:
                raise errors.model_not_found(wanted)
            body = orjson.dumps(found[0])
        await send_json(send, 200, body, cors, request_id)

    # -- completions ------------------------------------------------------------------

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise errors.body_too_large(MAX_BODY_BYTES)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise errors.invalid_request("The client went away.", param=None)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise errors.body_too_large(MAX_BODY_BYTES)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _completion(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        cors: Headers,
        kind: str,
        request_id: str,
    ) -> None:
        catalog, grant = self._authorize(headers)
        raw = await self._read_body(receive, headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise errors.invalid_request(
                "We could not parse the JSON body of your request.", param=None
            ) from error
        if not isinstance(body, dict):
            raise errors.invalid_request("The request body must be a JSON object.", param=None)
        try:
            bounds.validate_common(body)
            if kind == "chat/completions":
                bounds.validate_chat(body)
                max_input = bounds.max_input_tokens_chat(body)
            else:
                bounds.validate_completion(body)
                max_input = bounds.max_input_tokens_completion(body)
            max_output = bounds.max_output_tokens(body)
        except bounds.BodyError as error:
            raise errors.invalid_request(str(error), param=error.param) from error
        model = body["model"]
        target = self._target(catalog, grant, model)
        if max_output is None:
            # The engine must stop within the receipt's bound.
            max_output = bounds.DEFAULT_MAX_OUTPUT_TOKENS
            body["max_tokens"] = max_output
        streaming = bool(body.get("stream"))
        include_usage = continuous_usage = False
        if streaming:
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage"))
            continuous_usage = bool(options.get("continuous_usage_stats"))
            body["stream_options"] = {
                **options,
                "include_usage": True,
                "continuous_usage_stats": True,
            }
        forwarded = orjson.dumps(body)
        reservation = await self._reserve(catalog, grant, target, max_input, max_output)
        spent_tokens = spent_micros = 0
        try:
            spent_tokens, spent_micros = await self._route(
                send=send,
                receive=receive,
                cors=cors,
                kind=kind,
                forwarded=forwarded,
                routes=target.routes,
                model=model,
                grant=grant,
                line=target.line,
                max_input=max_input,
                max_output=max_output,
                streaming=streaming,
                include_usage=include_usage,
                continuous_usage=continuous_usage,
                request_id=request_id,
            )
        finally:
            assert self.store is not None
            await self.store.settle(reservation, tokens=spent_tokens, cost_micros=spent_micros)

    async def _reserve(
        self,
        catalog: Catalog,
        grant: KeyGrant,
        target: Target,
        max_input: int,
        max_output: int,
    ) -> Reservation:
        """Count the request against the key's limits and reserve its worst case against
        the target's caps (a deployment's line has no price and no cap: nothing is
        reserved, the reservation pays)."""
        line, contract_id = target.line, target.contract_id
        now = time.time()
        moment = datetime.fromtimestamp(now, tz=UTC)
        month = f"{moment.year:04d}{moment.month:02d}"
        same_month = month == catalog.month
        reservation = Reservation(
            key_id=grant.key_id,
            contract_id=contract_id,
            minute=int(now) // 60,
            month=month,
            requests_per_minute=grant.requests_per_minute
            or self.config.default_requests_per_minute,
            tokens_per_minute=grant.tokens_per_minute or self.config.default_tokens_per_minute,
            tokens=max_input + max_output,
            cost_micros=bounds.cost_micros(
                input_tokens=max_input,
                output_tokens=max_output,
                input_price_ticks=line.input_price_ticks,
                output_price_ticks=line.output_price_ticks,
            ),
            key_cap_micros=target.key_cap_micros,
            contract_cap_micros=target.contract_cap_micros,
            key_seed_micros=catalog.key_spend_micros.get(grant.key_id, 0) if same_month else 0,
            contract_seed_micros=(
                catalog.contract_spend_micros.get(contract_id, 0) if same_month else 0
            ),
        )
        assert self.store is not None
        refusal = await self.store.reserve(reservation)
        if refusal is None:
            return reservation
        if refusal.is_budget:
            whose = "API key" if refusal is Refusal.KEY_BUDGET else "contract"
            raise errors.insufficient_quota(
                f"This request could exceed the {whose}'s monthly spend cap.",
                retry_after_s=_seconds_to_next_month(moment),
            )
        what = "requests" if refusal is Refusal.REQUESTS_PER_MINUTE else "tokens"
        raise errors.rate_limited(
            f"Rate limit reached: {what} per minute for this API key.",
            retry_after_s=_seconds_to_next_minute(now),
        )

    def _receipt(
        self,
        *,
        rid: str,
        route_node: int,
        agent: str,
        grant: KeyGrant,
        line: InferenceLine,
        max_input: int,
        max_output: int,
        iat: int,
    ) -> str:
        return sign_receipt(
            self._signing_key,
            Receipt(
                v=1,
                rid=rid,
                node=route_node,
                agent=agent,
                line=line.line_id,
                key=grant.key_id,
                product=line.product_slug,
                max_input_tokens=max_input,
                max_output_tokens=max_output,
                iat=iat,
            ),
        )

    async def _route(
        self,
        *,
        send: Send,
        receive: Receive,
        cors: Headers,
        kind: str,
        forwarded: bytes,
        routes: tuple[NodeRoute, ...],
        model: str,
        grant: KeyGrant,
        line: InferenceLine,
        max_input: int,
        max_output: int,
        streaming: bool,
        include_usage: bool,
        continuous_usage: bool,
        request_id: str,
    ) -> tuple[int, int]:
        """Try ``routes`` until one answers; return the tokens and micros to settle."""
        tried: set[int] = set()
        timed_out = False
        assert self.agents is not None
        for attempt_number in range(self.config.max_attempts):
            candidates = self.router.candidates(
                routes, exclude=tried, now=time.monotonic(), wall=time.time()
            )
            if not candidates:
                break
            route = candidates[0]
            tried.add(route.node_id)
            rid = request_id if attempt_number == 0 else _new_request_id()
            iat = int(time.time())
            receipt = self._receipt(
                rid=rid,
                route_node=route.node_id,
                agent=route.agent_public_key,
                grant=grant,
                line=line,
                max_input=max_input,
                max_output=max_output,
                iat=iat,
            )
            started = time.monotonic()
            self.router.acquire(route.node_id)
            outcome = Outcome(status=STATUS_UPSTREAM_FAILED, node_ok=False)
            try:
                outcome = await relay_attempt(
                    agents=self.agents,
                    send=send,
                    receive=receive,
                    cors=cors,
                    agent_url=route.agent_url,
                    kind=kind,
                    forwarded=forwarded,
                    receipt=receipt,
                    rid=rid,
                    streaming=streaming,
                    include_usage=include_usage,
                    continuous_usage=continuous_usage,
                    started=started,
                )
            finally:
                self.router.release(route.node_id, ok=outcome.node_ok)
                input_tokens = min(outcome.input_tokens, max_input)
                output_tokens = min(outcome.output_tokens, max_output)
                self.request_log.append(
                    Attempt(
                        request_id=rid,
                        node_id=route.node_id,
                        api_key_id=grant.key_id,
                        line_id=line.line_id,
                        product_slug=line.product_slug,
                        max_input_tokens=max_input,
                        max_output_tokens=max_output,
                        issued_at=iat,
                        status=outcome.status,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        time_to_first_token_ms=outcome.time_to_first_token_ms,
                        duration_ms=int((time.monotonic() - started) * 1000),
                    )
                )
            if outcome.first_byte_sent:
                return input_tokens + output_tokens, bounds.cost_micros(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    input_price_ticks=line.input_price_ticks,
                    output_price_ticks=line.output_price_ticks,
                )
            timed_out = outcome.status == STATUS_UPSTREAM_TIMEOUT
        if timed_out:
            raise errors.upstream_timeout()
        raise errors.no_healthy_node(model)


def create_app() -> Gateway:
    return Gateway()
