"""contracts 0003 fills the line ids of usage stored before attribution stamped them, so a
database upgraded mid-month bills what it billed before: rollups of on-demand work get the
key and line their ref names, records the line of their allocation or key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from capacity.metering.models import HourlyUsage, UsageRecord
from contracts.billable_usage import MeteredQuantities, UsageKey, metered_quantities
from contracts.models import Allocation
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_line,
    inference_product,
    key_for,
    reserved_line,
)
from tests.factories import SiteFactory, gpu_pool

pytestmark = pytest.mark.django_db
BEFORE = [
    ("metering", "0004_attribution_cursor"),
    ("contracts", "0002_default_sla_and_inference_catalog"),
]
AFTER = [("metering", "0005_usage_line_ids"), ("contracts", "0003_fill_usage_line_ids")]
HOUR = datetime(2026, 10, 5, 10, tzinfo=UTC)


def _insert(old_apps, model: str, **fields):
    return old_apps.get_model("metering", model).objects.create(**fields)


def test_stored_usage_gets_the_lines_rating_used_to_find_by_ref(
    buyer_org, offer, devices, partner_org
):
    # Contracts, lines and keys with today's models (later migrations add columns to
    # them), then the schema goes back to the day before line ids existed.
    since = datetime(2026, 9, 1, tzinfo=UTC)
    contract = active_contract(buyer=buyer_org, since=since)
    product = inference_product("migrated-llm")
    tokens_line = inference_line(contract=contract, product=product, since=since)
    tokens_key = key_for(tokens_line, created_at=since, revoked_at=HOUR + timedelta(days=1))
    busy_line = gpu_line(contract=contract, offer=offer, since=since)
    busy_key = key_for(busy_line, created_at=since)
    held = reserved_line(
        contract=contract, offer=offer, holds=[(devices[0], HOUR, HOUR + timedelta(days=2))]
    )
    allocation = Allocation.objects.get(line=held)
    elsewhere = gpu_pool(site=SiteFactory(organization=partner_org), gpus=1)[0]
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old_apps = executor.loader.project_state(BEFORE).apps
    tokens_ref = f"{product.slug}@{tokens_key.prefix}"  # the retired inference convention
    busy_ref = f"gpu@{busy_key.prefix}"  # the retired on-demand GPU convention

    def rollup(gpu, kind, ref, **quantities):
        return _insert(
            old_apps,
            "HourlyUsage",
            node_id=gpu.node_id,
            gpu_id=gpu.pk,
            workload_kind=kind,
            workload_ref=ref,
            hour=HOUR,
            **quantities,
        )

    def record(seq, gpu, kind, ref, at, **ids):
        return _insert(
            old_apps,
            "UsageRecord",
            node_id=gpu.node_id,
            journal_epoch="old",
            seq=seq,
            record_hash="0" * 64,
            gpu_id=gpu.pk,
            window_start=at,
            window_end=at + timedelta(minutes=1),
            workload_kind=kind,
            workload_ref=ref,
            busy_ms=1,
            energy_mj=1,
            input_tokens=0,
            output_tokens=0,
            requests=0,
            **ids,
        )

    rows = {
        "tokens": rollup(devices[1], "inference", tokens_ref, input_tokens=70, output_tokens=7),
        "busy": rollup(devices[2], "allocation", busy_ref, busy_ms=5_000),
        "busy_elsewhere": rollup(elsewhere, "allocation", busy_ref, busy_ms=6_000),
        "reserved": rollup(devices[0], "allocation", "alloc-x", busy_ms=7_000),
        "idle": rollup(devices[3], "idle", ""),
    }
    later = HOUR + timedelta(days=1, hours=1)  # after the key's revocation
    records = {
        "by_allocation": record(
            1, devices[0], "allocation", "alloc-x", HOUR, allocation_id=allocation.pk
        ),
        "by_key": record(2, devices[1], "inference", tokens_ref, HOUR, api_key_id=tokens_key.pk),
        "revoked_key": record(3, devices[1], "inference", tokens_ref, later),
        "never_attributed": record(4, devices[0], "allocation", busy_ref, later),
        "nobody": record(5, elsewhere, "allocation", busy_ref, HOUR),
    }

    # Check the deferred foreign keys now: a table with pending checks cannot be altered.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor.loader.build_graph()
    executor.migrate(AFTER)

    stamped = {
        name: HourlyUsage.objects.values_list("api_key_id", "line_id").get(pk=row.pk)
        for name, row in rows.items()
    }
    assert stamped == {
        "tokens": (tokens_key.pk, tokens_line.pk),
        "busy": (busy_key.pk, busy_line.pk),
        "busy_elsewhere": (None, None),
        "reserved": (None, None),
        "idle": (None, None),
    }
    attributed = {
        name: UsageRecord.objects.values_list("allocation_id", "api_key_id", "line_id").get(
            pk=row.pk
        )
        for name, row in records.items()
    }
    assert attributed == {
        "by_allocation": (allocation.pk, None, held.pk),
        "by_key": (None, tokens_key.pk, tokens_line.pk),
        "revoked_key": (None, tokens_key.pk, tokens_line.pk),
        "never_attributed": (allocation.pk, None, held.pk),
        "nobody": (None, None, None),
    }
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # today's schema, as rating has it
    # What rating read by ref before, it reads by line now; inference only from receipts
    # since issue 14, so the stamped hour of key-prefix tokens bills nothing any more.
    october = {"start": datetime(2026, 10, 1, tzinfo=UTC), "end": datetime(2026, 11, 1, tzinfo=UTC)}
    assert metered_quantities(contract_ids=[contract.pk], **october) == {
        UsageKey(busy_line.pk): MeteredQuantities(busy_ms=5_000),
    }
