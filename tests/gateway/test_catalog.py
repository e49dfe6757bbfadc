"""The gateway's cache: changes reach it within 5 s, and no request touches the database."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import ApiKey
from capacity.models import Node, NodeStatus, NodeWindow, WindowKind
from tests.gateway.conftest import PRODUCT, logged_rows

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHAT = {"model": PRODUCT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(gateway, world) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {world.key}"},
        timeout=30,
    )


def seconds_until(gateway, world, status: int, *, limit_s: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if post(gateway, world).status_code == status:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"no {status} within {limit_s} s")


def test_a_revoked_key_stops_within_5_seconds(gateway, world):
    assert post(gateway, world).status_code == 200
    ApiKey.objects.filter(pk=world.key_id).update(revoked_at=timezone.now())
    assert seconds_until(gateway, world, 401) < 5.0


def test_nodes_out_of_service_are_drained(gateway, world):
    maintenance, windowed, serving = world.nodes
    Node.objects.filter(pk=maintenance.pk).update(status=NodeStatus.MAINTENANCE)
    now = timezone.now()
    NodeWindow.objects.create(
        node=windowed,
        kind=WindowKind.CURTAILMENT,
        period=(now - timedelta(minutes=1), now + timedelta(hours=1)),
        announced_at=now - timedelta(days=1),
    )
    time.sleep(2.5)  # a fingerprint tick and a reload
    assert [post(gateway, world).status_code for _ in range(4)] == [200] * 4
    rows = logged_rows(count=4)
    assert {row.node_id for row in rows} == {serving.pk}


def test_requests_are_served_while_the_database_is_locked(gateway, world):
    """Hold an exclusive lock on the key table: the catalog's next fingerprint query
    blocks the gateway's database thread, and requests are still answered, so none of
    them needs the database. Their log rows land once the lock is released."""
    assert post(gateway, world).status_code == 200
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE accounts_apikey IN ACCESS EXCLUSIVE MODE")
        time.sleep(1.5)  # the refresher is now waiting on the lock
        started = time.monotonic()
        statuses = [post(gateway, world).status_code for _ in range(20)]
        elapsed = time.monotonic() - started
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()"
        )
        waiting = cursor.fetchone()[0]
    assert statuses == [200] * 20
    assert waiting >= 1  # the gateway's database thread, blocked all along
    assert elapsed < 5
    assert len(logged_rows(count=21)) == 21


def test_the_gateway_survives_losing_its_database_connection(gateway, world):
    """Connections killed under it: requests go on, the log batch is retried, and the
    cache still follows changes."""
    assert post(gateway, world).status_code == 200
    logged_rows(count=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1
    assert [post(gateway, world).status_code for _ in range(5)] == [200] * 5
    assert len(logged_rows(count=6)) == 6
    ApiKey.objects.filter(pk=world.key_id).update(revoked_at=timezone.now())
    assert seconds_until(gateway, world, 401) < 5.0
