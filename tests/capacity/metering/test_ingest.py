"""Polling and storing pages: exactly once, quarantine with reasons, integrity flags."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core import mail
from django.db import DataError

from capacity.agent.protocol import GENESIS_PREV_HASH
from capacity.metering import batch, ingest, sweep
from capacity.metering.models import (
    GpuAvailabilityDay,
    HourlyUsage,
    NodePollState,
    QuarantinedRecord,
    QuarantineReason,
    UsageRecord,
)
from capacity.metering.polling import PageToStore
from capacity.metering.selectors import rollup_totals, usage_totals
from capacity.metering.validation import AcceptedRecord
from capacity.models import GpuDevice, Node, NodeStatus
from contracts.models import InferenceProduct
from tests.capacity.metering.conftest import T0, make_fields

pytestmark = pytest.mark.django_db
NOW = T0 + timedelta(hours=2)


@pytest.fixture
def poll(django_capture_on_commit_callbacks):
    """Poll and store one node through the fake agent; on-commit callbacks (emails) run."""

    def run(node, agent, *, now=NOW) -> batch.BatchResult:
        with django_capture_on_commit_callbacks(execute=True):
            return batch.poll_and_store(
                [node.pk],
                now=now,
                interval_seconds=60,
                transport=agent.transport(),
                always_check_health=True,
            )

    return run


def snapshot(node) -> tuple:
    state = NodePollState.objects.get(node=node)
    return (
        list(UsageRecord.objects.order_by("seq").values_list("seq", "busy_ms", "energy_mj")),
        sorted(
            HourlyUsage.objects.values_list("gpu_id", "workload_ref", "busy_ms", "record_count")
        ),
        sorted(QuarantinedRecord.objects.values_list("seq", "reason")),
        (state.journal_epoch, state.last_seq, state.last_hash),
    )


def test_poll_stores_each_record_once_with_rollups_and_cursor(poll, node, fake_agent, llama):
    fake_agent.append(
        make_fields(0, 0, busy_ms=10_000),
        make_fields(
            1,
            0,
            busy_ms=20_000,
            kind="inference",
            ref="llama",
            input_tokens=5,
            output_tokens=7,
            requests=1,
        ),
        make_fields(0, 1, busy_ms=30_000),
        make_fields(1, 1, kind="idle", ref=None, busy_ms=0),
    )

    result = poll(node, fake_agent)

    assert (result.polled, result.inserted, result.quarantined, result.failed) == (1, 4, 0, 0)
    assert usage_totals() == {
        "busy_ms": 60_000,
        "energy_mj": 40_000_000,
        "input_tokens": 5,
        "output_tokens": 7,
        "requests": 1,
        "records": 4,
    }
    assert rollup_totals() == usage_totals()
    gpu0 = node.gpus.get(index=0)
    assert HourlyUsage.objects.get(gpu=gpu0).busy_ms == 40_000
    assert HourlyUsage.objects.get(gpu=gpu0).hour == T0
    assert HourlyUsage.objects.filter(workload_kind="idle").get().workload_ref == ""
    state = NodePollState.objects.get(node=node)
    assert (state.journal_epoch, state.last_seq) == ("epoch-one", 4)
    assert state.last_hash == fake_agent.records[-1]["hash"]
    # Due again half an interval later, so the next sweep (one interval after the sweep
    # that claimed it, a moment before this batch ran) polls it again.
    assert state.last_success_at == NOW and state.next_poll_at == NOW + timedelta(seconds=30)
    next_sweep = NOW - timedelta(seconds=2) + timedelta(seconds=60)
    assert sweep.claim_due_nodes(now=next_sweep, limit=10, lease=timedelta(seconds=60)) == [node.pk]
    node.refresh_from_db()
    assert node.last_successful_poll_at == NOW and node.gpu_utilization_pct == 50
    assert node.status == NodeStatus.ONLINE
    assert UsageRecord.objects.get(seq=4).workload_ref is None


def test_repeated_poll_and_replayed_page_change_nothing(poll, node, fake_agent):
    fake_agent.append(make_fields(0, 0), make_fields(1, 0))
    poll(node, fake_agent)
    before = snapshot(node)

    again = poll(node, fake_agent)

    assert again.inserted == 0
    assert snapshot(node) == before
    # A stale page stored again from its old cursor (a retried task) is refused whole.
    page = PageToStore("", 0, "epoch-one", 2, str(fake_agent.records[-1]["hash"]))
    stored = ingest.store_page(node_id=node.pk, page=page, polled_at=NOW, next_poll_at=NOW)
    assert stored.moved is False
    assert snapshot(node) == before


def test_text_with_quotes_backslashes_and_braces_is_stored_exactly(poll, node, fake_agent):
    ref = 'a"b\\c,{d} NULL'
    odd_workload = {"kind": "mining", "ref": 'x"\\y'}
    fake_agent.append(make_fields(0, 0, ref=ref), {**make_fields(1, 0), "workload": odd_workload})

    poll(node, fake_agent)

    assert UsageRecord.objects.get().workload_ref == ref
    assert HourlyUsage.objects.get().workload_ref == ref
    quarantined = QuarantinedRecord.objects.get()
    assert quarantined.payload["workload"] == odd_workload
    assert quarantined.detail == f"workload {odd_workload!r}"


def _second_node(node):
    other = Node.objects.get(pk=node.pk)
    other.pk, other.name = None, "rack-2"
    other.save()
    for gpu in node.gpus.all():
        GpuDevice.objects.create(
            node=other, uuid=gpu.uuid + "-2", index=gpu.index, memory_mib=81920, model="H100"
        )
    NodePollState.objects.create(node=other, next_poll_at=T0)
    return other


def _page(node, *, from_seq=0, gpu_id=None, records=1) -> PageToStore:
    gpu_id = gpu_id or node.gpus.get(index=0).pk
    accepted = [
        AcceptedRecord(
            seq=from_seq + i + 1,
            record_hash=f"{i:064d}",
            gpu_device_id=gpu_id,
            window_start=T0 + timedelta(minutes=from_seq + i),
            window_end=T0 + timedelta(minutes=from_seq + i + 1),
            workload_kind="idle",
            workload_ref=None,
            busy_ms=0,
            energy_mj=1,
            input_tokens=0,
            output_tokens=0,
            requests=0,
        )
        for i in range(records)
    ]
    to_seq = from_seq + records
    page = PageToStore("e" if from_seq else "", from_seq, "e", to_seq, f"{to_seq:064d}")
    page.accepted = accepted
    return page


def test_a_group_stores_each_node_on_its_own_cursor(node):
    other = _second_node(node)
    ingest.store_page(node_id=node.pk, page=_page(node, records=2), polled_at=NOW, next_poll_at=NOW)

    stored = ingest.store_pages(
        [
            ingest.PageOfNode(node.pk, _page(node, records=3)),  # stale: the cursor is at 2
            ingest.PageOfNode(other.pk, _page(other, records=3)),
        ],
        polled_at=NOW,
        next_poll_at=NOW,
    )

    assert stored == {
        node.pk: ingest.StoredPage(moved=False, inserted=0, quarantined=0),
        other.pk: ingest.StoredPage(moved=True, inserted=3, quarantined=0),
    }
    assert UsageRecord.objects.filter(node=node).count() == 2
    assert UsageRecord.objects.filter(node=other).count() == 3
    assert NodePollState.objects.get(node=other).last_seq == 3
    assert rollup_totals() == usage_totals()
    with pytest.raises(ValueError, match="one page per node"):
        ingest.store_pages(
            [ingest.PageOfNode(node.pk, _page(node)), ingest.PageOfNode(node.pk, _page(node))],
            polled_at=NOW,
            next_poll_at=NOW,
        )


def test_a_group_that_fails_is_stored_page_by_page_so_only_the_bad_node_is_left_out(node):
    other = _second_node(node)
    bad_page = _page(node)
    bad_page.accepted[0] = replace(bad_page.accepted[0], busy_ms=2**70)  # beyond bigint
    bad = ingest.PageOfNode(node.pk, bad_page)
    good = ingest.PageOfNode(other.pk, _page(other, records=2))

    with pytest.raises(DataError):
        ingest.store_pages([bad, good], polled_at=NOW, next_poll_at=NOW)

    assert UsageRecord.objects.filter(node=node).count() == 0
    assert NodePollState.objects.get(node=node).last_seq == 0
    assert UsageRecord.objects.filter(node=other).count() == 2
    assert NodePollState.objects.get(node=other).last_seq == 2


def test_follows_pages_up_to_the_head(poll, node, fake_agent, monkeypatch):
    monkeypatch.setattr("capacity.metering.polling.PAGE_LIMIT", 3)
    fake_agent.append(*(make_fields(m % 2, m // 2) for m in range(8)))

    result = poll(node, fake_agent)

    assert (result.pages, result.inserted) == (3, 8)
    assert NodePollState.objects.get(node=node).last_seq == 8
    assert rollup_totals() == usage_totals()


def test_invalid_records_are_quarantined_with_reasons_and_the_rest_stored(poll, node, fake_agent):
    fake_agent.append(
        make_fields(0, 0),
        make_fields(0, 1, busy_ms=61_000),
        make_fields(0, 2, energy_mj=700 * 60_000 + 1),
        make_fields(0, 3, seconds=61),
        make_fields(1, 0, start=NOW + timedelta(minutes=5)),
        make_fields(0, 0, busy_ms=1),  # overlaps seq 1 (same GPU, same window)
        {**make_fields(1, 1), "gpu_uuid": "GPU-not-ours"},
        {**make_fields(1, 2), "busy_ms": -5},
        {**make_fields(1, 3), "workload": {"kind": "mining", "ref": None}},
        make_fields(1, 4, busy_ms=700 * 60_000),
        make_fields(0, 4),
    )

    result = poll(node, fake_agent)

    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason")) == [
        (2, QuarantineReason.BUSY_EXCEEDS_WINDOW),
        (3, QuarantineReason.ENERGY_EXCEEDS_MAX_POWER),
        (4, QuarantineReason.WINDOW_TOO_LONG),
        (5, QuarantineReason.FUTURE_WINDOW),
        (6, QuarantineReason.OVERLAPPING_WINDOW),
        (7, QuarantineReason.UNKNOWN_GPU),
        (8, QuarantineReason.INVALID_QUANTITY),
        (9, QuarantineReason.UNKNOWN_WORKLOAD),
        (10, QuarantineReason.BUSY_EXCEEDS_WINDOW),
    ]
    assert list(UsageRecord.objects.order_by("seq").values_list("seq", flat=True)) == [1, 11]
    assert (result.inserted, result.quarantined) == (2, 9)
    # The chain itself is fine: the cursor moves past the refused records.
    assert NodePollState.objects.get(node=node).last_seq == 11
    quarantined = QuarantinedRecord.objects.get(seq=2)
    assert quarantined.detail == "busy_ms 61000 > window 60000 ms"
    assert quarantined.payload["busy_ms"] == 61_000
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE


def test_inference_counts_only_from_nodes_serving_the_product_within_its_throughput(
    poll, node, fake_agent, llama
):
    """Forged inference (issue 13, 1): a legacy inference window (no receipt) of a product
    the node does not serve, or with more tokens than the product can serve on one GPU in
    the window, is quarantined with its reason and never reaches the rollups; what the
    product can serve is stored (for the GPU's time; its tokens are billed to nobody)."""
    InferenceProduct.objects.create(
        slug="other",
        name="Other",
        input_price_per_million_tokens=Decimal("0.2000"),
        output_price_per_million_tokens=Decimal("0.6000"),
    )
    inference = {"kind": "inference", "requests": 1}
    fake_agent.append(
        # 1,000 tokens/s x 60 s: exactly the product's throughput.
        make_fields(0, 0, **inference, ref="llama", input_tokens=40_000, output_tokens=20_000),
        make_fields(0, 1, **inference, ref="llama", input_tokens=40_000, output_tokens=20_001),
        make_fields(0, 2, **inference, ref="other", input_tokens=1, output_tokens=1),
        make_fields(0, 3, **inference, ref="unknown", input_tokens=1, output_tokens=1),
        make_fields(0, 4, **inference, ref=None),
    )

    result = poll(node, fake_agent)

    assert (result.inserted, result.quarantined) == (1, 4)
    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason", "detail")) == [
        (
            2,
            QuarantineReason.TOKENS_EXCEED_THROUGHPUT,
            "60001 tokens > 1000 per GPU-second of 'llama' x 60000 ms",
        ),
        (
            3,
            QuarantineReason.PRODUCT_NOT_SERVED,
            "the node does not serve inference product 'other'",
        ),
        (
            4,
            QuarantineReason.PRODUCT_NOT_SERVED,
            "the node does not serve inference product 'unknown'",
        ),
        (5, QuarantineReason.PRODUCT_NOT_SERVED, "the node does not serve inference product ''"),
    ]
    assert rollup_totals() == usage_totals()
    assert (usage_totals()["input_tokens"], usage_totals()["output_tokens"]) == (40_000, 20_000)


