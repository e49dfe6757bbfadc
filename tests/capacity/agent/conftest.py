"""Start real agents and fleets as subprocesses on free ports; stop them afterwards."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A ``python -m ...`` child serving HTTP on ``port``."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, *args], cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"exited {self.popen.returncode}: {self.log.read_text()}")
            try:
                httpx.get(self.url + "/", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"not listening after 15 s: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the harshest restart, nothing gets flushed on the way out."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


class Launcher:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[Process] = []

    def agent(self, journal: Path, *flags: str, port: int | None = None) -> Process:
        port = port or free_port()
        args = ["-m", "capacity.agent", "run", "--port", str(port), "--journal", str(journal)]
        return self._start([*args, *flags], port)

    def fleet(self, *flags: str) -> Process:
        port = free_port()
        return self._start(["-m", "capacity.agent.fleet", "--port", str(port), *flags], port)

    def docker_engine_fake(self, *flags: str) -> Process:
        port = free_port()
        return self._start(["-m", "devtools.docker_engine_fake", "--port", str(port), *flags], port)

    def _start(self, args: list[str], port: int) -> Process:
        process = Process(args, port, self.directory / f"process-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launched = Launcher(tmp_path)
    yield launched
    launched.stop_all()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launched = Launcher(tmp_path_factory.mktemp("agents"))
    yield launched
    launched.stop_all()
