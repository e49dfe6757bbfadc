"""Command line: ``python -m capacity.agent run|enroll``.

``run`` serves the protocol from the journal at ``--journal`` (key pair in
``JOURNAL.key``, enrollment state in ``JOURNAL.state.json``), recording either the
machine's GPUs through NVML or, with ``--simulate``, a deterministic simulated node.
It relays gateway-receipted inference to ``--engine-url`` (an OpenAI-compatible server
such as vLLM) or, in simulate mode without it, to the simulator's engine.
``enroll`` registers the agent with the platform and stores the poll token's hash and
the platform's receipt key.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from capacity.agent.arguments import (
    add_engine_flags,
    engine_settings,
    non_negative_int,
    platform_key,
    positive_int,
    window_seconds,
)
from capacity.agent.engine import Engine, SimulatedEngine
from capacity.agent.engine_http import HttpEngine
from capacity.agent.enrollment import EnrollmentError, enroll
from capacity.agent.identity import (
    EnrollmentState,
    IdentityError,
    key_path_for,
    load_or_create_private_key,
    state_path_for,
)
from capacity.agent.journal import Journal
from capacity.agent.nvml import NvmlRecorder, NvmlUnavailable, load_nvml, nvml_inventory
from capacity.agent.protocol import (
    GpuInfo,
    format_time,
    hash_token,
    public_key_b64,
)
from capacity.agent.receipts import public_key_from_b64
from capacity.agent.recorder import Recorder, SimulationRecorder, unix_ms_now
from capacity.agent.server import AgentService, create_app, serve
from capacity.agent.simulator import GPU_MODELS, SimulatedNode, simulated_gpus

DEFAULT_JOURNAL = "hashgrid-agent.sqlite3"


def _add_simulation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simulate", action="store_true", help="simulated GPUs, no NVML")
    parser.add_argument("--gpus", type=positive_int, help="simulated GPU count (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--gpu-model", choices=sorted(GPU_MODELS), default="h100")
    parser.add_argument("--node-id", help="node id (simulated GPU UUIDs derive from it too)")
    parser.add_argument("--journal", type=Path, default=Path(DEFAULT_JOURNAL))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m capacity.agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the agent protocol")
    _add_simulation_flags(run)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=9100)
    run.add_argument(
        "--poll-token", help="accept this bearer token (simulate mode; otherwise enroll)"
    )
    run.add_argument("--window-seconds", type=window_seconds, default=60)
    run.add_argument(
        "--backfill-windows",
        type=non_negative_int,
        default=0,
        help="start the simulated clock this many windows in the past",
    )
    run.add_argument(
        "--speed",
        type=positive_int,
        default=None,
        help="simulated seconds per real second while catching up (default: at once)",
    )
    run.add_argument(
        "--engine-url",
        help="OpenAI-compatible engine (e.g. vLLM) serving URL/v1/...; default in "
        "simulate mode: the simulator's engine; otherwise no inference",
    )
    run.add_argument(
        "--platform-key",
        type=platform_key,
        metavar="B64",
        help="the platform's receipt key (default: the one enrollment stored)",
    )
    add_engine_flags(run)

    enroll_cmd = commands.add_parser("enroll", help="register with the platform")
    _add_simulation_flags(enroll_cmd)
    enroll_cmd.add_argument("--platform", required=True, help="platform base URL")
    enroll_cmd.add_argument("--code", required=True, help="one-time enrollment code")
    enroll_cmd.add_argument("--url", required=True, help="URL the platform polls")
    return parser


def _is_simulated(args: argparse.Namespace) -> bool:
    """``--gpus`` implies ``--simulate``: only the simulator takes a GPU count."""
    return bool(args.simulate or args.gpus is not None)


def _simulated_node_key(args: argparse.Namespace) -> str:
    return str(args.node_id or f"sim-{args.seed}")


def _simulated_inventory(args: argparse.Namespace) -> list[GpuInfo]:
    gpus = simulated_gpus(
        seed=args.seed,
        node_key=_simulated_node_key(args),
        count=args.gpus or 8,
        model=args.gpu_model,
    )
    return [gpu.info() for gpu in gpus]


def command_run(args: argparse.Namespace) -> int:
    simulated = _is_simulated(args)
    if args.poll_token is not None and not simulated:
        print("error: --poll-token is for --simulate; enroll a real agent", file=sys.stderr)
        return 2
    if not simulated:
        try:
            load_nvml()  # fail before touching any file on a machine without NVIDIA GPUs
        except NvmlUnavailable as error:
            print(str(error), file=sys.stderr)
            return 2
    try:
        state = EnrollmentState.load(state_path_for(args.journal))
        private_key = load_or_create_private_key(key_path_for(args.journal))
    except IdentityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.poll_token is not None:
        token_sha256 = hash_token(args.poll_token)
    elif state is not None:
        token_sha256 = state.poll_token_sha256
    else:
        print("error: not enrolled: run `enroll` first (or --poll-token)", file=sys.stderr)
        return 2
    journal = Journal.open(args.journal)
    recorder: Recorder
    if simulated:
        node_key = _simulated_node_key(args)
        window_ms = args.window_seconds * 1000
        node = SimulatedNode(
            seed=args.seed,
            node_key=node_key,
            gpus=simulated_gpus(
                seed=args.seed, node_key=node_key, count=args.gpus or 8, model=args.gpu_model
            ),
            window_ms=window_ms,
        )
        recorder = SimulationRecorder(
            journal=journal,
            node=node,
            backfill_windows=args.backfill_windows,
            speed=args.speed,
            real_now_ms=unix_ms_now(),
        )
        default_node_id = node_key
    else:
        try:
            recorder = NvmlRecorder(journal=journal, window_seconds=args.window_seconds)
        except NvmlUnavailable as error:
            print(str(error), file=sys.stderr)
            return 2
        default_node_id = socket.gethostname()
    node_id = args.node_id or (state.node_id if state else None) or default_node_id
    receipt_key = args.platform_key or (state.platform_public_key if state else None)
    engine: Engine | None = None
    if args.engine_url:
        engine = HttpEngine(args.engine_url)
    elif simulated:
        engine = SimulatedEngine(settings=engine_settings(args))
    service = AgentService(
        node_id=node_id,
        private_key=private_key,
        token_sha256=token_sha256,
        recorder=recorder,
        platform_key=public_key_from_b64(receipt_key) if receipt_key else None,
        engine=engine,
    )
    if receipt_key is None:
        print("warning: no platform key: inference requests will be refused", file=sys.stderr)
    try:
        asyncio.run(
            serve(create_app(service), host=args.host, port=args.port, banner=f"agent {node_id}")
        )
    finally:
        journal.close()
    return 0


def command_enroll(args: argparse.Namespace) -> int:
    try:
        private_key = load_or_create_private_key(key_path_for(args.journal))
        gpus = _simulated_inventory(args) if _is_simulated(args) else nvml_inventory()
        result = enroll(
            platform_url=args.platform,
            code=args.code,
            public_key=public_key_b64(private_key),
            agent_url=args.url,
            gpus=gpus,
        )
    except (IdentityError, NvmlUnavailable, EnrollmentError) as error:
        print(f"enrollment failed: {error}", file=sys.stderr)
        return 1
    state_path = state_path_for(args.journal)
    EnrollmentState(
        poll_token_sha256=hash_token(result.poll_token),
        platform=args.platform,
        node_id=result.node_id or args.node_id,
        enrolled_at=format_time(datetime.now(tz=UTC)),
        platform_public_key=result.platform_public_key,
    ).save(state_path)
    print(
        f"enrolled node {result.node_id or '(unnamed)'} with {args.platform}: "
        f"{len(gpus)} GPU(s); poll token stored as SHA-256 in {state_path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return command_run(args)
    return command_enroll(args)


if __name__ == "__main__":
    sys.exit(main())
