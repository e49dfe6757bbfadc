"""manage.py bench_web on a tiny data set: the generator writes what it says, gunicorn
serves every endpoint signed in, and the JSON carries exactly the documented keys."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

ENDPOINT_KEYS = {"url", "p50_ms", "p95_ms", "client_p50_ms", "client_p95_ms", "rps"}


@pytest.mark.django_db(transaction=True)
def test_bench_web_small_run() -> None:
    out = io.StringIO()
    call_command(
        "bench_web",
        scale=0.01,
        requests=3,
        warmup=1,
        concurrency=2,
        port=8129,
        stdout=out,
        stderr=io.StringIO(),
    )
    result = json.loads(out.getvalue())
    assert set(result) == {
        "nodes",
        "gpus",
        "offers",
        "contracts",
        "allocations",
        "hourly_rows",
        "availability_rows",
        "workers",
        "concurrency",
        "requests",
        "cpu_count",
        "load_average",
        "setup_seconds",
        "endpoints",
        "search_rps_ratio",
        "target_met",
    }
    assert (result["nodes"], result["gpus"], result["contracts"]) == (50, 400, 20)
    # Three sites, two GPU models each; the retired node's pool still lists its others.
    assert result["offers"] == 6
    # 29 reserved lines of one 8-GPU node each (ten for the bench organization).
    assert result["allocations"] == 29 * 8
    assert set(result["endpoints"]) == {
        "trivial",
        "search",
        "search_uncached",
        "search_filtered",
        "dashboard",
        "partner_nodes",
    }
    for figures in result["endpoints"].values():
        assert set(figures) == ENDPOINT_KEYS
        assert figures["p50_ms"] > 0 and figures["rps"] > 0
