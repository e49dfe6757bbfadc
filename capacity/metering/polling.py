"""Polling: fetch a node's usage pages and health, verify them, validate every record.

No database here. ``poll_node`` follows ``/v1/usage`` from the stored cursor up to the
agent's head, checks each page's ``X-Agent-Signature`` over the exact body bytes with the
node's stored public key and the hash chain from the cursor (a new journal epoch starts
again from genesis, ``after=0``), and validates each record (``validation``). It returns
a ``PollOutcome`` whose pages ``ingest`` stores, each node's pages in order.

``poll_concurrently`` runs many nodes at once on one ``AgentHttp`` (one keep-alive pool
with a connection per concurrent node, a semaphore bounding concurrency) in an event
loop on a helper thread, and hands the outcomes to the calling thread in groups as they
become ready: the caller stores one group while the loop polls the next nodes, and
Django's database connection never leaves the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from capacity.agent.protocol import (
    GENESIS_PREV_HASH,
    USAGE_WORKLOADS_PARAM,
    canonical_json,
    verify_chain,
    verify_signature,
)
from capacity.agent_client import AgentError, AgentHttp, AgentHttpError, normalize_agent_url
from capacity.metering.assignments import AssignmentReport, NodeAssignmentPlan
from capacity.metering.availability import MinuteMask, minute_masks
from capacity.metering.models import QuarantineReason
from capacity.metering.validation import (
    AcceptedRecord,
    GpuRef,
    ReceiptContext,
    Rejection,
    to_unix_us,
    validate_record,
)
from config.gateway_keys import receipt_public_key

if TYPE_CHECKING:
    import httpx

# Records asked for per page (the protocol caps a page at 1000).
PAGE_LIMIT = 1000
# Pages followed in one poll; the rest waits for the next poll (the cursor is stored).
MAX_PAGES_PER_POLL = 50
# Nodes of one batch polled at the same time.
DEFAULT_CONCURRENCY = 16
# Seconds one node's poll (every page, then health) may take in all; each request also has
# its own deadline (``agent_client.REQUEST_DEADLINE_S``). Pages read before it are kept.
POLL_DEADLINE_S = 30.0
# How much of an unreadable body a quarantine row keeps.
_RAW_KEEP_CHARS = 2000


@dataclass(frozen=True)
class PollTarget:
    """Everything needed to poll one node, read from the database before polling."""

    node_id: int
    agent_url: str
    token: str
    public_key: str
    journal_epoch: str
    last_seq: int
    last_hash: str
    gpu_window_ends: Mapping[str, int]
    gpus: Mapping[str, GpuRef]
    # Inference products the node serves: slug -> tokens per GPU-second (validation's
    # bound); inference for any other product is quarantined.
    served_products: Mapping[str, int] = field(default_factory=dict)
    # Ask /v1/health on this poll (``health_due``); otherwise the last health verdict stands.
    check_health: bool = True
    # Assignments: what covers the GPUs, what to push, the digest last read
    # (``capacity.metering.assignments``).
    assignments: NodeAssignmentPlan = field(default_factory=NodeAssignmentPlan)

    def url(self, endpoint: str) -> str:
        """``{agent_url}/v1/{endpoint}``. The stored URL is normalized again (enrollment
        does it since issue 13; older rows may carry a query or fragment that would
        swallow the endpoint and aim the poll at another path)."""
        return f"{normalize_agent_url(self.agent_url)}/v1/{endpoint}"


@dataclass(frozen=True)
class QuarantinedEntry:
    journal_epoch: str
    seq: int
    rejection: Rejection
    payload: object


@dataclass
class PageToStore:
    """One page's effect, stored atomically iff the cursor is still ``from_*``."""

    from_epoch: str
    from_seq: int
    to_epoch: str
    to_seq: int
    to_hash: str
    accepted: list[AcceptedRecord] = field(default_factory=list)
    quarantined: list[QuarantinedEntry] = field(default_factory=list)
    # Window ends (Unix us) of the GPUs whose latest window this page advanced.
    gpu_window_ends: dict[str, int] = field(default_factory=dict)
    minute_masks: list[MinuteMask] = field(default_factory=list)


# Figures outside these bounds are not believed (the agent is untrusted input).
MAX_TEMPERATURE_C = 150
MAX_GPU_POWER_MW = 5_000_000


