"""The Docker runtime: assigned workloads as containers, through the Docker Engine API.

One adapter (``DockerEngine``) speaks the few Engine API endpoints the agent needs, over
the daemon's Unix socket or TCP, with explicit timeouts, and maps failures to
``DockerError`` (the Engine's ``{"message": ...}``):

- ``POST /images/create?fromImage=&tag=`` pulls (a stream of JSON progress lines, an
  error possibly among them);
- ``POST /containers/create?name=hashgrid-<assignment id>`` with ``Image``, ``Env``
  (the buyer's environment plus ``HASHGRID_SSH_PUBLIC_KEY``), ``ExposedPorts``,
  ``Labels`` and ``HostConfig`` (``PortBindings`` from ``FIRST_HOST_PORT`` up and
  ``DeviceRequests`` naming the assignment's GPU UUIDs for the NVIDIA driver);
- ``POST /containers/{id}/start``, ``GET /containers/{id}/json``,
  ``POST /containers/{id}/stop``, ``DELETE /containers/{id}``.

``DockerRuntime`` runs one task per workload while it comes up (a node holds a handful),
and ``refresh`` inspects running containers so one that exits shows as failed with its
exit code (or stopped, for code 0).

Whose fault a failure is (``fault``, docs/workloads.md "Whose fault"): the buyer's when
the Engine refuses to pull their image as unknown or private (404, 401, 403) or their
container exits on its own; the node's for everything else (a pull that fails for want of
network or disk, a container that cannot be created or started, one that disappears),
and always for a deployment, whose image and engine are the catalogue's. A container is named after its assignment, so an
agent restarted while it ran adopts it instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from capacity.agent.assignments import Assignment
from capacity.agent.recorder import unix_ms_now
from capacity.agent.runtime.base import (
    BUYER_FAULT,
    FIRST_HOST_PORT,
    NODE_FAULT,
    STOPPED_RETENTION_MS,
    RunningSpan,
    WorkloadStatus,
)

API_VERSION = "v1.43"
# Pulls may take minutes for large images; everything else answers quickly.
DOCKER_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PULL_TIMEOUT = httpx.Timeout(None, connect=5.0)
STOP_GRACE_SECONDS = 10
CONTAINER_PREFIX = "hashgrid-"
ASSIGNMENT_LABEL = "io.hashgrid.assignment"
SSH_KEY_ENV = "HASHGRID_SSH_PUBLIC_KEY"
# What serves a deployment's model: an OpenAI-compatible engine on this port.
DEPLOYMENT_IMAGE = "vllm/vllm-openai:v0.6.4"
DEPLOYMENT_PORT = 8000
# The Engine's answers to a pull of an image that does not exist or is private.
_IMAGE_REFUSED = frozenset({401, 403, 404})


class DockerError(RuntimeError):
    """The Engine refused or could not be reached; ``message`` is the Engine's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"docker: {status} {message}")
        self.status = status
        self.message = message


def split_image(reference: str) -> tuple[str, str]:
    """``fromImage`` and ``tag`` for a reference (``latest`` when none; a digest stays whole)."""
    if "@" in reference:
        return reference, ""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return reference, "latest"
    return name, tag


