"""A deterministic stand-in for a GPU node: workload, counters, health and ground truth.

Everything a simulated GPU does in a window is a pure function of ``(seed, node_key,
gpu_index, ordinal)``, where ``ordinal`` counts the windows the node has produced, and
of the assignment that ran on the GPU then (docs/workloads.md): a GPU is busy only
while an assignment the platform signed runs on it, and idle otherwise. The same seed
and the same assignments therefore yield the same usage on every run, after restarts,
and in the fleet; only the timestamps follow the clock.

The simulated devices expose *cumulative* counters like NVML and an inference server
do, and reset them now and then (about one GPU-window in 40, chosen by the seed, or on
demand), so the agent's counter handling runs the same path as on real hardware. The
ground truth is what the devices actually did, kept apart from the counters, so
``/v1/_sim/truth`` can prove that the records add up.

Simulated time (``SimClock``): window ``k`` covers ``[k*W, (k+1)*W)`` seconds of Unix
time and is produced once it has *ended* on the simulated clock. That clock never runs
ahead of real UTC, because the platform quarantines windows from the future. To get
records quickly, the clock starts ``backfill_windows`` windows in the past and catches
up with real time ``speed`` times faster than real time (instantly when ``speed`` is
None); from then on it follows real time. ``--speed`` compresses the *generation* of
past windows, it never moves a timestamp forward.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from capacity.agent.counters import CounterReadings
from capacity.agent.protocol import GpuHealth, GpuInfo


@dataclass(frozen=True)
class GpuModelSpec:
    """What the simulator needs to know about a GPU model (names as NVML reports them)."""

    name: str
    memory_mib: int
    max_power_w: int
    idle_power_w: int


GPU_MODELS: dict[str, GpuModelSpec] = {
    "h100": GpuModelSpec("NVIDIA H100 80GB HBM3", 81559, 700, 70),
    "a100": GpuModelSpec("NVIDIA A100-SXM4-80GB", 81920, 400, 50),
    "l40s": GpuModelSpec("NVIDIA L40S", 46068, 350, 35),
    "rtx4090": GpuModelSpec("NVIDIA GeForce RTX 4090", 24564, 450, 25),
}

# Catalogue models the simulated nodes' engines serve (the demo lists them as products).
INFERENCE_PRODUCTS = (
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "mistral-small-24b-instruct",
    "qwen2.5-coder-32b-instruct",
)

# One GPU-window in this many resets its energy counter, and as many its token counters.
RESET_ONE_IN = 80


@functools.lru_cache(maxsize=16384)
def _hasher(seed: int, node_key: str, gpu_index: int, purpose: str) -> Any:
    """BLAKE2b already fed with a draw's fixed parts; copied per draw (the fleet's hot path)."""
    return hashlib.blake2b(f"{seed}|{node_key}|{gpu_index}|{purpose}|".encode(), digest_size=40)


def _draws(seed: int, node_key: str, gpu_index: int, purpose: str, number: int) -> tuple[int, ...]:
    """Five independent 64-bit numbers; the simulator's only source of randomness."""
    hasher = _hasher(seed, node_key, gpu_index, purpose).copy()
    hasher.update(str(number).encode())
    return struct.unpack(">5Q", hasher.digest())


def _between(draw: int, low: int, high: int) -> int:
    """An integer in ``[low, high]`` from one draw."""
    return low + draw % (high - low + 1)


@dataclass(frozen=True)
class SimulatedGpu:
    index: int
    uuid: str
    spec: GpuModelSpec

    def info(self) -> GpuInfo:
        return GpuInfo(uuid=self.uuid, model=self.spec.name, memory_mib=self.spec.memory_mib)


def simulated_gpus(*, seed: int, node_key: str, count: int, model: str) -> list[SimulatedGpu]:
    """The node's GPUs; UUIDs depend on the seed and node so fleets never share one."""
    if model not in GPU_MODELS:
        raise ValueError(f"unknown GPU model {model!r}; choose from {sorted(GPU_MODELS)}")
    gpus = []
    for index in range(count):
        hexa = hashlib.sha256(f"hashgrid-sim-gpu|{seed}|{node_key}|{index}".encode()).hexdigest()
        uuid = f"GPU-{hexa[0:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:32]}"
        gpus.append(SimulatedGpu(index=index, uuid=uuid, spec=GPU_MODELS[model]))
    return gpus


@dataclass(frozen=True)
class WindowActivity:
    """What one GPU really did in one window: the ground truth behind a record."""

    kind: str
    ref: str | None
    busy_ms: int
    energy_mj: int
    input_tokens: int
    output_tokens: int
    requests: int


