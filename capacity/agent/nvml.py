"""Real GPUs through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Imported lazily: the simulator, the fleet and the platform never need NVML, and a
machine without an NVIDIA driver must get a clear message, not a traceback.

Usage per window: ``busy_ms`` integrates NVML's utilization samples (once a second),
``energy_mj`` is the delta of ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules
since the driver loaded; a reload resets it). Token and request counters come from the
inference server, which this reference agent does not read yet: they are reported as 0.
The workload is the assignment that ran on the GPU during the window (``coverage``, from
the agent's workload supervisor), ``idle`` otherwise: busy time no assignment covers is
reported as it was measured, under ``idle``, and the platform never bills it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from capacity.agent.counters import CounterReadings, readings_delta
from capacity.agent.journal import Journal
from capacity.agent.protocol import GpuHealth, GpuInfo, time_from_unix, usage_fields
from capacity.agent.recorder import unix_ms_now

SAMPLE_INTERVAL_MS = 1000


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine; the message says why and what to do."""


def load_nvml() -> Any:
    """Import and initialise ``pynvml``, or raise ``NvmlUnavailable``."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError as error:
        raise NvmlUnavailable(
            "NVML not available: the nvidia-ml-py package is not installed (use --simulate)"
        ) from error
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise NvmlUnavailable(
            f"NVML not available: no NVIDIA driver found ({error}) (use --simulate)"
        ) from error
    return nvml


def nvml_inventory() -> list[GpuInfo]:
    """This machine's GPUs, for enrollment."""
    nvml = load_nvml()
    return [_gpu_info(nvml, handle) for handle in _handles(nvml)]


def _handles(nvml: Any) -> list[Any]:
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]


def _gpu_info(nvml: Any, handle: Any) -> GpuInfo:
    return GpuInfo(
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        model=_text(nvml.nvmlDeviceGetName(handle)),
        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20,
    )


class NvmlRecorder:
    """Samples every GPU of this machine and journals one record per GPU per window."""

    def __init__(self, *, journal: Journal, window_seconds: int) -> None:
        self.journal = journal
        self.window_ms = window_seconds * 1000
        self.nvml = load_nvml()
        self.handles = _handles(self.nvml)
        self.gpus = [_gpu_info(self.nvml, handle) for handle in self.handles]
        self.xid_errors = {gpu.uuid: 0 for gpu in self.gpus}
        self.events = self._register_xid_events()
        # Which assignment ran on a GPU in [start_ms, end_ms) (the workload supervisor).
        self.coverage: Callable[[str, int, int], tuple[str, int] | None] | None = None

    def _register_xid_events(self) -> Any:
        """An NVML event set for XID errors, or None where the GPU does not support it."""
        try:
            events = self.nvml.nvmlEventSetCreate()
            for handle in self.handles:
                self.nvml.nvmlDeviceRegisterEvents(
                    handle, self.nvml.nvmlEventTypeXidCriticalError, events
                )
        except self.nvml.NVMLError:
            return None
        return events

    def _drain_xid_events(self) -> None:
        if self.events is None:
            return
        while True:
            try:
                event = self.nvml.nvmlEventSetWait(self.events, 0)
            except self.nvml.NVMLError:  # NVML_ERROR_TIMEOUT: no event pending
                return
            uuid = _text(self.nvml.nvmlDeviceGetUUID(event.device))
            if uuid in self.xid_errors:
                self.xid_errors[uuid] += 1

    def inventory(self) -> list[GpuInfo]:
        return list(self.gpus)

    def health(self) -> list[GpuHealth]:
        self._drain_xid_events()
        samples = []
        for gpu, handle in zip(self.gpus, self.handles, strict=True):
            samples.append(
                GpuHealth(
                    gpu_uuid=gpu.uuid,
                    utilization_pct=int(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    memory_used_mib=int(self.nvml.nvmlDeviceGetMemoryInfo(handle).used) // 2**20,
                    temperature_c=int(
                        self.nvml.nvmlDeviceGetTemperature(handle, self.nvml.NVML_TEMPERATURE_GPU)
                    ),
                    power_mw=int(self.nvml.nvmlDeviceGetPowerUsage(handle)),
                    xid_errors=self.xid_errors[gpu.uuid],
                )
            )
        return samples

    def _read_counters(self) -> list[CounterReadings]:
        return [
            CounterReadings(
                energy_mj=int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                input_tokens=0,
                output_tokens=0,
                requests=0,
            )
            for handle in self.handles
        ]

    async def run(self) -> None:
        """Start at the next window boundary, then sample and close windows forever."""
        window_start_ms = (unix_ms_now() // self.window_ms + 1) * self.window_ms
        await asyncio.sleep((window_start_ms - unix_ms_now()) / 1000)
        baseline = self._read_counters()
        busy_ms = [0] * len(self.handles)
        last_sample_ms = unix_ms_now()
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_MS / 1000)
            now_ms = unix_ms_now()
            window_end_ms = window_start_ms + self.window_ms
            elapsed_ms = min(now_ms, window_end_ms) - last_sample_ms
            for index, handle in enumerate(self.handles):
                utilization = int(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                busy_ms[index] += max(elapsed_ms, 0) * utilization // 100
            last_sample_ms = min(now_ms, window_end_ms)
            if now_ms < window_end_ms:
                continue
            readings = self._read_counters()
            entries = []
            for index, gpu in enumerate(self.gpus):
                deltas = readings_delta(baseline[index], readings[index])
                busy = min(busy_ms[index], self.window_ms)
                assigned = None
                if self.coverage is not None:
                    assigned = self.coverage(gpu.uuid, window_start_ms, window_end_ms)
                entries.append(
                    usage_fields(
                        gpu_uuid=gpu.uuid,
                        window_start=time_from_unix(window_start_ms // 1000),
                        window_end=time_from_unix(window_end_ms // 1000),
                        workload_kind="idle" if assigned is None else "assignment",
                        workload_ref=None if assigned is None else assigned[0],
                        busy_ms=busy,
                        energy_mj=deltas.energy_mj,
                        input_tokens=deltas.input_tokens,
                        output_tokens=deltas.output_tokens,
                        requests=deltas.requests,
                    )
                )
            self.journal.append(entries)
            baseline, busy_ms = readings, [0] * len(self.handles)
            window_start_ms = window_end_ms
            last_sample_ms = window_start_ms


def _text(value: object) -> str:
    """pynvml returns ``bytes`` in old releases and ``str`` in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)
