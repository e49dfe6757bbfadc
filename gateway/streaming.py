"""Server-sent events as they pass through: usage read, and dropped where not asked for.

The gateway always asks the agent for usage on every chunk (``include_usage`` and
``continuous_usage_stats``), so it knows the tokens relayed so far at any moment. The
buyer gets usage only as asked: none without ``stream_options.include_usage``; with it,
the final usage chunk (empty ``choices``), and on every chunk only with
``continuous_usage_stats``. Events are edited as bytes (a regular expression finds the
``usage`` member) instead of parsed and re-encoded: it is the streaming path's main
cost per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `"usage": null` or `"usage": {…}` (one level of nested objects, e.g. *_tokens_details),
# with the comma that joins it to its neighbour.
_USAGE_MEMBER = rb'"usage"\s*:\s*(?:null|\{(?:[^{}]|\{[^{}]*\})*\})'
_USAGE_WITH_COMMA_BEFORE = re.compile(rb",\s*" + _USAGE_MEMBER)
_USAGE_WITH_COMMA_AFTER = re.compile(_USAGE_MEMBER + rb"\s*,?")
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_EVENT_END = b"\n\n"


@dataclass(slots=True)
class UsageSeen:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Set once the agent reported usage at all.
    reported: bool = False


def read_usage(event: bytes, usage: UsageSeen) -> None:
    match = _USAGE.search(event)
    if match is None:
        return
    tail = event[match.end() - 1 :]
    prompt = _PROMPT_TOKENS.search(tail)
    completion = _COMPLETION_TOKENS.search(tail)
    if prompt is not None:
        usage.prompt_tokens = int(prompt.group(1))
    if completion is not None:
        usage.completion_tokens = int(completion.group(1))
    usage.reported = True


def _strip_all_usage(events: bytes) -> bytes:
    stripped = _USAGE_WITH_COMMA_BEFORE.sub(b"", events)
    if b'"usage"' in stripped:
        stripped = _USAGE_WITH_COMMA_AFTER.sub(b"", stripped)
    return stripped


class EventRelay:
    """Splits the agent's byte stream into events and edits them for the buyer."""

    def __init__(self, *, include_usage: bool, continuous_usage: bool) -> None:
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.usage = UsageSeen()
        self._buffer = b""
        # Usage as of the events handed out so far (the tokens relayed to the buyer).
        self.relayed = UsageSeen()
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in ``chunk`` (plus what was buffered), edited for the buyer.

        Work per batch, not per event, where it can be: the usage is read from the last
        event that carries one (it supersedes the others), and the usage members are
        removed by one substitution over the batch, around the final usage chunk
        (empty ``choices``) when the batch holds it.
        """
        data = self._buffer + chunk if self._buffer else chunk
        end = data.rfind(_EVENT_END)
        if end < 0:
            self._buffer = data
            return b""
        complete, self._buffer = data[: end + 2], data[end + 2 :]
        self.events += complete.count(_EVENT_END)
        last = complete.rfind(b'"usage"')
        if last < 0:
            return complete
        read_usage(complete[last:], self.usage)
        if self.include_usage and self.continuous_usage:
            return complete
        final = _EMPTY_CHOICES.search(complete)
        if final is None:
            return _strip_all_usage(complete)
        # The final usage chunk: kept whole with include_usage, dropped without.
        start = complete.rfind(_EVENT_END, 0, final.start())
        start = 0 if start < 0 else start + 2
        stop = complete.find(_EVENT_END, final.end()) + 2
        before, after = complete[:start], complete[stop:]
        kept = complete[start:stop] if self.include_usage else b""
        return _strip_all_usage(before) + kept + _strip_all_usage(after)

    def mark_relayed(self) -> None:
        self.relayed.prompt_tokens = self.usage.prompt_tokens
        self.relayed.completion_tokens = self.usage.completion_tokens
        self.relayed.reported = self.usage.reported
