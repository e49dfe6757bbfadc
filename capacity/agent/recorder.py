"""Turns a node's windows into journal records: the agent's metering loop.

A recorder owns the journal's write side. Each closed window yields one record per GPU
whose quantities are deltas of cumulative counters (``counters.readings_delta``) between
the window's two edges; the baseline is read when the recorder starts, so usage while
the agent was down is never attributed to the first window after a restart (it would
exceed the GPU's max power over that window and be quarantined anyway).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from capacity.agent.counters import CounterReadings, readings_delta
from capacity.agent.journal import Journal
from capacity.agent.protocol import GpuHealth, GpuInfo, time_from_unix, usage_fields
from capacity.agent.simulator import (
    GpuTotals,
    SimClock,
    SimulatedGpu,
    SimulatedNode,
    WindowActivity,
    health_sample,
)

# Windows produced per journal transaction while catching up, so that a long backfill
# does not keep the event loop (and the HTTP server) busy for seconds.
BATCH_WINDOWS = 64


def unix_ms_now() -> int:
    """Real UTC time in Unix milliseconds (integers throughout: no float clock maths)."""
    return time.time_ns() // 1_000_000


class Recorder(Protocol):
    """What the HTTP server needs from a node, real or simulated."""

    journal: Journal

    def inventory(self) -> list[GpuInfo]: ...

    def health(self) -> list[GpuHealth]: ...

    async def run(self) -> None:
        """Record windows as they close, forever."""


class SimulationRecorder:
    """Records the windows of a ``SimulatedNode`` as its ``SimClock`` passes them."""

    META_NEXT_WINDOW = "sim_next_window"
    META_NEXT_ORDINAL = "sim_next_ordinal"
    META_COUNTERS = "sim_counters"
    META_TRUTH = "sim_truth"

    def __init__(
        self,
        *,
        journal: Journal,
        node: SimulatedNode,
        backfill_windows: int,
        speed: int | None,
        real_now_ms: int,
    ) -> None:
        self.journal = journal
        self.node = node
        self.window_ms = node.window_ms
        saved_counters = journal.get_meta(self.META_COUNTERS) or {}
        for uuid, readings in saved_counters.items():
            if uuid in node.counters:
                node.counters[uuid] = CounterReadings.from_json(readings)
        saved_truth = journal.get_meta(self.META_TRUTH) or {}
        self.totals = {
            gpu.uuid: GpuTotals.from_json(saved_truth[gpu.uuid])
            if gpu.uuid in saved_truth
            else GpuTotals()
            for gpu in node.gpus
        }
        self.next_ordinal: int = journal.get_meta(self.META_NEXT_ORDINAL) or 0
        window_in_progress = real_now_ms // self.window_ms
        saved_next_window: int | None = journal.get_meta(self.META_NEXT_WINDOW)
        # Never overlap windows already journaled; skip (do not invent) the downtime
        # beyond the backfill horizon.
        self.next_window = max(saved_next_window or 0, window_in_progress - backfill_windows)
        self.clock = SimClock(
            origin_ms=self.next_window * self.window_ms, started_ms=real_now_ms, speed=speed
        )
        self.baseline = node.read_counters()

    def inventory(self) -> list[GpuInfo]:
        return [gpu.info() for gpu in self.node.gpus]

    def _last_activity(self, gpu: SimulatedGpu) -> WindowActivity:
        last = self.node.last_activities.get(gpu.uuid)
        if last is None:
            idle_mj = gpu.spec.idle_power_w * self.window_ms
            return WindowActivity("idle", None, 0, idle_mj, 0, 0, 0)
        return last

    def health(self) -> list[GpuHealth]:
        return [
            health_sample(gpu=gpu, activity=self._last_activity(gpu), window_ms=self.window_ms)
            for gpu in self.node.gpus
        ]

    def record_due_windows(self, real_now_ms: int, *, max_windows: int = BATCH_WINDOWS) -> int:
        """Journal up to ``max_windows`` windows that have ended; return how many."""
        sim_now_ms = self.clock.now_ms(real_now_ms)
        due = min(max_windows, sim_now_ms // self.window_ms - self.next_window)
        if due <= 0:
            return 0
        entries = []
        for _ in range(due):
            start_s = self.next_window * self.window_ms // 1000
            end_s = (self.next_window + 1) * self.window_ms // 1000
            windows = self.node.run_window(
                self.next_ordinal, window_start_ms=self.next_window * self.window_ms
            )
            for window in windows:
                uuid = window.gpu.uuid
                deltas = readings_delta(self.baseline[uuid], window.readings)
                self.baseline[uuid] = window.readings
                self.totals[uuid].add(window.activity, counter_reset=window.counter_reset)
                entries.append(
                    usage_fields(
                        gpu_uuid=uuid,
                        window_start=time_from_unix(start_s),
                        window_end=time_from_unix(end_s),
                        workload_kind=window.activity.kind,
                        workload_ref=window.activity.ref,
                        busy_ms=window.activity.busy_ms,
                        energy_mj=deltas.energy_mj,
                        input_tokens=deltas.input_tokens,
                        output_tokens=deltas.output_tokens,
                        requests=deltas.requests,
                    )
                )
            self.next_window += 1
            self.next_ordinal += 1
        self.journal.append(
            entries,
            meta={
                self.META_NEXT_WINDOW: self.next_window,
                self.META_NEXT_ORDINAL: self.next_ordinal,
                self.META_COUNTERS: {u: r.to_json() for u, r in self.node.counters.items()},
                self.META_TRUTH: {u: t.to_json() for u, t in self.totals.items()},
            },
        )
        return due

    def next_due_real_ms(self) -> int:
        """Real time at which the next window ends on the simulated clock."""
        return self.clock.real_ms_when((self.next_window + 1) * self.window_ms)

    async def run(self) -> None:
        while True:
            if self.record_due_windows(unix_ms_now()) == BATCH_WINDOWS:
                await asyncio.sleep(0)  # more are due: let requests in, then go on
                continue
            wait_ms = self.next_due_real_ms() - unix_ms_now()
            await asyncio.sleep(min(max(wait_ms, 5), 1000) / 1000)
