"""Month spend on inference, as the gateway's caps count it: to the micro."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from capacity.metering.models import InferenceRequest
from contracts.inference_spend import inference_month_spend
from contracts.models import ContractLine, InferenceProduct, LineKind
from tests.factories import ContractFactory, NodeFactory

pytestmark = pytest.mark.django_db

MOMENT = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def inference_line(contract, *, input_price: str, output_price: str) -> ContractLine:
    """An inference line of the 8B product on ``contract`` at the given prices."""
    return ContractLine.objects.create(
        contract=contract,
        kind=LineKind.INFERENCE,
        inference_product=InferenceProduct.objects.get(slug="llama-3.1-8b-instruct"),
        input_price_per_million_tokens=Decimal(input_price),
        output_price_per_million_tokens=Decimal(output_price),
        starts_at=contract.starts_at,
    )


def test_each_request_at_the_larger_witness_rounded_up_per_request():
    contract = ContractFactory()
    line = inference_line(contract, input_price="10.0000", output_price="30.0001")
    node = NodeFactory()

    def request(issued_at, *, gateway, billed=(0, 0), key=7):
        InferenceRequest.objects.create(
            request_id=uuid.uuid4(),
            node=node,
            api_key_id=key,
            line_id=line.pk,
            product_slug=line.inference_product.slug,
            max_input_tokens=1000,
            max_output_tokens=1000,
            issued_at=issued_at,
            gateway_input_tokens=gateway[0] if gateway else None,
            gateway_output_tokens=gateway[1] if gateway else None,
            billed_input_tokens=billed[0],
            billed_output_tokens=billed[1],
        )

    # 5 in x 10.0000 + 7 out x 30.0001 per million = 50 + 210.0007 micro-majors
    # = 26,000.07 micros: 26,001.
    request(MOMENT, gateway=(5, 7))
    # Billed (the agent's) above the gateway's on output: 5 in, 9 out = 320.0009 → 32,001.
    request(MOMENT, gateway=(5, 3), billed=(4, 9))
    # Only the agent's side: 0 in, 1 out = 30.0001 → 3,001 micros; another key.
    request(MOMENT, gateway=None, billed=(0, 1), key=8)
    # Last month: not counted.
    request(datetime(2026, 11, 30, 23, 59, tzinfo=UTC), gateway=(100, 100))
    spend = inference_month_spend(moment=MOMENT)
    assert spend.by_key_micros == {7: 26_001 + 32_001, 8: 3_001}
    assert spend.by_contract_micros == {contract.pk: 61_003}
    assert (spend.key_minor(7), spend.key_minor(8), spend.contract_minor(contract.pk)) == (1, 1, 1)
    assert spend.key_minor(9) == 0