@dataclass(frozen=True)
class HealthSample:
    """One health answer, reduced to the node: what ``NodeHealthDay`` sums."""

    utilization_pct: int  # mean over the GPUs
    temperature_c_max: int  # the hottest GPU
    power_mw: int  # all GPUs together


def _int_in(value: object, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def health_sample(gpus: list[object]) -> HealthSample | None:
    """The node's sample from the GPUs of a verified health answer; GPUs whose figures are
    missing or out of range are left out, and None when none is left."""
    figures = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        utilization = _int_in(gpu.get("utilization_pct"), 0, 100)
        temperature = _int_in(gpu.get("temperature_c"), 0, MAX_TEMPERATURE_C)
        power = _int_in(gpu.get("power_mw"), 0, MAX_GPU_POWER_MW)
        if utilization is not None and temperature is not None and power is not None:
            figures.append((utilization, temperature, power))
    if not figures:
        return None
    return HealthSample(
        utilization_pct=sum(one[0] for one in figures) // len(figures),
        temperature_c_max=max(one[1] for one in figures),
        power_mw=sum(one[2] for one in figures),
    )


@dataclass
class PollOutcome:
    """What one poll of one node found."""

    node_id: int
    polled_at: datetime
    pages: list[PageToStore] = field(default_factory=list)
    # The agent could not be reached or answered an error: the poll failed.
    error: str = ""
    # The agent answered but its signature or hash chain failed: the node is degraded.
    integrity_problem: str = ""
    # The agent's health says a GPU is in trouble: the node is degraded. None: health
    # was not asked on this poll, the previous verdict stands.
    health_problem: str | None = None
    gpu_utilization_pct: int | None = None
    # The health answer's figures for the node's daily history (None: not asked, or no
    # GPU gave figures in range).
    health_sample: HealthSample | None = None
    # What the poll learnt and did about assignments (``_sync_assignments``).
    assignment_report: AssignmentReport | None = None

    @property
    def succeeded(self) -> bool:
        return not self.error

    @property
    def records_stored_at_most(self) -> int:
        return sum(len(page.accepted) for page in self.pages)


class _Unverified(Exception):
    """A body whose signature does not verify (carries what could be read of it)."""

    def __init__(self, what: str, body: bytes) -> None:
        super().__init__(f"{what}: signature does not verify with the enrolled key")
        self.body = body


def _signed_json(response_body: bytes, signature: str, public_key: str, what: str) -> object:
    if not verify_signature(public_key, response_body, signature):
        raise _Unverified(what, response_body)
    return json.loads(response_body)


def _bad_signature_entries(body: bytes, epoch: str, detail: str) -> list[QuarantinedEntry]:
    """Every record of an unverifiable page, quarantined as received (or the raw body)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    records = payload.get("records") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not records:
        raw = body[:_RAW_KEEP_CHARS].decode("utf-8", errors="replace")
        rejection = Rejection(QuarantineReason.BAD_SIGNATURE, detail)
        return [QuarantinedEntry(epoch, 0, rejection, {"raw": raw})]
    page_epoch = payload.get("journal_epoch") if isinstance(payload, dict) else None
    entries = []
    for index, record in enumerate(records):
        seq = record.get("seq") if isinstance(record, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**63:
            seq = -(index + 1)
        gpu_uuid = record.get("gpu_uuid") if isinstance(record, dict) else ""
        rejection = Rejection(
            QuarantineReason.BAD_SIGNATURE,
            detail,
            gpu_uuid[:64] if isinstance(gpu_uuid, str) else "",
        )
        epoch_text = page_epoch[:64] if isinstance(page_epoch, str) else epoch
        entries.append(QuarantinedEntry(epoch_text, seq, rejection, record))
    return entries


def _page_payload(payload: object) -> tuple[str, list[dict[str, object]], int]:
    """``(journal_epoch, records, head_seq)`` of a verified usage body, or ValueError."""
    if not isinstance(payload, dict):
        raise ValueError("usage answer is not a JSON object")
    epoch, records, head_seq = (
        payload.get("journal_epoch"),
        payload.get("records"),
        payload.get("head_seq"),
    )
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        raise ValueError("journal_epoch missing or too long")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("records is not a list of objects")
    if not isinstance(head_seq, int) or isinstance(head_seq, bool) or head_seq < 0:
        raise ValueError("head_seq is not a non-negative integer")
    return epoch, records, head_seq


async def _poll_usage(http: AgentHttp, target: PollTarget, outcome: PollOutcome) -> None:
    """Follow usage pages from the stored cursor to the head, filling ``outcome.pages``."""
    now_us = to_unix_us(outcome.polled_at)
    # What the database holds (the conditional update's "from") and the chain position.
    stored_epoch, stored_seq = target.journal_epoch, target.last_seq
    chain_epoch, chain_seq, chain_hash = target.journal_epoch, target.last_seq, target.last_hash
    window_ends = dict(target.gpu_window_ends)
    receipts = ReceiptContext(
        node_id=target.node_id,
        agent_public_key=target.public_key,
        platform_key=receipt_public_key(),
        seen_rids=set(),
    )
    for page_number in range(MAX_PAGES_PER_POLL):
        params: dict[str, int | str] = {"after": chain_seq, "limit": PAGE_LIMIT}
        if page_number == 0:
            # The digest of the workloads last read: the first page embeds the agent's list
            # when its own differs (docs/workloads.md "Cheap polling").
            params[USAGE_WORKLOADS_PARAM] = target.assignments.digest
        answer = await http.get(target.url("usage"), token=target.token, params=params)
        try:
            payload = _signed_json(answer.body, answer.signature, target.public_key, "usage page")
        except _Unverified as error:
            outcome.integrity_problem = str(error)
            page = PageToStore(stored_epoch, stored_seq, stored_epoch, stored_seq, chain_hash)
            page.quarantined = _bad_signature_entries(error.body, chain_epoch, str(error))
            outcome.pages.append(page)
            return
        try:
            epoch, records, head_seq = _page_payload(payload)
        except ValueError as error:
            outcome.error = f"malformed usage answer: {error}"
            return
        _read_assignments_member(payload, outcome)
        if epoch != chain_epoch:
            # A new journal (the agent's disk was wiped or replaced): start from genesis.
            restart = chain_seq != 0
            chain_epoch, chain_seq, chain_hash = epoch, 0, GENESIS_PREV_HASH
            if restart:
                continue
        # Records at or below the cursor are already stored (a replayed page): skip them.
        first_new = 0
        while first_new < len(records):
            seq = records[first_new].get("seq")
            if not (isinstance(seq, int) and not isinstance(seq, bool) and seq <= chain_seq):
                break
            first_new += 1
        fresh = records[first_new:]
        chain = verify_chain(fresh, chain_hash, after_seq=chain_seq)
        page = PageToStore(
            from_epoch=stored_epoch,
            from_seq=stored_seq,
            to_epoch=epoch,
            to_seq=chain.head_seq if chain.head_seq is not None else chain_seq,
            to_hash=chain.head_hash,
        )
        for record in fresh[: chain.valid_count]:
            verdict = validate_record(
                record,
                gpus=target.gpus,
                now_us=now_us,
                gpu_window_ends=window_ends,
                served_products=target.served_products,
                receipts=receipts,
                assignments=target.assignments.covers,
            )
            if isinstance(verdict, AcceptedRecord):
                page.accepted.append(verdict)
                if verdict.receipt is None:  # receipt records never move the GPU's cursor
                    uuid = str(record["gpu_uuid"])
                    page.gpu_window_ends[uuid] = window_ends[uuid]
            else:
                seq = int(record["seq"])  # type: ignore[call-overload]  # chain-checked int
                page.quarantined.append(QuarantinedEntry(epoch, seq, verdict, record))
        if not chain.ok:
            detail = f"hash chain broken at seq {chain.failed_seq!r}: {chain.error}"
            outcome.integrity_problem = detail
            for index, record in enumerate(fresh[chain.valid_count :]):
                seq = record.get("seq")
                if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**63:
                    seq = -(index + 1)
                raw_uuid = record.get("gpu_uuid")
                rejection = Rejection(
                    QuarantineReason.BROKEN_CHAIN,
                    detail,
                    raw_uuid[:64] if isinstance(raw_uuid, str) else "",
                )
                page.quarantined.append(QuarantinedEntry(epoch, seq, rejection, record))
        # Availability comes from the GPUs' window records; a request's record adds nothing.
        page.minute_masks = minute_masks(r for r in page.accepted if r.receipt is None)
        outcome.pages.append(page)
        stored_epoch, stored_seq = page.to_epoch, page.to_seq
        chain_epoch, chain_seq, chain_hash = epoch, page.to_seq, page.to_hash
        if not chain.ok or not fresh or chain_seq >= head_seq:
            return


_HEX64 = frozenset("0123456789abcdef")


def _read_assignments_member(payload: object, outcome: PollOutcome) -> None:
    """Keep the usage answer's ``assignments`` ``{generation, digest}`` (v1.1 agents),
    and its ``workloads`` list when embedded (the first page, when the agent's digest is
    not the one the platform sent)."""
    member = payload.get("assignments") if isinstance(payload, dict) else None
    report = outcome.assignment_report
    if not isinstance(member, dict) or report is None:
        return
    generation, digest = member.get("generation"), member.get("digest")
    if isinstance(generation, int) and not isinstance(generation, bool) and generation >= 0:
        report.agent_generation = generation
    if report.workloads is not None:
        return  # the digest stays the one of the list read
    workloads = member.get("workloads")
    if isinstance(workloads, list):
        report.workloads = workloads
        # The digest of the list as read, computed here: the agent's word is not needed.
        report.agent_digest = hashlib.sha256(canonical_json(workloads).encode()).hexdigest()
    elif isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX64:
        report.agent_digest = digest


PLATFORM_SIGNATURE_HEADER = "X-Platform-Signature"


async def _sync_assignments(http: AgentHttp, target: PollTarget, outcome: PollOutcome) -> None:
    """Push the desired assignments if the agent holds an older generation; read its
    workloads if their digest changed and the usage answer did not embed them (an agent
    before the ``workloads`` parameter). A v1 agent (no ``assignments`` in its usage
    answer) is neither pushed to nor read."""
    report, plan = outcome.assignment_report, target.assignments
    if report is None or report.agent_generation is None:
        return
    push = plan.push
    if push is not None and report.agent_generation < push.generation:
        report.pushed_generation = push.generation
        try:
            answer = await http.put_signed(
                target.url("assignments"),
                token=target.token,
                body=push.body,
                signature_header=PLATFORM_SIGNATURE_HEADER,
                signature=push.signature,
            )
            _signed_json(answer.body, answer.signature, target.public_key, "assignments answer")
        except AgentHttpError as error:
            report.push_error = f"the agent refused the assignments: {error}"
        except (AgentError, _Unverified, ValueError) as error:
            report.push_error = str(error)
    if (
        report.workloads is None
        and report.agent_digest is not None
        and report.agent_digest != plan.digest
    ):
        try:
            answer = await http.get(target.url("workloads"), token=target.token)
            payload = _signed_json(answer.body, answer.signature, target.public_key, "workloads")
        except (AgentError, _Unverified, ValueError):
            return  # read again on the next poll (the stored digest did not move)
        workloads = payload.get("workloads") if isinstance(payload, dict) else None
        if isinstance(workloads, list):
            report.workloads = workloads
            # The digest of what was read, not the usage answer's: a push just made (or
            # the runtime's clock) may have moved the list since, and the next poll
            # should read it again only if it moves after this read.
            report.agent_digest = hashlib.sha256(canonical_json(workloads).encode()).hexdigest()


async def _poll_health(http: AgentHttp, target: PollTarget, outcome: PollOutcome) -> None:
    answer = await http.get(target.url("health"), token=target.token)
    try:
        payload = _signed_json(answer.body, answer.signature, target.public_key, "health answer")
    except _Unverified as error:
        outcome.integrity_problem = outcome.integrity_problem or str(error)
        return
    gpus = payload.get("gpus") if isinstance(payload, dict) else None
    if not isinstance(gpus, list):
        outcome.health_problem = "health answer lists no GPUs"
        return
    problems, utilizations, reported = [], [], set()
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        uuid = gpu.get("gpu_uuid")
        reported.add(uuid)
        utilization, xid_errors = gpu.get("utilization_pct"), gpu.get("xid_errors")
        if isinstance(utilization, int) and 0 <= utilization <= 100:
            utilizations.append(utilization)
        if isinstance(xid_errors, int) and xid_errors > 0:
            problems.append(f"GPU {uuid} reported {xid_errors} XID error(s)")
    missing = sorted(set(target.gpus) - reported)
    if missing:
        problems.append(f"GPU(s) missing from the agent's health report: {', '.join(missing)}")
    outcome.health_problem = "; ".join(problems)
    outcome.health_sample = health_sample(gpus)
    if utilizations:
        outcome.gpu_utilization_pct = sum(utilizations) // len(utilizations)


async def poll_node(
    http: AgentHttp,
    target: PollTarget,
    *,
    polled_at: datetime,
    deadline_s: float = POLL_DEADLINE_S,
) -> PollOutcome:
    """Poll one node: usage pages to the head, then, when due, health, within ``deadline_s``.

    One after the other, so a node holds one connection at a time (the pool never
    queues) and an agent that does not answer usage is not asked for health as well.
    A poll that overruns its deadline fails; the pages it completed are kept (each is
    verified and stored on its own), the rest waits for the next poll.
    """
    outcome = PollOutcome(node_id=target.node_id, polled_at=polled_at)
    outcome.assignment_report = AssignmentReport(node_id=target.node_id, polled_at=polled_at)
    requests = [_poll_usage, _sync_assignments]
    if target.check_health:
        requests.append(_poll_health)
    try:
        async with asyncio.timeout(deadline_s):
            for request in requests:
                try:
                    await request(http, target, outcome)
                except AgentError as error:
                    outcome.error = str(error)
                except ValueError as error:  # json.JSONDecodeError of a signed body
                    outcome.error = f"malformed answer: {error}"
                if outcome.error:
                    break
    except TimeoutError:
        outcome.error = f"poll not finished within {deadline_s:g} s"
    return outcome


# Health is asked every this many polls of a node (staggered by node id): health only
# moves status and utilization, and asking on every poll doubles the HTTP work.
HEALTH_EVERY_POLLS = 5


def health_due(*, node_id: int, polled_at: datetime, interval_seconds: int) -> bool:
    """Whether this poll of ``node_id`` asks ``/v1/health`` (1 poll in HEALTH_EVERY_POLLS)."""
    poll_number = int(polled_at.timestamp()) // max(interval_seconds, 1)
    return (poll_number + node_id) % HEALTH_EVERY_POLLS == 0


_DONE = object()


def poll_concurrently(
    targets: Sequence[PollTarget],
    *,
    polled_at: datetime,
    concurrency: int = DEFAULT_CONCURRENCY,
    transport: httpx.AsyncBaseTransport | None = None,
    max_group: int = 1,
) -> Iterator[list[PollOutcome]]:
    """Yield the targets' ``PollOutcome``s as they complete, in lists (order not kept).

    Each list holds every outcome that was ready when the caller asked, up to
    ``max_group``: while the caller stores one list, the next one fills up, so a busy
    caller gets bigger groups (fewer round trips) and an idle one gets them at once.
    ``transport`` replaces the network (tests answer in-process); None in production.

    When the caller stops early (its task hit its Celery time limit, storing failed), the
    polls still running are cancelled rather than awaited.
    """
    results: queue.SimpleQueue[object] = queue.SimpleQueue()
    stopping = threading.Event()
    running: dict[str, object] = {}

    async def main() -> None:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        if stopping.is_set():
            return
        semaphore = asyncio.Semaphore(concurrency)
        async with AgentHttp(max_connections=concurrency, transport=transport) as http:

            async def one(target: PollTarget) -> None:
                async with semaphore:
                    results.put(await poll_node(http, target, polled_at=polled_at))

            await asyncio.gather(*(one(target) for target in targets))

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # handed to the caller's thread, re-raised there
            results.put(error)
        finally:
            results.put(_DONE)

    thread = threading.Thread(target=run, name="metering-poll", daemon=True)
    thread.start()
    done = False
    try:
        while not done:
            group: list[PollOutcome] = []
            item = results.get()
            while True:
                if item is _DONE:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                group.append(item)  # type: ignore[arg-type]
                if len(group) >= max_group:
                    break
                try:
                    item = results.get_nowait()
                except queue.Empty:
                    break
            if group:
                yield group
    finally:
        if not done:
            _cancel(stopping, running)
        thread.join()


def _cancel(stopping: threading.Event, running: dict[str, object]) -> None:
    """Stop ``poll_concurrently``'s loop from the caller's thread: before it starts (it
    sees ``stopping``) or while it runs (its main task is cancelled)."""
    stopping.set()
    loop, task = running.get("loop"), running.get("task")
    if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(task, asyncio.Task):
        with contextlib.suppress(RuntimeError):  # the loop already finished and closed
            loop.call_soon_threadsafe(task.cancel)