def parse_docker_time(text: str) -> int | None:
    """Unix ms of an Engine timestamp (RFC 3339 with nanoseconds); None for the zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head + "+00:00")
    millis = int((fraction + "000")[:3]) if fraction else 0
    return int(moment.timestamp()) * 1000 + millis


class DockerEngine:
    """The Engine API adapter: the only code here that speaks HTTP to Docker."""

    def __init__(self, docker_url: str) -> None:
        parts = urlsplit(docker_url)
        if parts.scheme == "unix":
            transport = httpx.AsyncHTTPTransport(uds=parts.path)
            base_url = "http://docker"
        elif parts.scheme in ("http", "tcp"):
            transport = httpx.AsyncHTTPTransport()
            base_url = f"http://{parts.netloc}"
        else:
            raise ValueError(f"docker URL must be unix:///path or http://host:port: {docker_url}")
        self._client = httpx.AsyncClient(
            transport=transport, base_url=f"{base_url}/{API_VERSION}", timeout=DOCKER_TIMEOUT
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise DockerError(0, f"cannot reach the Docker Engine: {error}") from error
        if response.status_code >= 400:
            try:
                message = str(response.json().get("message", response.text))
            except (ValueError, AttributeError):
                message = response.text
            raise DockerError(response.status_code, message)
        return response

    async def pull(self, image: str) -> None:
        from_image, tag = split_image(image)
        params = {"fromImage": from_image, **({"tag": tag} if tag else {})}
        try:
            async with self._client.stream(
                "POST", "/images/create", params=params, timeout=PULL_TIMEOUT
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    try:
                        message = str(json.loads(body).get("message", body.decode()))
                    except (ValueError, AttributeError):
                        message = body.decode("utf-8", "replace")
                    raise DockerError(response.status_code, message)
                async for line in response.aiter_lines():
                    progress = json.loads(line) if line.strip() else {}
                    if "error" in progress:
                        raise DockerError(500, str(progress["error"]))
        except httpx.HTTPError as error:
            raise DockerError(0, f"cannot reach the Docker Engine: {error}") from error

    async def create(self, name: str, config: dict[str, object]) -> str:
        response = await self._call(
            "POST", "/containers/create", params={"name": name}, json=config
        )
        return str(response.json()["Id"])

    async def start(self, container: str) -> None:
        await self._call("POST", f"/containers/{container}/start")  # 304: already started

    async def inspect(self, container: str) -> dict[str, Any] | None:
        try:
            response = await self._call("GET", f"/containers/{container}/json")
        except DockerError as error:
            if error.status == 404:
                return None
            raise
        return dict(response.json())

    async def stop(self, container: str) -> None:
        await self._call(
            "POST",
            f"/containers/{container}/stop",
            params={"t": STOP_GRACE_SECONDS},
            timeout=httpx.Timeout(STOP_GRACE_SECONDS + 30.0, connect=5.0),
        )

    async def remove(self, container: str) -> None:
        await self._call("DELETE", f"/containers/{container}")


def container_config(assignment: Assignment, host_ports: dict[int, int]) -> dict[str, object]:
    """``POST /containers/create``'s body for an assignment."""
    if assignment.kind == "deployment":
        image = DEPLOYMENT_IMAGE
        env = [f"{SSH_KEY_ENV}="]
        command: list[str] | None = [
            "--model",
            assignment.model,
            "--served-model-name",
            assignment.served_model_name,
        ]
    else:
        image = assignment.image
        env = [f"{name}={value}" for name, value in sorted(assignment.env.items())]
        env.append(f"{SSH_KEY_ENV}={assignment.ssh_public_key}")
        command = None
    config: dict[str, object] = {
        "Image": image,
        "Env": env,
        "Labels": {ASSIGNMENT_LABEL: assignment.id},
        "ExposedPorts": {f"{port}/tcp": {} for port in host_ports},
        "HostConfig": {
            "PortBindings": {
                f"{port}/tcp": [{"HostIp": "", "HostPort": str(host_port)}]
                for port, host_port in host_ports.items()
            },
            "DeviceRequests": [
                {"Driver": "nvidia", "DeviceIDs": list(assignment.gpus), "Capabilities": [["gpu"]]}
            ],
            "RestartPolicy": {"Name": "no"},
        },
    }
    if command is not None:
        config["Cmd"] = command
    return config


