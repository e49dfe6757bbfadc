"""Command line: ``python -m capacity.agent enroll|run`` (``--help`` is for operators).

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
    add_simulated_runtime_flags,
    engine_settings,
    non_negative_int,
    platform_key,
    positive_int,
    simulated_settings,
    window_seconds,
)
from capacity.agent.assignments import AssignmentStore
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
from capacity.agent.runtime.base import Runtime
from capacity.agent.runtime.simulated import SimulatedRuntime
from capacity.agent.server import AgentService, create_app, serve
from capacity.agent.simulator import GPU_MODELS, SimulatedNode, simulated_gpus
from capacity.agent.workloads import WorkloadSupervisor

DEFAULT_JOURNAL = "hashgrid-agent.sqlite3"
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
# Listening addresses that name no address buyers could connect to.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104


DESCRIPTION = """\
The Hashgrid node agent. It runs on each GPU server a partner contributes: it records
every GPU's usage and health (through NVML, from the NVIDIA driver) in a journal on
disk, and serves them to the Hashgrid platform, which polls it over HTTP. It also
relays buyers' inference requests, signed by the platform's gateway, to the node's
inference engine (vLLM or any OpenAI-compatible server), and runs the workloads the
platform assigns to its GPUs (buyers' containers, model deployments) through Docker.

Set a node up in three steps (the node's page on the platform shows them with its
code, and capacity/agent/hashgrid-agent.service is the systemd unit):
  1. install:  python3 -m venv /opt/hashgrid-agent && /opt/hashgrid-agent/bin/pip install hashgrid
  2. enroll:   python -m capacity.agent enroll --platform URL --code CODE --url http://HOST:9100
  3. run:      python -m capacity.agent run --host 0.0.0.0  (as a service: systemctl enable --now hashgrid-agent)
"""

EPILOG = """\
examples:
  # once, with the one-time code from the node's page (valid 24 hours):
  python -m capacity.agent enroll --journal /var/lib/hashgrid-agent/hashgrid-agent.sqlite3 \\
      --platform https://hashgrid.example.com --code 7KQ2-MX9D-4TPA --url http://203.0.113.7:9100
  # then serve the platform's polls (what the systemd unit runs):
  python -m capacity.agent run --host 0.0.0.0 --port 9100 \\
      --journal /var/lib/hashgrid-agent/hashgrid-agent.sqlite3
  # with an inference engine next to the agent:
  python -m capacity.agent run --host 0.0.0.0 --engine-url http://127.0.0.1:8000 ...
  # try it without GPUs (a deterministic simulated node, no enrollment):
  python -m capacity.agent run --simulate --gpus 4 --poll-token dev-token

files: the journal (usage not yet collected, kept across restarts), JOURNAL.key (the
node's Ed25519 key: keep it private), JOURNAL.state.json (enrollment: the poll token's
hash and the platform's receipt key), JOURNAL.assignments.json (the workloads the
platform last assigned, as it signed them). Use the same --journal for enroll and run.
"""

JOURNAL_HELP = (
    "the agent's journal (SQLite); its key and enrollment files sit next to it "
    f"(default ./{DEFAULT_JOURNAL}; the service uses /var/lib/hashgrid-agent/)"
)


def _add_simulation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--journal", type=Path, default=Path(DEFAULT_JOURNAL), help=JOURNAL_HELP)
    group = parser.add_argument_group("simulation (development and tests: no GPUs needed)")
    group.add_argument("--simulate", action="store_true", help="simulated GPUs instead of NVML")
    group.add_argument(
        "--gpus", type=positive_int, help="simulated GPU count (implies --simulate; default 8)"
    )
    group.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    group.add_argument(
        "--gpu-model", choices=sorted(GPU_MODELS), default="h100", help="simulated GPU model"
    )
    group.add_argument(
        "--node-id",
        help="the node's id in /v1/info (default: the enrolled one, else the host name); "
        "simulated GPU UUIDs derive from it",
    )


def _formatter(prog: str) -> argparse.HelpFormatter:
    """The top-level help keeps its layout (steps, examples)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _command_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capacity.agent",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{enroll,run}")

    enroll_cmd = commands.add_parser(
        "enroll",
        help="register this node with the platform (once, with the code from its page)",
        description="Register this node with the platform: make the node's key pair, "
        "report its GPUs and store the poll token's hash next to the journal. Run once, "
        "as the user the service runs as, with the same --journal.",
        formatter_class=_command_formatter,
    )
    enroll_cmd.add_argument(
        "--platform", required=True, help="the platform's URL, e.g. https://hashgrid.example.com"
    )
    enroll_cmd.add_argument(
        "--code", required=True, help="the one-time enrollment code shown on the node's page"
    )
    enroll_cmd.add_argument(
        "--url",
        required=True,
        help="the URL the platform polls this agent at, e.g. http://203.0.113.7:9100",
    )
    _add_simulation_flags(enroll_cmd)

    run = commands.add_parser(
        "run",
        help="serve the platform's polls (what the systemd service runs)",
        description="Record the GPUs' usage and health into the journal and serve them "
        "to the platform. Needs a prior `enroll` (or --poll-token with --simulate).",
        formatter_class=_command_formatter,
    )
    run.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 so the platform can reach it)",
    )
    run.add_argument("--port", type=int, default=9100, help="port to listen on (default 9100)")
    run.add_argument(
        "--engine-url",
        metavar="URL",
        help="OpenAI-compatible engine (e.g. vLLM) serving URL/v1/...; default in "
        "simulate mode: the simulator's engine; otherwise no inference",
    )
    run.add_argument(
        "--platform-key",
        type=platform_key,
        metavar="B64",
        help="the platform's receipt key (default: the one enrollment stored)",
    )
    run.add_argument(
        "--window-seconds",
        type=window_seconds,
        default=60,
        metavar="S",
        help="length of one usage record (default 60, the most)",
    )
    workloads = run.add_argument_group(
        "workloads (what the platform assigns to the GPUs; docs/workloads.md)"
    )
    workloads.add_argument(
        "--runtime",
        choices=("docker", "simulated"),
        help="how assigned workloads run: docker (the Docker Engine API with the NVIDIA "
        "container toolkit; the default) or simulated (the default with --simulate)",
    )
    workloads.add_argument(
        "--docker-url",
        default=DEFAULT_DOCKER_URL,
        metavar="URL",
        help=f"the Docker Engine API: unix:///path/to/docker.sock or http://HOST:PORT "
        f"(default {DEFAULT_DOCKER_URL}; the agent's user must be allowed to use it)",
    )
    workloads.add_argument(
        "--workload-host",
        metavar="HOST",
        help="the address buyers connect to for their containers' ports (default: --host, "
        "or the machine's host name when --host is 0.0.0.0)",
    )
    workloads.add_argument(
        "--platform-node-id",
        type=positive_int,
        metavar="ID",
        help="refuse assignments for another platform node id (default: the enrolled one "
        "when it is a number; the agent's public key is checked always)",
    )
    add_simulated_runtime_flags(run)
    _add_simulation_flags(run)
    sim = run.add_argument_group("simulated clock")
    sim.add_argument(
        "--poll-token", help="accept this bearer token (simulate mode only; otherwise enroll)"
    )
    sim.add_argument(
        "--backfill-windows",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="start the simulated clock this many windows in the past",
    )
    sim.add_argument(
        "--speed",
        type=positive_int,
        default=None,
        help="simulated seconds per real second while catching up (default: at once)",
    )
    add_engine_flags(run)
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
        print(
            "warning: no platform key: inference requests and assignments will be refused",
            file=sys.stderr,
        )
    runtime_name = args.runtime or ("simulated" if simulated else "docker")
    workload_host = args.workload_host or (
        socket.gethostname() if args.host in WILDCARD_HOSTS else args.host
    )
    runtime: Runtime
    if runtime_name == "simulated":
        runtime = SimulatedRuntime(settings=simulated_settings(args, host=workload_host))
    else:
        from capacity.agent.runtime.docker import DockerRuntime

        runtime = DockerRuntime(docker_url=args.docker_url, host=workload_host)
    enrolled_node = state.node_id if state else None
    platform_node_id = args.platform_node_id or (
        int(enrolled_node) if enrolled_node and enrolled_node.isdigit() else None
    )
    supervisor = WorkloadSupervisor(
        runtime=runtime,
        store=AssignmentStore(AssignmentStore.path_for(args.journal)),
        platform_key=service.platform_key,
        agent_public_key=public_key_b64(private_key),
        gpu_uuids=[gpu.uuid for gpu in recorder.inventory()],
        platform_node_id=platform_node_id,
    )
    supervisor.load()
    service.workloads = supervisor
    if isinstance(recorder, SimulationRecorder):
        recorder.node.coverage = supervisor.coverage
    elif isinstance(recorder, NvmlRecorder):
        recorder.coverage = supervisor.coverage
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
