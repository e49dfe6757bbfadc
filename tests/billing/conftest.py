"""Billing test fixtures: localstripe for the whole session, a proxy adding Stripe's
idempotency in front of it, and builders for contracts with metered usage.

Billing rates metering's rollups, so ``capacity.metering`` must be installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.apps import apps

from billing import stripe_gateway
from billing.models import BillingCustomer
from contracts.models import InferenceProduct
from contracts.on_demand import line_api_key_create, on_demand_enable
from devtools.stripe_connect import ConnectFake, running_connect_fake
from tests.billing.stripe_fakes import (
    PUBLISHABLE_KEY,
    SECRET_KEY,
    WEBHOOK_SECRET,
    LocalStripe,
    StripeProxy,
)
from tests.factories import OfferFactory, SiteFactory, gpu_pool, stored_usage

D = Decimal


@pytest.fixture(autouse=True)
def _metering_installed() -> None:
    if not apps.is_installed("capacity.metering"):
        pytest.fail(
            "billing tests need the metering app (capacity.metering) installed",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stripe_proxy(localstripe: LocalStripe) -> Iterator[StripeProxy]:
    proxy = StripeProxy(localstripe.url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def stripe_settings(settings, localstripe, stripe_proxy):
    """The gateway talks to localstripe through the proxy; the browser loads localstripe's
    fake Stripe.js directly."""
    stripe_proxy.reset()
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = PUBLISHABLE_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = stripe_proxy.url
    settings.STRIPE_JS_URL = localstripe.js_url
    settings.STRIPE_MAX_NETWORK_RETRIES = 2
    settings.STRIPE_READ_TIMEOUT_SECONDS = 10
    settings.CONTRACTS_ASSUME_PAYMENT_METHOD = True
    settings.BILLING_GRACE_DAYS = 3
    settings.BILLING_DUNNING_RETRY_DAYS = (3, 5, 7)
    return settings


@pytest.fixture(scope="session")
def connect_fake() -> Iterator[ConnectFake]:
    """localstripe has no Connect: the gateway's Connect calls go to this server."""
    with running_connect_fake() as fake:
        yield fake


@pytest.fixture(autouse=True)
def connect_settings(stripe_settings, connect_fake):
    connect_fake.reset()
    stripe_settings.STRIPE_CONNECT_API_BASE = connect_fake.url
    return stripe_settings


def save_card(organization, localstripe: LocalStripe, number: str = "4242424242424242"):
    """A Stripe customer with ``number`` saved as its default card (as the card page does)."""
    customer_id = stripe_gateway.create_customer(
        organization_id=organization.pk,
        name=organization.name,
        email="",
        idempotency_key=f"test-customer-{organization.pk}-{number}",
    )
    method = localstripe.card_payment_method(number)
    card = stripe_gateway.set_default_payment_method(
        customer_id=customer_id, payment_method_id=method
    )
    customer, _ = BillingCustomer.objects.update_or_create(
        organization=organization,
        defaults={
            "stripe_customer_id": customer_id,
            "default_payment_method_id": card.payment_method_id,
            "card_brand": card.brand,
            "card_last4": card.last4,
        },
    )
    return customer


@pytest.fixture
def site(partner_org):
    return SiteFactory(organization=partner_org, name="Permian Flare 1")


@pytest.fixture
def devices(site):
    return gpu_pool(site=site, gpus=8, per_node=4)


@pytest.fixture
def offer(site, devices):
    return OfferFactory(
        site=site,
        gpu_count=8,
        on_demand_price_per_gpu_hour=D("2.4000"),
        reserved_price_1m_per_gpu_hour=D("2.1000"),
        available_from=datetime(2025, 1, 1, tzinfo=UTC),
    )


@pytest.fixture
def llm(devices):
    product = InferenceProduct.objects.create(
        slug="hashgrid-llama-70b",
        name="Llama 70B",
        input_price_per_million_tokens=D("0.2000"),
        output_price_per_million_tokens=D("0.6000"),
    )
    product.nodes.set({device.node for device in devices})
    return product


def inference_line_with_key(*, buyer, actor, product, now: datetime):
    line = on_demand_enable(buyer=buyer, actor=actor, inference_product=product, now=now)
    api_key, _secret = line_api_key_create(line=line, name="prod", actor=actor)
    api_key.created_at = now
    api_key.save(update_fields=["created_at"])
    return line, api_key


def gpu_line_with_key(*, buyer, actor, offer, now: datetime):
    line = on_demand_enable(buyer=buyer, actor=actor, offer=offer, now=now)
    api_key, _secret = line_api_key_create(line=line, name="gpu", actor=actor)
    api_key.created_at = now
    api_key.save(update_fields=["created_at"])
    return line, api_key


def add_usage(
    *,
    gpu,
    hour: datetime,
    kind: str,
    ref: str,
    busy_ms: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
):
    """Store usage in ``hour`` as ingest does (``tests.factories.stored_usage``: a record
    and its hourly rollup), then attribute it as beat's attribution run does; return the
    rollup row."""
    from capacity.metering.attribution import attribute_records
    from capacity.metering.models import HourlyUsage, UsageRecord

    record = stored_usage(
        gpu=gpu,
        start=hour,
        kind=kind,
        ref=ref,
        busy_ms=busy_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    attribute_records(records=UsageRecord.objects.filter(pk=record.pk))
    return HourlyUsage.objects.get(gpu=gpu, workload_kind=kind, workload_ref=ref, hour=hour)


def add_tokens(
    *, gpu, hour: datetime, line, key, input_tokens: int = 0, output_tokens: int = 0
) -> None:
    """Inference requests of ``key`` for ``line`` served on ``gpu``, issued at ``hour``,
    metered from their receipt records as a poll meters them
    (``tests.capacity.metering.receipt_builders.meter_requests``)."""
    from tests.capacity.metering.receipt_builders import meter_requests

    meter_requests(
        gpu=gpu,
        line_id=line.pk,
        key_id=key.pk,
        product=line.inference_product.slug,
        at=hour,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def finalized_invoice_for(buyer, *, total_minor: int = 12_345, month=None):
    """A finalized invoice of ``total_minor`` (a commitment true-up) for ``buyer``."""
    from datetime import date

    import time_machine

    from billing.invoices import draft_invoices, finalize_invoices
    from billing.models import Invoice
    from tests.factories import ContractFactory

    month = month or date(2026, 10, 1)
    contract = ContractFactory(
        buyer=buyer,
        starts_at=datetime(2026, 9, 1, tzinfo=UTC),
        activated_at=datetime(2026, 9, 1, tzinfo=UTC),
        monthly_commitment_minor=total_minor,
    )
    with time_machine.travel(datetime(2026, 11, 4, tzinfo=UTC), tick=False):
        draft_invoices(month=month, contract_ids=[contract.pk])
        finalize_invoices(month=month, contract_ids=[contract.pk])
    return Invoice.objects.get(contract=contract, month=month)
