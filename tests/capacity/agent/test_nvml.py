"""Without NVML the agent must say so plainly and point at ``--simulate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capacity.agent.__main__ import main
from capacity.agent.nvml import NvmlUnavailable, load_nvml
from tests.capacity.agent.conftest import REPO_ROOT


def _nvml_works() -> bool:
    try:
        load_nvml()
    except NvmlUnavailable:
        return False
    return True


pytestmark = pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVIDIA driver")


def test_run_without_nvml_exits_with_a_clear_message(tmp_path: Path) -> None:
    journal = tmp_path / "agent.sqlite3"

    result = subprocess.run(
        [sys.executable, "-m", "capacity.agent", "run", "--journal", str(journal)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("NVML not available: ")
    assert message.endswith("(use --simulate)")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created on a machine without GPUs


def test_poll_token_flag_is_refused_outside_simulate_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--journal", str(tmp_path / "j"), "--poll-token", "t"]) == 2
    assert capsys.readouterr().err == (
        "error: --poll-token is for --simulate; enroll a real agent\n"
    )