def published_ports(inspected: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port from ``NetworkSettings.Ports`` (TCP, first binding)."""
    ports: dict[int, int] = {}
    for key, bindings in ((inspected.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, protocol = str(key).partition("/")
        if protocol == "tcp" and bindings:
            ports[int(port)] = int(bindings[0]["HostPort"])
    return ports


@dataclass
class DockerWorkload:
    assignment: Assignment
    host_ports: dict[int, int]
    state: str
    since_ms: int
    reason: str = ""
    fault: str = ""
    container: str = ""
    ports: dict[int, int] = field(default_factory=dict)
    running_from_ms: int | None = None
    running_until_ms: int | None = None
    task: asyncio.Task[None] | None = None
    # Set when the platform removed it: listed as stopped until retention ends.
    removed: bool = False


class DockerRuntime:
    def __init__(self, *, docker_url: str, host: str) -> None:
        self.engine = DockerEngine(docker_url)
        self.host = host
        self.version = 0
        self.workloads: dict[str, DockerWorkload] = {}
        self.past_spans: list[RunningSpan] = []
        self._ports_in_use: set[int] = set()

    def _move(
        self, workload: DockerWorkload, state: str, *, reason: str = "", fault: str = ""
    ) -> None:
        workload.state, workload.reason, workload.since_ms = state, reason, unix_ms_now()
        workload.fault = fault
        self.version += 1

    @staticmethod
    def _own_fault(workload: DockerWorkload) -> str:
        """Whose fault what the container itself did is: the buyer's image, or the
        catalogue's engine for a deployment (the node's)."""
        return NODE_FAULT if workload.assignment.kind == "deployment" else BUYER_FAULT

    def _host_ports(self, wanted: list[int]) -> dict[int, int]:
        host_ports, candidate = {}, FIRST_HOST_PORT
        for port in wanted:
            while candidate in self._ports_in_use:
                candidate += 1
            host_ports[port] = candidate
            self._ports_in_use.add(candidate)
        return host_ports

    async def start(self, assignment: Assignment) -> None:
        previous = self.workloads.get(assignment.id)
        if previous is not None and not previous.removed:
            return
        wanted = [DEPLOYMENT_PORT] if assignment.kind == "deployment" else list(assignment.ports)
        workload = DockerWorkload(
            assignment=assignment,
            host_ports=self._host_ports(wanted),
            state="pending",
            since_ms=unix_ms_now(),
        )
        self.workloads[assignment.id] = workload
        self.version += 1
        workload.task = asyncio.create_task(self._bring_up(workload))

    async def _bring_up(self, workload: DockerWorkload) -> None:
        assignment = workload.assignment
        name = CONTAINER_PREFIX + assignment.id
        try:
            existing = await self.engine.inspect(name)
            if existing is None:
                self._move(workload, "pulling")
                image = DEPLOYMENT_IMAGE if assignment.kind == "deployment" else assignment.image
                try:
                    await self.engine.pull(image)
                except DockerError as error:
                    refused = error.status in _IMAGE_REFUSED
                    fault = self._own_fault(workload) if refused else NODE_FAULT
                    self._move(
                        workload, "failed", reason=f"pull failed: {error.message}", fault=fault
                    )
                    return
                self._move(workload, "starting")
                workload.container = await self.engine.create(
                    name, container_config(assignment, workload.host_ports)
                )
            else:  # left running by an agent before a restart: adopt it
                self._move(workload, "starting")
                workload.container = str(existing["Id"])
            await self.engine.start(workload.container)
            inspected = await self.engine.inspect(workload.container)
        except DockerError as error:
            self._move(
                workload, "failed", reason=f"start failed: {error.message}", fault=NODE_FAULT
            )
            return
        self._observe(workload, inspected)

    def _observe(self, workload: DockerWorkload, inspected: dict[str, Any] | None) -> None:
        """Take the state an inspection shows (None: the container is gone)."""
        if inspected is None:
            self._end_span(workload, unix_ms_now())
            self._move(workload, "failed", reason="the container disappeared", fault=NODE_FAULT)
            return
        state = inspected.get("State") or {}
        if state.get("Running"):
            if workload.state != "running":
                workload.ports = published_ports(inspected)
                started = parse_docker_time(str(state.get("StartedAt", ""))) or unix_ms_now()
                workload.running_from_ms = started
                self._move(workload, "running")
                workload.since_ms = started
            return
        finished = parse_docker_time(str(state.get("FinishedAt", ""))) or unix_ms_now()
        self._end_span(workload, finished)
        exit_code = int(state.get("ExitCode", 0))
        detail = str(state.get("Error") or "")
        fault = self._own_fault(workload)
        if exit_code == 0 and not detail:
            self._move(workload, "stopped", reason="exited with code 0", fault=fault)
        else:
            reason = f"exited with code {exit_code}" + (f": {detail}" if detail else "")
            self._move(workload, "failed", reason=reason, fault=fault)
        workload.since_ms = finished

    def _end_span(self, workload: DockerWorkload, at_ms: int) -> None:
        if workload.running_from_ms is not None and workload.running_until_ms is None:
            workload.running_until_ms = at_ms

    async def stop(self, assignment_id: str) -> None:
        workload = self.workloads.get(assignment_id)
        if workload is None or workload.removed:
            return
        workload.removed = True
        if workload.task is not None and not workload.task.done():
            workload.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await workload.task
        self._move(workload, "stopping")
        name = workload.container or CONTAINER_PREFIX + assignment_id
        try:
            with contextlib.suppress(DockerError):
                await self.engine.stop(name)  # 304 when it was not running
            await self.engine.remove(name)
        except DockerError as error:
            if error.status != 404:
                self._move(
                    workload, "failed", reason=f"stop failed: {error.message}", fault=NODE_FAULT
                )
                return
        self._end_span(workload, unix_ms_now())
        self._ports_in_use.difference_update(workload.host_ports.values())
        self._move(workload, "stopped")

    async def refresh(self) -> None:
        now_ms = unix_ms_now()
        for assignment_id, workload in list(self.workloads.items()):
            if workload.removed and workload.state == "stopped":
                if now_ms >= workload.since_ms + STOPPED_RETENTION_MS:
                    self.past_spans.extend(self._spans_of(workload))
                    del self.workloads[assignment_id]
                    self.version += 1
            elif workload.state == "running" and not workload.removed:
                try:
                    inspected = await self.engine.inspect(workload.container)
                except DockerError:
                    continue  # the Engine is busy or away: look again next time
                self._observe(workload, inspected)

    async def close(self) -> None:
        for workload in self.workloads.values():
            if workload.task is not None:
                workload.task.cancel()
        await self.engine.close()

    def status(self, now_ms: int) -> list[WorkloadStatus]:
        statuses = []
        for workload in self.workloads.values():
            assignment = workload.assignment
            running = workload.state == "running"
            ports = dict(workload.ports) if running else {}
            endpoint = ""
            if running and assignment.kind == "deployment" and DEPLOYMENT_PORT in ports:
                endpoint = f"http://{self.host}:{ports.pop(DEPLOYMENT_PORT)}/v1"
            statuses.append(
                WorkloadStatus(
                    assignment.id,
                    workload.state,
                    workload.since_ms,
                    assignment.gpus,
                    reason=workload.reason,
                    fault=workload.fault,
                    host=self.host if running else "",
                    ports=ports,
                    endpoint=endpoint,
                )
            )
        return sorted(statuses, key=lambda s: s.id)

    def next_change_ms(self, now_ms: int) -> int | None:
        return None  # changes come from tasks and refreshes, each bumping ``version``

    def _spans_of(self, workload: DockerWorkload) -> list[RunningSpan]:
        if workload.running_from_ms is None:
            return []
        return [
            RunningSpan(
                workload.assignment.id,
                workload.assignment.gpus,
                workload.running_from_ms,
                workload.running_until_ms,
            )
        ]

    def spans(self) -> list[RunningSpan]:
        spans = list(self.past_spans)
        for workload in self.workloads.values():
            spans.extend(self._spans_of(workload))
        return spans
