from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capacity.agent.counters import CounterReadings
from capacity.agent.fleet import build_parser
from capacity.agent.simulator import (
    GPU_MODELS,
    SimClock,
    SimulatedNode,
    WindowActivity,
    simulated_gpus,
    window_activity,
)


def test_gpus_are_deterministic_per_seed_and_node() -> None:
    gpus = simulated_gpus(seed=7, node_key="sim-7", count=2, model="h100")

    assert [gpu.uuid for gpu in gpus] == [
        "GPU-184153be-8c0f-0cda-d616-9ae3ec3f44d9",
        "GPU-69ca3a1b-d018-f4ee-1109-e8a6d07d27e1",
    ]
    assert simulated_gpus(seed=7, node_key="other", count=1, model="h100")[0].uuid != gpus[0].uuid


def test_activity_is_a_pure_function_of_seed_node_gpu_and_window() -> None:
    gpu = simulated_gpus(seed=7, node_key="sim-7", count=2, model="h100")[0]

    activity = window_activity(seed=7, node_key="sim-7", gpu=gpu, ordinal=20, window_ms=60_000)

    assert activity == window_activity(
        seed=7, node_key="sim-7", gpu=gpu, ordinal=20, window_ms=60_000
    )
    assert activity == WindowActivity(
        kind="inference",
        ref="llama-3.1-70b-instruct",
        busy_ms=19_800,
        energy_mj=13_306_020,
        input_tokens=12_348,
        output_tokens=4_914,
        requests=21,
    )
    # 70 W idle + 630 W headroom x 19.8 s busy x intensity stays under 700 W x 60 s
    assert activity.energy_mj <= 700 * 60_000


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    ordinal=st.integers(min_value=0, max_value=10**7),
    window_seconds=st.integers(min_value=1, max_value=60),
    model=st.sampled_from(sorted(GPU_MODELS)),
)
def test_activity_is_physically_possible(
    seed: int, ordinal: int, window_seconds: int, model: str
) -> None:
    gpu = simulated_gpus(seed=seed, node_key="n", count=1, model=model)[0]
    window_ms = window_seconds * 1000

    activity = window_activity(
        seed=seed, node_key="n", gpu=gpu, ordinal=ordinal, window_ms=window_ms
    )

    assert 0 <= activity.busy_ms <= window_ms
    assert gpu.spec.idle_power_w * window_ms <= activity.energy_mj
    assert activity.energy_mj <= gpu.spec.max_power_w * window_ms
    assert min(activity.input_tokens, activity.output_tokens, activity.requests) >= 0
    if activity.kind != "inference":
        assert activity.input_tokens == activity.output_tokens == activity.requests == 0


def test_forced_counter_reset_restarts_counters_from_the_window_usage() -> None:
    gpus = simulated_gpus(seed=7, node_key="sim-7", count=1, model="h100")
    node = SimulatedNode(seed=7, node_key="sim-7", gpus=gpus, window_ms=1000)
    node.force_counter_reset()

    (window,) = node.run_window(0)

    assert window.counter_reset is True
    assert window.readings == CounterReadings(
        energy_mj=window.activity.energy_mj,
        input_tokens=window.activity.input_tokens,
        output_tokens=window.activity.output_tokens,
        requests=window.activity.requests,
    )


def test_sim_clock_catches_up_at_speed_and_never_passes_real_time() -> None:
    clock = SimClock(origin_ms=1_000_000, started_ms=2_000_000, speed=60)

    assert clock.now_ms(2_000_000) == 1_000_000
    assert clock.now_ms(2_010_000) == 1_600_000
    assert clock.now_ms(2_020_000) == 2_020_000  # caught up: follows real time
    assert clock.real_ms_when(1_600_000) == 2_010_000
    assert clock.real_ms_when(3_000_000) == 3_000_000
    assert SimClock(origin_ms=0, started_ms=5, speed=None).now_ms(123) == 123


def test_inference_clients_change_only_who_the_inference_is_for():
    """With clients, an inference window names one of them instead of a product; the
    work itself (busy time, energy, tokens) is the same window for window."""
    clients = ("llama-3.1-8b-instruct@abc1234", "qwen2.5-coder-32b-instruct@zz9")
    gpu = simulated_gpus(seed=3, node_key="node-a", count=1, model="h100")[0]
    seen = set()
    for ordinal in range(400):
        plain = window_activity(
            seed=3, node_key="node-a", gpu=gpu, ordinal=ordinal, window_ms=60_000
        )
        keyed = window_activity(
            seed=3,
            node_key="node-a",
            gpu=gpu,
            ordinal=ordinal,
            window_ms=60_000,
            inference_clients=clients,
        )
        assert (keyed.kind, keyed.busy_ms, keyed.energy_mj, keyed.input_tokens) == (
            plain.kind,
            plain.busy_ms,
            plain.energy_mj,
            plain.input_tokens,
        )
        if plain.kind == "inference":
            assert keyed.ref in clients
            seen.add(keyed.ref)
        else:
            assert keyed.ref == plain.ref
    assert seen == set(clients)


@pytest.mark.parametrize(
    "value",
    ["llama", "@abc", "llama@", "llama@a@b", "llama 8b@abc", "x" * 120 + "@" + "y" * 8],
)
def test_fleet_refuses_a_malformed_inference_client(value):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--nodes", "1", "--port", "1", f"--inference-client={value}"])


def test_fleet_takes_inference_clients():
    args = build_parser().parse_args(
        ["--nodes", "1", "--port", "1", "--inference-client", "llama-3.1-8b-instruct@k3y.9_-x"]
    )
    assert args.inference_client == ["llama-3.1-8b-instruct@k3y.9_-x"]
