"""manage.py bench_assignments at 200 nodes: the JSON carries the documented keys and the
changed agents converged (every new instance running) within two polls."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from tests.billing.stripe_fakes import free_port

SWEEP_KEYS = {
    "wall_s",
    "cpu_s",
    "postgres_cpu_s",
    "polled",
    "failed",
    "records_inserted",
    "quarantined",
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_bench_assignments_small_run() -> None:
    out = io.StringIO()
    call_command(
        "bench_assignments",
        nodes=200,
        fraction=0.1,
        interval=2,
        pull_seconds="0.2",
        start_seconds="0.2",
        port=free_port(),
        stdout=out,
    )
    result = json.loads(out.getvalue())
    assert set(result) == {
        "nodes",
        "gpus_per_node",
        "changed_nodes",
        "interval_s",
        "pull_s",
        "start_s",
        "cpu_count",
        "load_average",
        "creation_s",
        "converged",
        "running",
        "converged_polls",
        "converged_s",
        "converged_intervals",
        "sweep_without",
        "sweep_with",
        "windows_caught_up",
        "sweep_without_same_windows",
        "cpu_ratio",
        "fleet_requests",
        "targets_met",
    }
    assert (result["nodes"], result["changed_nodes"], result["interval_s"]) == (200, 20, 2)
    # Pushed on the first poll after the creation, read running on the second.
    assert (result["converged"], result["running"], result["converged_polls"]) == (True, 20, 2)
    assert result["windows_caught_up"] == 1
    for name in ("sweep_without", "sweep_with", "sweep_without_same_windows"):
        sweep = result[name]
        assert set(sweep) == SWEEP_KEYS
        # Every node polled, one new window of its two GPUs stored, nothing refused.
        assert (sweep["polled"], sweep["failed"], sweep["quarantined"]) == (200, 0, 0)
        assert sweep["records_inserted"] == 200 * 2
    # Five sweeps in all (warm-up, without, with, the one that read them running, without
    # again): one push per changed node; its workloads came embedded in usage answers,
    # never read with GET /v1/workloads.
    requests = result["fleet_requests"]
    assert (requests["PUT assignments"], requests.get("GET workloads", 0)) == (20, 0)
    assert requests["GET usage"] >= 5 * 200