def test_every_quantity_is_bounded_per_window_so_no_sum_can_overflow(poll, node, fake_agent):
    """Two records of 2^62 tokens in different hours (issue 13, 2) are quarantined: their
    sum overflowed a bigint on drafting. Any kind of workload, any token or request count
    above a GPU's ceiling over the window."""
    huge = 2**62
    fake_agent.append(
        make_fields(0, 0, kind="idle", ref=None, input_tokens=huge),
        make_fields(0, 0, start=T0 + timedelta(hours=1), output_tokens=huge),
        make_fields(1, 0, requests=100_000 * 60 + 1),
        make_fields(1, 1, input_tokens=60_000_000, output_tokens=60_000_000, requests=6_000_000),
    )

    result = poll(node, fake_agent)

    assert (result.inserted, result.quarantined) == (1, 3)
    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason", "detail")) == [
        (
            1,
            QuarantineReason.QUANTITY_EXCEEDS_BOUND,
            f"input_tokens {huge} > 1000000 per GPU-second x 60000 ms",
        ),
        (
            2,
            QuarantineReason.QUANTITY_EXCEEDS_BOUND,
            f"output_tokens {huge} > 1000000 per GPU-second x 60000 ms",
        ),
        (
            3,
            QuarantineReason.QUANTITY_EXCEEDS_BOUND,
            "requests 6000001 > 100000 per GPU-second x 60000 ms",
        ),
    ]
    assert UsageRecord.objects.get().seq == 4
    assert rollup_totals() == usage_totals()
    assert usage_totals()["input_tokens"] == 60_000_000


