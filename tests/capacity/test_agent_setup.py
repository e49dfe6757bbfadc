"""A real node's setup: the shipped systemd unit, the enrollment page's steps and the
agent's --help agree with the agent's own command line."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

from capacity import agent_setup
from capacity.agent.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(agent_setup.systemd_unit())
    return parser


def test_the_unit_ships_in_the_agent_package_and_runs_the_agent_as_its_user():
    assert agent_setup.UNIT_FILE == ROOT / "capacity" / "agent" / "hashgrid-agent.service"
    unit = _unit()
    service = unit["Service"]
    assert (service["User"], service["Group"]) == ("hashgrid-agent", "hashgrid-agent")
    assert (service["Restart"], service["RestartSec"]) == ("always", "5")
    assert service["StateDirectory"] == "hashgrid-agent"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    command = shlex.split(service["ExecStart"])
    assert command[:3] == ["/opt/hashgrid-agent/bin/python", "-m", "capacity.agent"]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.host, args.port) == ("run", "0.0.0.0", 9100)  # noqa: S104
    assert args.journal == Path(agent_setup.AGENT_JOURNAL)
    assert (args.simulate, args.gpus, args.poll_token) == (False, None, None)


def test_the_steps_enroll_with_the_journal_the_service_runs_from():
    steps = agent_setup.enrollment_steps(platform_url="https://hashgrid.example", code="K7QM-3XPA")
    assert [step.title for step in steps] == [
        "Install the agent",
        "Enroll with the code",
        "Run it as a service",
        "Let the platform in",
    ]
    assert steps[0].commands.splitlines()[-1] == "/opt/hashgrid-agent/bin/pip install hashgrid"
    enroll = shlex.split(steps[1].commands.replace("<node-host>", "203.0.113.7"))
    assert enroll[:6] == [
        "sudo",
        "-u",
        "hashgrid-agent",
        "/opt/hashgrid-agent/bin/python",
        "-m",
        "capacity.agent",
    ]
    args = build_parser().parse_args(enroll[6:])
    assert (args.command, args.platform, args.code, args.url) == (
        "enroll",
        "https://hashgrid.example",
        "K7QM-3XPA",
        "http://203.0.113.7:9100",
    )
    assert args.journal == Path(agent_setup.AGENT_JOURNAL)
    assert steps[2].commands.splitlines() == [
        "systemctl daemon-reload",
        "systemctl enable --now hashgrid-agent.service",
        "systemctl status hashgrid-agent.service",
    ]


def test_help_is_written_for_an_operator():
    result = subprocess.run(
        [sys.executable, "-m", "capacity.agent", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = result.stdout
    assert text.startswith("usage: python -m capacity.agent [-h] {enroll,run} ...\n")
    assert "The Hashgrid node agent. It runs on each GPU server a partner contributes" in text
    assert "enroll      register this node with the platform" in text
    assert "run         serve the platform's polls (what the systemd service runs)" in text
    assert "examples:\n" in text
    assert "python -m capacity.agent run --simulate --gpus 4 --poll-token dev-token" in text
    run_help = subprocess.run(
        [sys.executable, "-m", "capacity.agent", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--host HOST" in run_help and "0.0.0.0 so the platform can reach it" in run_help
    assert "simulation (development and tests: no GPUs needed):" in run_help
