"""Argument types shared by the agent's and the fleet's command lines."""

from __future__ import annotations

import argparse

from capacity.agent.engine import EngineSettings
from capacity.agent.protocol import MAX_WINDOW_SECONDS
from capacity.agent.receipts import public_key_from_b64


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