def test_overlap_with_a_stored_window_is_quarantined_on_a_later_poll(poll, node, fake_agent):
    fake_agent.append(make_fields(0, 0), make_fields(0, 1))
    poll(node, fake_agent)
    fake_agent.append(make_fields(0, 1, seconds=30))

    poll(node, fake_agent)

    assert QuarantinedRecord.objects.get().reason == QuarantineReason.OVERLAPPING_WINDOW
    assert UsageRecord.objects.count() == 2


def test_broken_chain_keeps_the_valid_prefix_quarantines_the_rest_and_flags_once(
    poll, node, fake_agent, partner_owner, partner_admin
):
    fake_agent.append(make_fields(0, 0), make_fields(0, 1), make_fields(0, 2))
    fake_agent.records[1]["busy_ms"] = 59_999  # rewritten after it was chained

    poll(node, fake_agent)
    poll(node, fake_agent, now=NOW + timedelta(minutes=1))

    assert list(UsageRecord.objects.values_list("seq", flat=True)) == [1]
    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason")) == [
        (2, QuarantineReason.BROKEN_CHAIN),
        (3, QuarantineReason.BROKEN_CHAIN),
    ]
    state = NodePollState.objects.get(node=node)
    assert state.last_seq == 1
    assert "hash chain broken at seq 2" in state.degraded_reason
    node.refresh_from_db()
    assert node.status == NodeStatus.DEGRADED
    assert len(mail.outbox) == 2  # owner and admin, once for the incident
    assert {m.to[0] for m in mail.outbox} == {partner_owner.email, partner_admin.email}
    assert "hash chain broken at seq 2" in mail.outbox[0].body


