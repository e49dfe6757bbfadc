from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capacity.agent.assignments import Assignment
from capacity.agent.counters import CounterReadings
from capacity.agent.fleet import build_parser
from capacity.agent.runtime.simulated import SimulatedRuntime, SimulatedSettings
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


JOB = "c" * 32


def test_activity_is_a_pure_function_of_seed_node_gpu_window_and_assignment() -> None:
    gpu = simulated_gpus(seed=7, node_key="sim-7", count=2, model="h100")[0]

    def activity(**extra: object) -> WindowActivity:
        return window_activity(
            seed=7, node_key="sim-7", gpu=gpu, ordinal=20, window_ms=60_000, **extra
        )

    # Busy 74 % of the 60 s the assignment ran, at 65 % of the 630 W headroom over 70 W idle.
    assert activity(assigned=(JOB, 60_000)) == activity(assigned=(JOB, 60_000))
    assert activity(assigned=(JOB, 60_000)) == WindowActivity(
        "assignment", JOB, 44_400, 4_200_000 + 630 * 44_400 * 65 // 100, 0, 0, 0
    )
    # It ran for the last 15 s only: busy 74 % of those.
    assert activity(assigned=(JOB, 15_000)) == WindowActivity(
        "assignment", JOB, 11_100, 4_200_000 + 630 * 11_100 * 65 // 100, 0, 0, 0
    )
    # Nothing assigned: idle at idle power, whatever the seed would have had it do.
    assert activity() == WindowActivity("idle", None, 0, 4_200_000, 0, 0, 0)
    # The unassigned_busy fault: the same work, reported under idle with no ref.
    assert activity(unassigned_busy=True) == WindowActivity(
        "idle", None, 44_400, 22_381_800, 0, 0, 0
    )


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    ordinal=st.integers(min_value=0, max_value=10**7),
    window_seconds=st.integers(min_value=1, max_value=60),
    model=st.sampled_from(sorted(GPU_MODELS)),
    ran_ms=st.one_of(st.none(), st.integers(min_value=1, max_value=60_000)),
    unassigned_busy=st.booleans(),
)
def test_activity_is_physically_possible(
    seed: int,
    ordinal: int,
    window_seconds: int,
    model: str,
    ran_ms: int | None,
    unassigned_busy: bool,
) -> None:
    gpu = simulated_gpus(seed=seed, node_key="n", count=1, model=model)[0]
    window_ms = window_seconds * 1000
    assigned = None if ran_ms is None else (JOB, min(ran_ms, window_ms))

    activity = window_activity(
        seed=seed,
        node_key="n",
        gpu=gpu,
        ordinal=ordinal,
        window_ms=window_ms,
        assigned=assigned,
        unassigned_busy=unassigned_busy,
    )

    assert 0 <= activity.busy_ms <= (window_ms if assigned is None else assigned[1])
    assert gpu.spec.idle_power_w * window_ms <= activity.energy_mj
    assert activity.energy_mj <= gpu.spec.max_power_w * window_ms
    assert activity.input_tokens == activity.output_tokens == activity.requests == 0
    assert (activity.kind, activity.ref) == (
        ("idle", None) if assigned is None else ("assignment", JOB)
    )
    if assigned is None and not unassigned_busy:
        assert activity.busy_ms == 0


def test_forced_counter_reset_restarts_counters_from_the_window_usage() -> None:
    gpus = simulated_gpus(seed=7, node_key="sim-7", count=1, model="h100")
    node = SimulatedNode(seed=7, node_key="sim-7", gpus=gpus, window_ms=1000)
    node.force_counter_reset()

    (window,) = node.run_window(0, window_start_ms=0)

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


def test_fleet_takes_the_simulated_runtime_settings() -> None:
    args = build_parser().parse_args(
        [
            *("--nodes", "1", "--port", "1", "--pull-seconds", "0.25", "--start-seconds", "2"),
            *("--fail-image", "bad/one:1", "--fail-image", "bad/two:2"),
        ]
    )

    assert (args.pending_seconds, args.pull_seconds, args.start_seconds) == (0, 250, 2000)
    assert (args.stop_seconds, args.stopped_retention_seconds) == (1000, 300_000)
    assert args.fail_image == ["bad/one:1", "bad/two:2"]


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "86401"])
def test_fleet_refuses_a_bad_duration(value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--nodes", "1", "--port", "1", f"--pull-seconds={value}"])


def test_simulated_failures_say_whose_fault_they_are() -> None:
    """A container's image that does not exist is the buyer's fault; a catalogue model
    that cannot be pulled is the node's (docs/workloads.md "Whose fault")."""
    runtime = SimulatedRuntime(
        SimulatedSettings(pull_ms=1000, start_ms=1000, fail_images=frozenset({"gone", "m"}))
    )
    runtime.begin(Assignment(id="a" * 32, kind="container", gpus=("GPU-1",), image="gone"), 0)
    runtime.begin(
        Assignment(id="b" * 32, kind="deployment", gpus=("GPU-2",), model="m"),
        0,
    )
    runtime.begin(Assignment(id="c" * 32, kind="container", gpus=("GPU-3",), image="ok"), 0)

    statuses = {status.id[0]: status for status in runtime.status(5000)}

    assert [(s.state, s.fault) for _, s in sorted(statuses.items())] == [
        ("failed", "buyer"),
        ("failed", "node"),
        ("running", ""),
    ]
    assert statuses["b"].to_wire()["fault"] == "node"
