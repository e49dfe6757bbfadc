"""The Docker runtime against ``devtools.docker_engine_fake`` (the Engine API's documented
shapes), checking what the fake stored with exact values, and the agent driving it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from capacity.agent.assignments import Assignment
from capacity.agent.runtime.docker import DockerRuntime, split_image
from tests.capacity.agent.assigning import body, container, put, watch_states
from tests.capacity.agent.conftest import Launcher, Process
from tests.capacity.agent.receipting import raw_public_b64

GPU_A = "GPU-11111111-2222-3333-4444-555555555555"
GPU_B = "GPU-66666666-7777-8888-9999-000000000000"
IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
MISSING = "registry.example.com/nobody/missing:1"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuyer buyer@laptop"
JOB = "f" * 32
# How the Engine shows a port published on every address of the host.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104


def _assignment(image: str = IMAGE, assignment_id: str = JOB) -> Assignment:
    return Assignment(
        id=assignment_id,
        kind="container",
        gpus=(GPU_A, GPU_B),
        image=image,
        ports=(22, 8888),
        env={"JUPYTER_TOKEN": "s3cret"},
        ssh_public_key=SSH_KEY,
    )


@pytest.fixture
def engine(launcher: Launcher) -> Process:
    return launcher.docker_engine_fake("--missing-image", MISSING)


def _fake_state(engine: Process) -> dict[str, Any]:
    return dict(httpx.get(f"{engine.url}/_fake/state").json())


async def _until(runtime: DockerRuntime, assignment_id: str, states: set[str]) -> Any:
    for _ in range(200):
        await runtime.refresh()
        (status,) = [s for s in runtime.status(0) if s.id == assignment_id] or [None]
        if status is not None and status.state in states:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"{assignment_id} never reached {states}: {runtime.status(0)}")


def test_split_image_reads_docker_references() -> None:
    assert split_image(IMAGE) == ("pytorch/pytorch", "2.5.1-cuda12.4-cudnn9-runtime")
    assert split_image("ubuntu") == ("ubuntu", "latest")
    assert split_image("registry:5000/team/app") == ("registry:5000/team/app", "latest")
    assert split_image("registry:5000/app:1.2") == ("registry:5000/app", "1.2")
    assert split_image("app@sha256:" + "a" * 64) == ("app@sha256:" + "a" * 64, "")


def test_a_container_runs_on_its_gpus_with_ports_env_and_the_ssh_key(engine: Process) -> None:
    async def scenario() -> Any:
        runtime = DockerRuntime(docker_url=engine.url, host="203.0.113.7")
        await runtime.start(_assignment())
        running = await _until(runtime, JOB, {"running", "failed"})
        await runtime.close()
        return running

    running = asyncio.run(scenario())

    assert (running.state, running.reason, running.host) == ("running", "", "203.0.113.7")
    assert running.ports == {22: 40000, 8888: 40001}
    assert running.to_wire()["connection"] == {
        "host": "203.0.113.7",
        "ports": {"22": 40000, "8888": 40001},
        "endpoint": "",
    }
    state = _fake_state(engine)
    assert state["images"] == [IMAGE]
    (stored,) = state["containers"]
    assert stored["Name"] == f"/hashgrid-{JOB}"
    assert stored["Config"] == {
        "Image": IMAGE,
        "Env": ["JUPYTER_TOKEN=s3cret", f"HASHGRID_SSH_PUBLIC_KEY={SSH_KEY}"],
        "Cmd": None,
        "Labels": {"io.hashgrid.assignment": JOB},
        "ExposedPorts": {"22/tcp": {}, "8888/tcp": {}},
    }
    assert stored["HostConfig"] == {
        "PortBindings": {
            "22/tcp": [{"HostIp": "", "HostPort": "40000"}],
            "8888/tcp": [{"HostIp": "", "HostPort": "40001"}],
        },
        "DeviceRequests": [
            {"Driver": "nvidia", "DeviceIDs": [GPU_A, GPU_B], "Capabilities": [["gpu"]]}
        ],
        "RestartPolicy": {"Name": "no"},
    }
    assert (stored["State"]["Status"], stored["State"]["Running"]) == ("running", True)
    assert stored["NetworkSettings"]["Ports"] == {
        "22/tcp": [{"HostIp": ANY_ADDRESS, "HostPort": "40000"}],
        "8888/tcp": [{"HostIp": ANY_ADDRESS, "HostPort": "40001"}],
    }
    container_id = stored["Id"]
    # Its first calls (the launcher's probe aside; later ones are the refreshes' inspects).
    assert [call for call in state["calls"] if call != "GET /"][:5] == [
        f"GET /v1.43/containers/hashgrid-{JOB}/json",
        "POST /v1.43/images/create",
        "POST /v1.43/containers/create",
        f"POST /v1.43/containers/{container_id}/start",
        f"GET /v1.43/containers/{container_id}/json",
    ]


def test_stopping_stops_and_removes_the_container_and_frees_its_ports(engine: Process) -> None:
    async def scenario() -> tuple[Any, Any]:
        runtime = DockerRuntime(docker_url=engine.url, host="203.0.113.7")
        await runtime.start(_assignment())
        await _until(runtime, JOB, {"running"})
        await runtime.stop(JOB)
        stopped = next(s for s in runtime.status(0) if s.id == JOB)
        other = "0" * 32
        await runtime.start(_assignment(assignment_id=other))
        again = await _until(runtime, other, {"running"})
        spans = runtime.spans()
        await runtime.close()
        return stopped, (again, spans)

    stopped, (again, spans) = asyncio.run(scenario())

    assert (stopped.state, stopped.reason, stopped.ports) == ("stopped", "", {})
    assert again.ports == {22: 40000, 8888: 40001}
    job_span = next(span for span in spans if span.assignment_id == JOB)
    assert job_span.end_ms is not None and job_span.end_ms >= job_span.start_ms
    state = _fake_state(engine)
    assert [c["Name"] for c in state["containers"]] == [f"/hashgrid-{'0' * 32}"]
    assert [call for call in state["calls"] if "stop" in call or call.startswith("DELETE")] == [
        f"POST /v1.43/containers/{_first_container_id(state)}/stop",
        f"DELETE /v1.43/containers/{_first_container_id(state)}",
    ]


def _first_container_id(state: dict[str, Any]) -> str:
    created = [c for c in state["calls"] if c.endswith("/start")]
    return created[0].split("/")[3]


def test_an_image_that_cannot_be_pulled_fails_with_the_engines_reason(engine: Process) -> None:
    async def scenario() -> Any:
        runtime = DockerRuntime(docker_url=engine.url, host="203.0.113.7")
        await runtime.start(_assignment(image=MISSING))
        failed = await _until(runtime, JOB, {"failed", "running"})
        await runtime.close()
        return failed

    failed = asyncio.run(scenario())

    assert (failed.state, failed.fault) == ("failed", "buyer")
    assert failed.reason == (
        "pull failed: pull access denied for registry.example.com/nobody/missing, repository "
        "does not exist or may require 'docker login': denied: requested access to the "
        "resource is denied"
    )
    assert _fake_state(engine)["containers"] == []


def test_a_container_that_exits_shows_as_failed_with_its_exit_code(engine: Process) -> None:
    async def scenario() -> Any:
        runtime = DockerRuntime(docker_url=engine.url, host="203.0.113.7")
        await runtime.start(_assignment())
        await _until(runtime, JOB, {"running"})
        httpx.post(
            f"{engine.url}/_fake/exit",
            json={"id": f"hashgrid-{JOB}", "exit_code": 137, "error": ""},
        )
        failed = await _until(runtime, JOB, {"failed"})
        await runtime.close()
        return failed, runtime.spans()

    failed, spans = asyncio.run(scenario())

    assert (failed.state, failed.reason) == ("failed", "exited with code 137")
    # The buyer's process exited: the buyer's fault, as the wire says it.
    assert failed.fault == "buyer"
    assert failed.to_wire()["fault"] == "buyer"
    assert spans[0].end_ms is not None


def test_a_deployment_whose_engine_exits_is_the_nodes_fault(engine: Process) -> None:
    deployment = Assignment(
        id=JOB,
        kind="deployment",
        gpus=(GPU_A,),
        model="llama-3.1-8b-instruct",
        served_model_name=f"d-{JOB}",
    )

    async def scenario() -> Any:
        runtime = DockerRuntime(docker_url=engine.url, host="203.0.113.7")
        await runtime.start(deployment)
        await _until(runtime, JOB, {"running"})
        httpx.post(
            f"{engine.url}/_fake/exit",
            json={"id": f"hashgrid-{JOB}", "exit_code": 1, "error": ""},
        )
        failed = await _until(runtime, JOB, {"failed"})
        await runtime.close()
        return failed

    failed = asyncio.run(scenario())

    assert (failed.state, failed.reason, failed.fault) == ("failed", "exited with code 1", "node")
    assert failed.to_wire()["fault"] == "node"


def test_the_fake_answers_as_the_engine_documents(engine: Process) -> None:
    url = f"{engine.url}/v1.43"
    unpulled = httpx.post(f"{url}/containers/create", params={"name": "x"}, json={"Image": "a:1"})
    httpx.post(f"{url}/images/create", params={"fromImage": "a", "tag": "1"})
    created = httpx.post(f"{url}/containers/create", params={"name": "x"}, json={"Image": "a:1"})
    taken = httpx.post(f"{url}/containers/create", params={"name": "x"}, json={"Image": "a:1"})
    first_start = httpx.post(f"{url}/containers/x/start")
    second_start = httpx.post(f"{url}/containers/x/start")
    running_delete = httpx.delete(f"{url}/containers/x")
    first_stop = httpx.post(f"{url}/containers/x/stop")
    second_stop = httpx.post(f"{url}/containers/x/stop")
    deleted = httpx.delete(f"{url}/containers/x")
    gone = httpx.get(f"{url}/containers/x/json")

    assert (unpulled.status_code, unpulled.json()) == (404, {"message": "No such image: a:1"})
    assert created.status_code == 201
    assert created.json()["Warnings"] == [] and len(created.json()["Id"]) == 64
    assert taken.status_code == 409
    assert [r.status_code for r in (first_start, second_start)] == [204, 304]
    assert running_delete.status_code == 409
    assert running_delete.json()["message"].startswith("You cannot remove a running container")
    assert [r.status_code for r in (first_stop, second_stop, deleted)] == [204, 304, 204]
    assert (gone.status_code, gone.json()) == (404, {"message": "No such container: x"})


PLATFORM = Ed25519PrivateKey.from_private_bytes(bytes(range(150, 182)))


def test_the_agent_runs_assignments_through_docker(
    launcher: Launcher, engine: Process, tmp_path: Path
) -> None:
    token = "docker-token"
    agent = launcher.agent(
        tmp_path / "agent.sqlite3",
        *("--simulate", "--gpus", "2", "--poll-token", token, "--runtime", "docker"),
        *("--docker-url", engine.url, "--workload-host", "203.0.113.7"),
        *("--platform-key", raw_public_b64(PLATFORM)),
    )
    client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    info = client.get(f"{agent.url}/v1/info").json()
    gpus = [gpu["uuid"] for gpu in info["gpus"]]
    payload = body(agent=info["public_key"], generation=1, assignments=[container(JOB, gpus[1:])])

    assert put(client, agent.url, payload, key=PLATFORM, token=token).status_code == 200
    seen, running = watch_states(client, agent.url, info["public_key"], JOB, until={"running"})

    assert seen[-1] == "running"
    assert running["connection"] == {
        "host": "203.0.113.7",
        "ports": {"22": 40000, "8888": 40001},
        "endpoint": "",
    }
    (stored,) = _fake_state(engine)["containers"]
    assert stored["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": gpus[1:], "Capabilities": [["gpu"]]}
    ]
    emptied = body(agent=info["public_key"], generation=2, assignments=[])
    assert put(client, agent.url, emptied, key=PLATFORM, token=token).status_code == 200
    deadline = time.monotonic() + 10
    while _fake_state(engine)["containers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fake_state(engine)["containers"] == []
    client.close()