def window_activity(
    *,
    seed: int,
    node_key: str,
    gpu: SimulatedGpu,
    ordinal: int,
    window_ms: int,
    assigned: tuple[str, int] | None = None,
    unassigned_busy: bool = False,
) -> WindowActivity:
    """The GPU's activity in its ``ordinal``-th window; never above the model's max power.

    A GPU works only for the assignment that ran on it: ``assigned`` is that assignment's
    id and how many ms of the window it ran (``runtime.base.covering_assignment``), and
    the GPU is busy for a seeded 55-100 % of those. Without one it idles (no busy time,
    idle power), unless ``unassigned_busy`` (a fault: work nobody assigned, which the
    agent can only report as idle and the platform quarantines). Tokens come only from
    receipted requests, journaled apart from the windows.

    Energy is idle power over the whole window plus the busy share of the headroom to
    max power, so ``energy_mj <= max_power_w * window_ms`` always holds (W x ms = mJ).
    """
    busy_draw, power_draw, *_ = _draws(seed, node_key, gpu.index, "window", ordinal)
    spec = gpu.spec
    if assigned is not None:
        kind, ref = "assignment", assigned[0]
        busy_ms = min(assigned[1], window_ms) * _between(busy_draw, 55, 100) // 100
    elif unassigned_busy:
        kind, ref = "idle", None
        busy_ms = window_ms * _between(busy_draw, 55, 100) // 100
    else:
        kind, ref, busy_ms = "idle", None, 0
    intensity_pct = _between(power_draw, 60, 100) if busy_ms else 0
    energy_mj = (
        spec.idle_power_w * window_ms
        + (spec.max_power_w - spec.idle_power_w) * busy_ms * intensity_pct // 100
    )
    return WindowActivity(kind, ref, busy_ms, energy_mj, 0, 0, 0)


@dataclass(frozen=True)
class ScheduledResets:
    """Which of a GPU's cumulative counters restart from zero during a window."""

    energy: bool
    tokens: bool


def scheduled_resets(*, seed: int, node_key: str, gpu_index: int, ordinal: int) -> ScheduledResets:
    """Resets the seed schedules: a driver reload (energy) or a server restart (tokens)."""
    draw = _draws(seed, node_key, gpu_index, "window", ordinal)[4] % RESET_ONE_IN
    return ScheduledResets(energy=draw == 0, tokens=draw == 1)


def initial_counters(*, seed: int, node_key: str, gpu_index: int) -> CounterReadings:
    """Counters as found when the journal is created: whatever accrued before the agent."""
    energy, input_tokens, output_tokens, requests, _ = _draws(seed, node_key, gpu_index, "boot", 0)
    return CounterReadings(
        energy_mj=energy % 10**11,
        input_tokens=input_tokens % 10**9,
        output_tokens=output_tokens % 10**8,
        requests=requests % 10**6,
    )


def health_sample(*, gpu: SimulatedGpu, activity: WindowActivity, window_ms: int) -> GpuHealth:
    """Health as NVML would report it at the end of a window with ``activity``."""
    utilization_pct = activity.busy_ms * 100 // window_ms
    memory_pct = 85 if activity.busy_ms else 1
    return GpuHealth(
        gpu_uuid=gpu.uuid,
        utilization_pct=utilization_pct,
        memory_used_mib=gpu.spec.memory_mib * memory_pct // 100,
        temperature_c=32 + utilization_pct * 45 // 100,
        power_mw=activity.energy_mj * 1000 // window_ms,
        xid_errors=0,
    )