def test_bad_signature_quarantines_the_page_stores_nothing_and_flags(poll, node, fake_agent):
    fake_agent.append(make_fields(0, 0), make_fields(1, 0))
    fake_agent.sign_with = Ed25519PrivateKey.generate()

    result = poll(node, fake_agent)

    assert result.inserted == 0 and UsageRecord.objects.count() == 0
    assert sorted(QuarantinedRecord.objects.values_list("seq", "reason")) == [
        (1, QuarantineReason.BAD_SIGNATURE),
        (2, QuarantineReason.BAD_SIGNATURE),
    ]
    state = NodePollState.objects.get(node=node)
    assert (state.last_seq, state.last_hash) == (0, GENESIS_PREV_HASH)
    node.refresh_from_db()
    assert node.status == NodeStatus.DEGRADED
    assert "signature does not verify" in state.degraded_reason
    assert len(mail.outbox) == 2

    # The agent's signature verifies again: the node recovers and the records are stored.
    fake_agent.sign_with = None
    poll(node, fake_agent, now=NOW + timedelta(minutes=1))
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE
    assert UsageRecord.objects.count() == 2
    assert NodePollState.objects.get(node=node).degraded_reason == ""


def test_new_journal_epoch_starts_from_genesis(poll, node, fake_agent):
    fake_agent.append(make_fields(0, 0), make_fields(1, 0))
    poll(node, fake_agent)
    fake_agent.new_epoch("epoch-two")
    fake_agent.append(make_fields(0, 5), make_fields(1, 5), make_fields(0, 6))

    poll(node, fake_agent)

    assert sorted(UsageRecord.objects.values_list("journal_epoch", "seq")) == [
        ("epoch-one", 1),
        ("epoch-one", 2),
        ("epoch-two", 1),
        ("epoch-two", 2),
        ("epoch-two", 3),
    ]
    assert "after=0" in fake_agent.requests_seen[-1] or any(
        "after=0" in url for url in fake_agent.requests_seen[-3:]
    )
    state = NodePollState.objects.get(node=node)
    assert (state.journal_epoch, state.last_seq) == ("epoch-two", 3)


