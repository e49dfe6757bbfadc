"""Argument types shared by the agent's and the fleet's command lines."""

from __future__ import annotations

import argparse

from capacity.agent.protocol import MAX_WINDOW_SECONDS


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
