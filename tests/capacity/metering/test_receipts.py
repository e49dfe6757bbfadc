"""Receipt records (agent protocol v1.1): metered only against a receipt the platform
signed for the polled node, billed once, with both witnesses side by side."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.receipts import sign_receipt
from capacity.metering import batch, ingest
from capacity.metering.models import (
    HourlyUsage,
    InferenceDisagreementHour,
    InferenceRequest,
    InferenceUsageHour,
    NodePollState,
    QuarantinedRecord,
    QuarantineReason,
    UsageRecord,
)
from capacity.metering.polling import PageToStore
from tests.capacity.metering.conftest import T0, make_fields
from tests.capacity.metering.receipt_builders import gateway_logged, receipt_fields, receipt_for

pytestmark = pytest.mark.django_db
NOW = T0 + timedelta(hours=2)
RID_A = "a" * 32
RID_B = "b" * 32
LINE, KEY = 41, 7


@pytest.fixture
def poll(django_capture_on_commit_callbacks):
    def run(node, agent) -> batch.BatchResult:
        with django_capture_on_commit_callbacks(execute=True):
            return batch.poll_and_store(
                [node.pk], now=NOW, interval_seconds=60, transport=agent.transport()
            )

    return run


def request_row(rid: str) -> tuple:
    row = InferenceRequest.objects.get(request_id=uuid.UUID(rid))
    return (
        row.node_id,
        row.line_id,
        row.api_key_id,
        row.product_slug,
        row.issued_at,
        row.agent_input_tokens,
        row.agent_output_tokens,
        row.billed_input_tokens,
        row.billed_output_tokens,
        row.served_at,
    )


def hours() -> list[tuple]:
    return list(
        InferenceUsageHour.objects.order_by("hour").values_list(
            "line_id", "node_id", "hour", "input_tokens", "output_tokens", "requests"
        )
    )


def snapshot() -> tuple:
    return (
        sorted(UsageRecord.objects.values_list("seq", "workload_ref", "input_tokens")),
        sorted(QuarantinedRecord.objects.values_list("seq", "reason")),
        sorted(
            InferenceRequest.objects.values_list(
                "request_id", "usage_record_id", "billed_input_tokens", "billed_output_tokens"
            )
        ),
        hours(),
        sorted(HourlyUsage.objects.values_list("gpu_id", "workload_ref", "input_tokens")),
    )


def test_receipt_record_fills_the_agent_side_and_bills_the_agents_tokens(poll, node, fake_agent):
    issued = T0 + timedelta(minutes=5, seconds=10)
    receipt = receipt_for(node, rid=RID_A, line_id=LINE, key_id=KEY, issued_at=issued)
    fake_agent.append(
        make_fields(0, 5, busy_ms=40_000),
        # Overlaps the GPU's window record above: a request is not a window.
        receipt_fields(
            receipt, input_tokens=120, output_tokens=80, ended_at=issued + timedelta(seconds=3)
        ),
        make_fields(0, 6, busy_ms=20_000),
    )

    result = poll(node, fake_agent)

    assert (result.inserted, result.quarantined) == (3, 0)
    assert request_row(RID_A) == (
        node.pk,
        LINE,
        KEY,
        "llama",
        issued,
        120,
        80,
        120,
        80,
        issued + timedelta(seconds=3),
    )
    assert hours() == [(LINE, node.pk, T0, 120, 80, 1)]
    gpu0 = node.gpus.get(index=0).pk
    assert sorted(
        HourlyUsage.objects.values_list(
            "gpu_id",
            "workload_kind",
            "workload_ref",
            "busy_ms",
            "input_tokens",
            "output_tokens",
            "requests",
            "record_count",
        )
    ) == [
        (gpu0, "allocation", "alloc-1", 60_000, 0, 0, 0, 2),
        (gpu0, "inference", "llama", 0, 120, 80, 1, 1),
    ]
    # The GPU's overlap cursor is its last window record's end, not the request's.
    window_end_us = int((T0 + timedelta(minutes=7)).timestamp()) * 1_000_000
    state = NodePollState.objects.get(node=node)
    assert state.gpu_window_ends == {fake_agent.records[0]["gpu_uuid"]: window_end_us}
    record = UsageRecord.objects.get(seq=2)
    assert (record.workload_ref, record.busy_ms, record.requests) == (RID_A, 0, 1)


def test_gateway_row_first_bills_the_least_of_both_per_direction(poll, node, fake_agent):
    issued = T0 + timedelta(minutes=5)
    receipt = receipt_for(node, rid=RID_A, line_id=LINE, key_id=KEY, issued_at=issued)
    # The gateway saw more prompt than the engine counted; the buyer hung up after 50.
    gateway_logged(receipt, input_tokens=130, output_tokens=50)
    fake_agent.append(
        receipt_fields(
            receipt, input_tokens=120, output_tokens=80, ended_at=issued + timedelta(seconds=3)
        )
    )

    poll(node, fake_agent)

    row = InferenceRequest.objects.get()
    assert (row.gateway_input_tokens, row.gateway_output_tokens) == (130, 50)
    assert (row.agent_input_tokens, row.agent_output_tokens) == (120, 80)
    assert (row.billed_input_tokens, row.billed_output_tokens) == (120, 50)
    assert hours() == [(LINE, node.pk, T0, 120, 50, 1)]
    disagreement = InferenceDisagreementHour.objects.get()
    assert (
        disagreement.node_id,
        disagreement.hour,
        disagreement.gateway_input_tokens,
        disagreement.gateway_output_tokens,
        disagreement.agent_input_tokens,
        disagreement.agent_output_tokens,
        disagreement.billed_input_tokens,
        disagreement.billed_output_tokens,
        disagreement.requests,
        disagreement.gateway_only_requests,
        disagreement.agent_only_requests,
    ) == (node.pk, T0, 130, 50, 120, 80, 120, 50, 1, 0, 0)


def test_agreeing_witnesses_are_no_disagreement(poll, node, fake_agent):
    issued = T0 + timedelta(minutes=5)
    receipt = receipt_for(node, rid=RID_A, line_id=LINE, key_id=KEY, issued_at=issued)
    gateway_logged(receipt, input_tokens=120, output_tokens=80)
    fake_agent.append(
        receipt_fields(
            receipt, input_tokens=120, output_tokens=80, ended_at=issued + timedelta(seconds=3)
        )
    )

    poll(node, fake_agent)

    assert InferenceDisagreementHour.objects.count() == 0
    assert hours() == [(LINE, node.pk, T0, 120, 80, 1)]


def test_replayed_rid_is_quarantined_and_billed_once(poll, node, fake_agent):
    issued = T0 + timedelta(minutes=5)
    receipt = receipt_for(node, rid=RID_A, line_id=LINE, key_id=KEY, issued_at=issued)
    ended = issued + timedelta(seconds=3)
    fake_agent.append(
        receipt_fields(receipt, input_tokens=10, output_tokens=20, ended_at=ended),
        # Twice in one poll.
        receipt_fields(receipt, input_tokens=10, output_tokens=20, ended_at=ended),
    )
    poll(node, fake_agent)
    # And again in a later poll.
    fake_agent.append(receipt_fields(receipt, input_tokens=30, output_tokens=40, ended_at=ended))
    poll(node, fake_agent)

    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason", "detail")) == [
        (2, QuarantineReason.RECEIPT_REPLAYED, f"receipt {RID_A} already in this poll"),
        (3, QuarantineReason.RECEIPT_REPLAYED, f"receipt {RID_A} was metered before"),
    ]
    assert QuarantinedRecord.objects.get(seq=3).payload == fake_agent.records[2]
    assert hours() == [(LINE, node.pk, T0, 10, 20, 1)]
    assert list(UsageRecord.objects.values_list("seq", flat=True)) == [1]
    assert NodePollState.objects.get(node=node).last_seq == 3


def test_replayed_page_changes_nothing(poll, node, fake_agent):
    issued = T0 + timedelta(minutes=5)
    receipt = receipt_for(node, rid=RID_A, line_id=LINE, key_id=KEY, issued_at=issued)
    fake_agent.append(
        receipt_fields(
            receipt, input_tokens=10, output_tokens=20, ended_at=issued + timedelta(seconds=1)
        )
    )
    poll(node, fake_agent)
    before = snapshot()

    assert poll(node, fake_agent).inserted == 0
    stale = PageToStore("", 0, "epoch-one", 1, str(fake_agent.records[-1]["hash"]))
    assert (
        ingest.store_page(node_id=node.pk, page=stale, polled_at=NOW, next_poll_at=NOW).moved
        is False
    )
    assert snapshot() == before


def test_records_that_break_the_receipt_rules_are_quarantined_with_the_reason(
    poll, node, fake_agent
):
    issued = T0 + timedelta(minutes=5)
    ended = issued + timedelta(seconds=2)

    def receipt(rid: str, **changes):
        return receipt_for(node, rid=rid, line_id=LINE, key_id=KEY, issued_at=issued, **changes)

    forged = sign_receipt(Ed25519PrivateKey.generate(), receipt("1" * 32))
    fake_agent.append(
        receipt_fields(
            receipt("1" * 32), input_tokens=1, output_tokens=1, ended_at=ended, token=forged
        ),
        receipt_fields(
            receipt("2" * 32, node_id=node.pk + 1), input_tokens=1, output_tokens=1, ended_at=ended
        ),
        receipt_fields(
            receipt("3" * 32, agent="c29tZW9uZSBlbHNl"),
            input_tokens=1,
            output_tokens=1,
            ended_at=ended,
        ),
        receipt_fields(
            receipt("4" * 32), input_tokens=1, output_tokens=1, ended_at=ended, ref="5" * 32
        ),
        receipt_fields(receipt("6" * 32), input_tokens=1_001, output_tokens=1, ended_at=ended),
        receipt_fields(receipt("7" * 32), input_tokens=1, output_tokens=501, ended_at=ended),
        receipt_fields(
            receipt("8" * 32), input_tokens=1, output_tokens=1, ended_at=ended, requests=2
        ),
        receipt_fields(
            receipt("9" * 32), input_tokens=1, output_tokens=1, ended_at=ended, busy_ms=5
        ),
        receipt_fields(receipt("a" * 32), input_tokens=1_000, output_tokens=500, ended_at=ended),
    )

    result = poll(node, fake_agent)

    assert (result.inserted, result.quarantined) == (1, 8)
    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason", "detail")) == [
        (1, "receipt_invalid", "receipt signature is not the platform's"),
        (
            2,
            "receipt_other_node",
            f"receipt {'2' * 32} was issued for node {node.pk + 1}, not {node.pk}",
        ),
        (3, "receipt_other_node", f"receipt {'3' * 32} was issued for another agent key"),
        (4, "receipt_invalid", f"ref {'5' * 32!r} is not the receipt's rid"),
        (5, "tokens_over_receipt", "1001 / 1 tokens > the receipt's 1000 / 500"),
        (6, "tokens_over_receipt", "1 / 501 tokens > the receipt's 1000 / 500"),
        (
            7,
            "receipt_invalid",
            "a receipt record has requests = 1, busy_ms = 0 and energy_mj = 0, not 2, 0, 0",
        ),
        (
            8,
            "receipt_invalid",
            "a receipt record has requests = 1, busy_ms = 0 and energy_mj = 0, not 1, 5, 0",
        ),
    ]
    assert hours() == [(LINE, node.pk, T0, 1_000, 500, 1)]
    assert InferenceRequest.objects.count() == 1


def test_legacy_key_prefix_refs_are_no_longer_accepted(poll, node, fake_agent, llama):
    fake_agent.append(
        make_fields(
            0, 0, kind="inference", ref="llama@hg_abc", input_tokens=5, output_tokens=5, requests=1
        ),
        make_fields(
            1, 0, kind="inference", ref="llama", input_tokens=5, output_tokens=5, requests=1
        ),
    )

    poll(node, fake_agent)

    assert list(QuarantinedRecord.objects.values_list("seq", "reason")) == [
        (1, QuarantineReason.PRODUCT_NOT_SERVED)
    ]
    # The plain window record is stored for its GPU time, its tokens billed to nobody.
    assert UsageRecord.objects.get().seq == 2
    assert InferenceRequest.objects.count() == 0 and hours() == []