def test_available_minutes_are_set_from_stored_records(poll, node, fake_agent):
    fake_agent.append(make_fields(0, 0), make_fields(0, 1), make_fields(1, 3))

    poll(node, fake_agent)
    poll(node, fake_agent)

    day = GpuAvailabilityDay.objects.get(gpu__index=0)
    assert day.day == T0.date()
    minute = T0.hour * 60
    assert [i for i, bit in enumerate(day.minutes) if bit == "1"] == [minute, minute + 1]
    assert GpuAvailabilityDay.objects.get(gpu__index=1).available_minutes == 1


def test_unreachable_agent_backs_off_and_recovers(poll, node, fake_agent):
    fake_agent.status = 503
    for attempt in range(4):
        poll(node, fake_agent, now=NOW + timedelta(minutes=attempt))
    state = NodePollState.objects.get(node=node)
    node.refresh_from_db()
    assert node.status == NodeStatus.UNREACHABLE
    assert state.consecutive_failures == 4
    assert state.backoff_seconds == 480
    assert state.next_poll_at == NOW + timedelta(minutes=3, seconds=480)
    assert state.unreachable_since == NOW
    assert state.last_error == "HTTP 503"

    fake_agent.status = 200
    poll(node, fake_agent, now=NOW + timedelta(minutes=20))
    state.refresh_from_db()
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE
    assert (state.consecutive_failures, state.backoff_seconds, state.unreachable_since) == (
        0,
        0,
        None,
    )
    # Never notified of the outage (no sweep ran), so no recovery email either.
    assert mail.outbox == []


def test_gpu_reporting_xid_errors_degrades_the_node_until_healthy(poll, node, fake_agent):
    fake_agent.xid_errors = 2
    poll(node, fake_agent)
    node.refresh_from_db()
    state = NodePollState.objects.get(node=node)
    assert node.status == NodeStatus.DEGRADED
    assert "reported 2 XID error(s)" in state.degraded_reason

    fake_agent.xid_errors = 0
    poll(node, fake_agent, now=NOW + timedelta(minutes=1))
    node.refresh_from_db()
    assert node.status == NodeStatus.ONLINE


def test_health_is_asked_one_poll_in_five_staggered_by_node():
    from capacity.metering.polling import health_due

    due = [
        health_due(node_id=7, polled_at=NOW + timedelta(minutes=m), interval_seconds=60)
        for m in range(10)
    ]
    assert due.count(True) == 2