@dataclass
class GpuTotals:
    """Ground truth for one GPU, summed over the windows produced so far."""

    busy_ms: int = 0
    energy_mj: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    windows: int = 0
    counter_resets: int = 0

    def add(self, activity: WindowActivity, *, counter_reset: bool) -> None:
        self.busy_ms += activity.busy_ms
        self.energy_mj += activity.energy_mj
        self.input_tokens += activity.input_tokens
        self.output_tokens += activity.output_tokens
        self.requests += activity.requests
        self.windows += 1
        self.counter_resets += int(counter_reset)

    def merge(self, other: GpuTotals) -> None:
        for name, value in other.to_json().items():
            setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict[str, int]:
        return {
            "busy_ms": self.busy_ms,
            "energy_mj": self.energy_mj,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "requests": self.requests,
            "windows": self.windows,
            "counter_resets": self.counter_resets,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> GpuTotals:
        return cls(**{key: int(value) for key, value in data.items()})


def truth_payload(
    *,
    node_id: str,
    journal_epoch: str,
    head_seq: int,
    gpu_totals: Mapping[str, GpuTotals],
    time: str,
    receipts: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """Body of ``/v1/_sim/truth``: per GPU and overall totals of what really happened.

    ``receipts`` counts the receipted inference records (protocol v1.1) and their tokens
    apart from the GPUs' windows: ``record_count`` is windows plus receipt records.
    """
    overall = GpuTotals()
    for totals in gpu_totals.values():
        overall.merge(totals)
    receipt_totals = dict(receipts or {"records": 0, "input_tokens": 0, "output_tokens": 0})
    return {
        "node_id": node_id,
        "journal_epoch": journal_epoch,
        "head_seq": head_seq,
        "record_count": overall.windows + receipt_totals["records"],
        "receipts": receipt_totals,
        "gpus": [{"gpu_uuid": uuid, **t.to_json()} for uuid, t in gpu_totals.items()],
        "total": overall.to_json(),
        "time": time,
    }


@dataclass(frozen=True)
class GpuWindow:
    """One GPU's window as the devices saw it: truth plus the counters read at its end."""

    gpu: SimulatedGpu
    activity: WindowActivity
    readings: CounterReadings
    counter_reset: bool


COUNTER_NAMES = ("energy_mj", "input_tokens", "output_tokens", "requests")


@dataclass
class SimulatedNode:
    """The simulated devices of one node, with cumulative counters that can reset.

    A reset is applied only when a reader can see it: the new reading must be below the
    old one, or the old one zero (then the delta is right anyway). Otherwise it waits
    for a later window. A real counter can also reset and climb past its old value
    within one window; no agent can tell that from growth, so the simulator, whose
    ground truth is what a correct agent must report, does not produce it.
    """

    seed: int
    node_key: str
    gpus: list[SimulatedGpu]
    window_ms: int
    counters: dict[str, CounterReadings] = field(default_factory=dict)
    # Counters (by GPU UUID) asked to reset by fault injection and not reset yet.
    pending_resets: dict[str, set[str]] = field(default_factory=dict)
    # Which assignment ran on a GPU in [start_ms, end_ms) and for how long (the agent's
    # workload supervisor); None: nothing is ever assigned.
    coverage: Callable[[str, int, int], tuple[str, int] | None] | None = None
    # Windows still to produce under the unassigned_busy fault (every GPU).
    unassigned_busy_windows: int = 0
    # Each GPU's activity in the last window produced (health reports it).
    last_activities: dict[str, WindowActivity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for gpu in self.gpus:
            self.counters.setdefault(
                gpu.uuid,
                initial_counters(seed=self.seed, node_key=self.node_key, gpu_index=gpu.index),
            )

    def read_counters(self) -> dict[str, CounterReadings]:
        return dict(self.counters)

    def force_counter_reset(self) -> None:
        for gpu in self.gpus:
            self.pending_resets.setdefault(gpu.uuid, set()).update(COUNTER_NAMES)

    def activity(
        self, gpu: SimulatedGpu, ordinal: int, *, window_start_ms: int, unassigned_busy: bool
    ) -> WindowActivity:
        window_end_ms = window_start_ms + self.window_ms
        assigned = None
        if self.coverage is not None:
            assigned = self.coverage(gpu.uuid, window_start_ms, window_end_ms)
        return window_activity(
            seed=self.seed,
            node_key=self.node_key,
            gpu=gpu,
            ordinal=ordinal,
            window_ms=self.window_ms,
            assigned=assigned,
            unassigned_busy=unassigned_busy,
        )

    def run_window(self, ordinal: int, *, window_start_ms: int) -> list[GpuWindow]:
        """Advance every GPU through its ``ordinal``-th window and read its counters."""
        results = []
        unassigned_busy = self.unassigned_busy_windows > 0
        self.unassigned_busy_windows -= int(unassigned_busy)
        for gpu in self.gpus:
            activity = self.activity(
                gpu, ordinal, window_start_ms=window_start_ms, unassigned_busy=unassigned_busy
            )
            self.last_activities[gpu.uuid] = activity
            scheduled = scheduled_resets(
                seed=self.seed, node_key=self.node_key, gpu_index=gpu.index, ordinal=ordinal
            )
            requested = set(self.pending_resets.get(gpu.uuid, ()))
            if scheduled.energy:
                requested.add("energy_mj")
            if scheduled.tokens:
                requested.update(("input_tokens", "output_tokens", "requests"))
            before = self.counters[gpu.uuid]
            after: dict[str, int] = {}
            applied = False
            for name in COUNTER_NAMES:
                old, usage = getattr(before, name), getattr(activity, name)
                # The reset happens at the start of the window: the counter restarts
                # from zero and then counts the window's usage.
                if name in requested and (usage < old or old == 0):
                    after[name] = usage
                    applied = True
                    self.pending_resets.get(gpu.uuid, set()).discard(name)
                else:
                    after[name] = old + usage
            readings = CounterReadings(**after)
            self.counters[gpu.uuid] = readings
            results.append(GpuWindow(gpu, activity, readings, applied))
        return results


@dataclass(frozen=True)
class SimClock:
    """Simulated time in Unix milliseconds; never ahead of real time (see module doc)."""

    origin_ms: int
    started_ms: int
    # Simulated seconds per real second while catching up; None catches up at once.
    speed: int | None

    def now_ms(self, real_now_ms: int) -> int:
        if self.speed is None:
            return real_now_ms
        caught_up = self.origin_ms + (real_now_ms - self.started_ms) * self.speed
        return min(real_now_ms, caught_up)

    def real_ms_when(self, sim_ms: int) -> int:
        """Earliest real time at which the simulated clock reads ``sim_ms``."""
        if self.speed is None:
            return sim_ms
        catching_up = self.started_ms + -(-(sim_ms - self.origin_ms) // self.speed)
        return max(sim_ms, catching_up)
