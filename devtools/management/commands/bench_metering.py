"""``manage.py bench_metering --nodes 10000 --records-per-node 10``: metering, end to end.

Starts the fleet simulator and one Celery worker, registers the fleet's nodes under a
bench partner (idempotent; earlier bench usage is purged so each run starts from empty
cursors), runs one full sweep of every node, checks the stored totals against the
simulator's ground truth at the stored cursors (``simulated_fleet.expected_totals``),
then times a plain PostgreSQL ``COPY`` of the same records into an unindexed temporary
table. Prints one JSON object.

``--in-process`` polls in this process instead of a worker (for ``python -m cProfile``).

``--inference-requests N [--inference-nodes K]``: the inference mode instead
(``devtools.metering_inference_bench``): N receipt records (protocol v1.1) across K
nodes, built ahead and served from memory, metered by the real poll and ingest code in
this process; requests per second and the CPU per request, checked exact.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from celery import Celery
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Organization
from capacity.metering import batch, sweep
from capacity.metering.models import (
    GpuAvailabilityDay,
    HourlyUsage,
    NodePollState,
    QuarantinedRecord,
    UsageRecord,
)
from capacity.metering.selectors import rollup_totals, usage_totals
from capacity.models import Node, NodeStatus
from devtools import metering_inference_bench
from devtools.simulated_fleet import (
    FleetProcess,
    expected_totals,
    fetch_truth,
    register_fleet_nodes,
)

BENCH_ORGANIZATION_SLUG = "hashgrid-metering-bench"
COPY_COLUMNS = (
    "node_id, journal_epoch, seq, record_hash, gpu_id, window_start, window_end, workload_kind,"
    " workload_ref, busy_ms, energy_mj, input_tokens, output_tokens, requests, received_at"
)


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=10_000)
        parser.add_argument("--records-per-node", type=int, default=10)
        parser.add_argument("--gpus-per-node", type=int, default=2)
        parser.add_argument("--port", type=int, default=9550)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--batch-size", type=int, default=sweep.DEFAULT_BATCH_SIZE)
        parser.add_argument("--worker-concurrency", type=int, default=2)
        parser.add_argument(
            "--broker", default=os.environ.get("CELERY_BROKER_URL") or settings.CELERY_BROKER_URL
        )
        parser.add_argument("--in-process", action="store_true", help="no worker: poll here")
        parser.add_argument(
            "--inference-requests",
            type=int,
            default=0,
            help="inference mode: meter this many receipt records (no fleet, no worker)",
        )
        parser.add_argument("--inference-nodes", type=int, default=20)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["inference_requests"] > 0:
            result = metering_inference_bench.run(
                organization=self._bench_partner(),
                nodes=options["inference_nodes"],
                requests=options["inference_requests"],
                batch_size=options["batch_size"],
                interval=int(settings.METERING_POLL_INTERVAL_SECONDS),
            )
            self.stdout.write(json.dumps(result))
            return
        nodes, gpus = options["nodes"], options["gpus_per_node"]
        windows = math.ceil(options["records_per_node"] / gpus)
        fleet = FleetProcess(
            nodes=nodes,
            port=options["port"],
            seed=options["seed"],
            gpus_per_node=gpus,
            window_seconds=60,
            backfill_windows=windows,
        )
        organization = self._bench_partner()
        with fleet:
            node_ids = register_fleet_nodes(
                organization=organization, fleet=fleet, site_name="Metering bench"
            )
            self._purge(node_ids)
            worker = None if options["in_process"] else self._start_worker(options)
            try:
                sender = Celery("bench-metering", broker=options["broker"])
                if worker is not None:
                    self._wait_for_worker(sender)
                seconds, polls, heads_before = self._run_sweeps(fleet, node_ids, sender, options)
            finally:
                if worker is not None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=30)
        cursors = dict(
            NodePollState.objects.filter(node_id__in=node_ids).values_list("node_id", "last_seq")
        )
        last_seqs = {index: cursors[node_id] for index, node_id in enumerate(node_ids)}
        stored = usage_totals(node_ids=node_ids)
        # Exact: every node stored at least what its agent held when the sweep began, and
        # the stored sums (records and rollups) equal the truth up to the stored cursors.
        exact = (
            all(last_seqs[i] >= heads_before[i] for i in range(nodes))
            and stored == expected_totals(fleet, last_seqs)
            and rollup_totals(node_ids=node_ids) == stored
        )
        records = stored["records"]
        copy_seconds = self._copy_baseline(node_ids)
        records_per_s = records / seconds
        copy_per_s = records / copy_seconds if copy_seconds else 0.0
        self.stdout.write(
            json.dumps(
                {
                    "nodes": nodes,
                    "records": records,
                    "seconds": round(seconds, 3),
                    "polls_per_s": round(polls / seconds, 1),
                    "records_per_s": round(records_per_s, 1),
                    "exact": exact,
                    "quarantined": QuarantinedRecord.objects.filter(node_id__in=node_ids).count(),
                    "copy_records_per_s": round(copy_per_s, 1),
                    "ratio_to_copy": round(records_per_s / copy_per_s, 3) if copy_per_s else None,
                }
            )
        )

    def _bench_partner(self) -> Organization:
        organization, _ = Organization.objects.get_or_create(
            slug=BENCH_ORGANIZATION_SLUG,
            defaults={"name": "Metering bench partner", "is_buyer": False, "is_partner": True},
        )
        return organization

    @transaction.atomic
    def _purge(self, node_ids: list[int]) -> None:
        """Forget earlier bench runs: the fleet starts a new journal epoch every run."""
        for model in (UsageRecord, HourlyUsage, QuarantinedRecord, NodePollState):
            model.objects.filter(node_id__in=node_ids).delete()
        GpuAvailabilityDay.objects.filter(gpu__node_id__in=node_ids).delete()
        # Nodes of an earlier, larger bench run are not served by this fleet: retire them.
        Node.objects.filter(site__nodes__in=node_ids[:1]).exclude(pk__in=node_ids).update(
            status=NodeStatus.RETIRED
        )
        Node.objects.filter(pk__in=node_ids).update(status=NodeStatus.ONLINE)

    def _start_worker(self, options: dict[str, Any]) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CELERY_BROKER_URL": options["broker"],
            "LOG_LEVEL": "WARNING",
            "METERING_BENCH": "1",
        }
        return subprocess.Popen(  # noqa: S603 (our interpreter, fixed arguments)
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool=prefork",
                f"--concurrency={options['worker_concurrency']}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
            cwd=settings.BASE_DIR,
        )

    def _wait_for_worker(self, sender: Celery) -> None:
        if str(sender.conf.broker_url).startswith("redis://"):
            with sender.connection_for_write() as conn:
                conn.default_channel.client.flushdb()  # leftovers of an interrupted run
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sender.control.ping(timeout=1.0):
                return
        raise RuntimeError("the Celery worker did not answer in 60 s")

    def _run_sweeps(
        self, fleet: FleetProcess, node_ids: list[int], sender: Celery, options: dict[str, Any]
    ) -> tuple[float, int, dict[int, int]]:
        """One full sweep, timed until every node has been polled and stored.

        Returns (seconds, polls, each fleet node's head seq when the sweep started).
        """
        interval = int(settings.METERING_POLL_INTERVAL_SECONDS)
        heads_before = fetch_truth(fleet, range(fleet.nodes)).head_seqs
        started = time.perf_counter()
        sweep_started = timezone.now()
        NodePollState.objects.filter(node_id__in=node_ids).update(next_poll_at=sweep_started)
        if options["in_process"]:

            def enqueue(ids: list[int]) -> object:
                return batch.poll_and_store(ids, now=timezone.now(), interval_seconds=interval)

        else:

            def enqueue(ids: list[int]) -> object:
                return sender.send_task("capacity.metering.tasks.poll_batch", args=[ids])

        result = sweep.sweep(
            now=sweep_started,
            interval_seconds=interval,
            enqueue=enqueue,
            batch_size=options["batch_size"],
        )
        self._wait_polled(node_ids, sweep_started)
        return time.perf_counter() - started, result.claimed, heads_before

    def _wait_polled(self, node_ids: list[int], since: datetime, timeout_s: float = 600) -> None:
        """Wait until every node was polled since ``since``.

        Cheap on purpose, since it runs on the machine being measured: one small indexed
        statement five times a second. The bench site's nodes other than ``node_ids``
        are retired (``_purge``), and polling never retires a node.
        """
        site_id = Node.objects.filter(pk=node_ids[0]).values_list("site_id", flat=True).get()
        deadline = time.monotonic() + timeout_s
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    SELECT EXISTS (
                        SELECT FROM metering_nodepollstate AS ps
                        JOIN capacity_node AS n ON n.id = ps.node_id
                        WHERE n.site_id = %s AND n.status <> %s
                          AND (ps.last_poll_at IS NULL OR ps.last_poll_at < %s)
                    )
                    """,
                    [site_id, NodeStatus.RETIRED, since],
                )
                (pending,) = cursor.fetchone()
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("sweep did not finish in time")
            time.sleep(0.2)

    def _copy_baseline(self, node_ids: list[int]) -> float:
        """Seconds for a plain COPY of the stored records into an unindexed temp table."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {COPY_COLUMNS} FROM metering_usagerecord WHERE node_id = ANY(%s)",  # noqa: S608
                [node_ids],
            )
            rows = cursor.fetchall()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE bench_copy (LIKE metering_usagerecord INCLUDING DEFAULTS INCLUDING IDENTITY)"
                " ON COMMIT DROP"
            )
            started = time.perf_counter()
            with cursor.copy(f"COPY bench_copy ({COPY_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            seconds = time.perf_counter() - started
        return seconds
