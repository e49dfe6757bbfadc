"""Argument types shared by the agent's and the fleet's command lines."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from capacity.agent.engine import EngineSettings
from capacity.agent.protocol import MAX_WINDOW_SECONDS
from capacity.agent.receipts import public_key_from_b64
from capacity.agent.runtime.simulated import SimulatedSettings


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def window_seconds(text: str) -> int:
    """A window length: records cover at most ``MAX_WINDOW_SECONDS`` each."""
    value = positive_int(text)
    if value > MAX_WINDOW_SECONDS:
        raise argparse.ArgumentTypeError(f"a window lasts at most {MAX_WINDOW_SECONDS} s")
    return value


def platform_key(text: str) -> str:
    """``--platform-key``: base64 of the platform's raw 32-byte receipt key."""
    try:
        public_key_from_b64(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """The simulated engine's speed (agent and fleet alike)."""
    defaults = EngineSettings()
    group = parser.add_argument_group("simulated inference engine")
    group.add_argument(
        "--engine-ttft-ms",
        type=non_negative_int,
        metavar="MS",
        default=defaults.ttft_ms,
        help=f"time to first token (default {defaults.ttft_ms})",
    )
    group.add_argument(
        "--engine-tokens-per-second",
        type=non_negative_int,
        metavar="N",
        default=defaults.tokens_per_second,
        help=f"tokens per second after the first, 0: no wait (default {defaults.tokens_per_second})",
    )


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(
        ttft_ms=args.engine_ttft_ms, tokens_per_second=args.engine_tokens_per_second
    )


def seconds_as_ms(text: str) -> int:
    """A duration in seconds (decimals allowed, e.g. 0.5) as whole milliseconds."""
    try:
        seconds = Decimal(text)
    except InvalidOperation as error:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from error
    if not seconds.is_finite() or not 0 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return int(seconds * 1000)


def add_simulated_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """The simulated runtime's timings and failures (agent and fleet alike)."""
    defaults = SimulatedSettings()
    group = parser.add_argument_group(
        "simulated runtime (assigned workloads: pending, pulling, starting, running)"
    )
    group.add_argument(
        "--pending-seconds",
        type=seconds_as_ms,
        metavar="S",
        default=defaults.pending_ms,
        help=f"time an assigned workload waits before its pull (default {defaults.pending_ms / 1000:g})",
    )
    group.add_argument(
        "--pull-seconds",
        type=seconds_as_ms,
        metavar="S",
        default=defaults.pull_ms,
        help=f"time to pull an image (default {defaults.pull_ms / 1000:g})",
    )
    group.add_argument(
        "--start-seconds",
        type=seconds_as_ms,
        metavar="S",
        default=defaults.start_ms,
        help=f"time from pulled to running (default {defaults.start_ms / 1000:g})",
    )
    group.add_argument(
        "--stop-seconds",
        type=seconds_as_ms,
        metavar="S",
        default=defaults.stop_ms,
        help=f"time to stop a removed workload (default {defaults.stop_ms / 1000:g})",
    )
    group.add_argument(
        "--stopped-retention-seconds",
        type=seconds_as_ms,
        metavar="S",
        default=defaults.retention_ms,
        help="how long a removed workload stays listed as stopped "
        f"(default {defaults.retention_ms // 1000})",
    )
    group.add_argument(
        "--fail-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="an image (or deployment model) whose pull fails (repeatable)",
    )


def simulated_settings(args: argparse.Namespace, *, host: str) -> SimulatedSettings:
    return SimulatedSettings(
        pending_ms=args.pending_seconds,
        pull_ms=args.pull_seconds,
        start_ms=args.start_seconds,
        stop_ms=args.stop_seconds,
        fail_images=frozenset(args.fail_image),
        retention_ms=args.stopped_retention_seconds,
        host=host,
    )
