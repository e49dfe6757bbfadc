"""What a partner runs on a real node, as the enrollment page lists it.

One source for the steps: the systemd unit shipped with the agent
(``capacity/agent/hashgrid-agent.service``) is shown as is, and the install and enroll
commands use the same paths (virtual environment, user, journal) that its ``ExecStart``
uses, so what the page says and what the service runs cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

UNIT_FILE = Path(__file__).resolve().parent / "agent" / "hashgrid-agent.service"
UNIT_NAME = "hashgrid-agent.service"
AGENT_USER = "hashgrid-agent"
AGENT_VENV = "/opt/hashgrid-agent"
AGENT_JOURNAL = "/var/lib/hashgrid-agent/hashgrid-agent.sqlite3"
AGENT_PORT = 9100


@dataclass(frozen=True)
class SetupStep:
    title: str
    explanation: str
    commands: str  # shell lines to run on the node, as root


@cache
def systemd_unit() -> str:
    return UNIT_FILE.read_text(encoding="utf-8")


def enroll_command(*, platform_url: str, code: str) -> str:
    return (
        f"python -m capacity.agent enroll --platform {platform_url} "
        f"--code {code} --url http://<node-host>:{AGENT_PORT}"
    )


def enrollment_steps(*, platform_url: str, code: str) -> list[SetupStep]:
    """The four steps from a bare GPU server to a node the platform polls."""
    python = f"{AGENT_VENV}/bin/python"
    return [
        SetupStep(
            title="Install the agent",
            explanation="A Python 3.11+ virtual environment with the agent, and a user of "
            "its own. The NVIDIA driver must be installed (the agent reads the GPUs "
            "through NVML).",
            commands=(
                f"useradd --system --home /var/lib/hashgrid-agent --shell /usr/sbin/nologin "
                f"{AGENT_USER}\n"
                f"install -d -o {AGENT_USER} -g {AGENT_USER} /var/lib/hashgrid-agent\n"
                f"python3 -m venv {AGENT_VENV}\n"
                f"{AGENT_VENV}/bin/pip install hashgrid"
            ),
        ),
        SetupStep(
            title="Enroll with the code",
            explanation="Once, as the agent's user: it makes the node's key pair, reports "
            "its GPUs and stores the poll token's hash next to the journal. Replace "
            "<node-host> with the address the platform reaches this node at.",
            commands=(
                f"sudo -u {AGENT_USER} {python} -m capacity.agent enroll "
                f"--journal {AGENT_JOURNAL} --platform {platform_url} --code {code} "
                f"--url http://<node-host>:{AGENT_PORT}"
            ),
        ),
        SetupStep(
            title="Run it as a service",
            explanation=f"Save the unit below as /etc/systemd/system/{UNIT_NAME}, then "
            "start it; it restarts on failure and at boot.",
            commands=(
                f"systemctl daemon-reload\n"
                f"systemctl enable --now {UNIT_NAME}\n"
                f"systemctl status {UNIT_NAME}"
            ),
        ),
        SetupStep(
            title="Let the platform in",
            explanation=f"Open TCP port {AGENT_PORT} to the platform only. The node turns "
            "online on this page after the first successful poll (within a minute).",
            commands=f"journalctl -u {UNIT_NAME} -f",
        ),
    ]
