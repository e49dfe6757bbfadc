"""Workloads API: start an instance (201, 409 with too few GPUs, 400 on bad input), read
it, stop it (idempotent), deployments and containers on reserved GPUs, redeploy, image
templates; tenant isolation and roles; the endpoints are in the OpenAPI schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.models import Role
from contracts.models import Allocation, Workload, WorkloadState
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_product,
    reserved_line,
)
from tests.contracts.workload_builders import HOST, PYTORCH, SSH_KEY, agent_reports
from tests.factories import ApiKeyFactory, MembershipFactory

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def contract(buyer_org):
    return active_contract(buyer=buyer_org, since=NOW - timedelta(days=3))


@pytest.fixture
def line(contract, offer):
    return gpu_line(contract=contract, offer=offer, since=NOW - timedelta(days=3))


@pytest.fixture
def api(buyer_org, buyer_owner):
    """The buyer's API key (it acts as a member: it may start and stop)."""
    key = ApiKeyFactory(organization=buyer_org, created_by=buyer_owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key}")
    return client


def start_body(line, **changes):
    return {
        "line": line.pk,
        "gpu_count": 2,
        "image": PYTORCH,
        "ssh_public_key": SSH_KEY,
        "ports": [22, 8888],
        "env": {"HF_TOKEN": "hf_secret"},
    } | changes


def test_starting_an_instance_answers_201_with_it(api, line, devices):
    response = api.post("/api/v1/instances", start_body(line), format="json")

    workload = Workload.objects.get()
    body = response.json()
    assert response.status_code == 201
    assert body == {
        "id": workload.pk,
        "public_id": workload.public_id,
        "contract": line.contract_id,
        "line": line.pk,
        "kind": "container",
        "is_instance": True,
        "gpu_count": 2,
        "image": PYTORCH,
        "ports": [22, 8888],
        "env_names": ["HF_TOKEN"],
        "model": None,
        "served_model_name": None,
        "state": "requested",
        "state_since": "2026-12-04T10:00:00Z",
        "waiting_for_node": True,
        "reason": "",
        "connection": {"host": "", "ports": {}, "endpoint": "", "ssh_command": ""},
        "started_at": "2026-12-04T10:00:00Z",
        "ended_at": None,
        "held_seconds": 0,
        "held_gpu_seconds": "0",
        "cost_minor": 0,
        "currency": "USD",
    }
    assert Allocation.objects.filter(workload=workload, line=line).count() == 2


def test_an_idempotency_key_starts_one_instance(api, line, devices, clock):
    key = {"HTTP_IDEMPOTENCY_KEY": "start-7f3c9a2e-0001"}
    first = api.post("/api/v1/instances", start_body(line), format="json", **key)
    clock.shift(timedelta(seconds=2))
    again = api.post("/api/v1/instances", start_body(line), format="json", **key)

    workload = Workload.objects.get()
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] == workload.pk
    assert again.json()["started_at"] == "2026-12-04T10:00:00Z"
    assert workload.submission_key == "start-7f3c9a2e-0001"
    assert list(Allocation.objects.values_list("workload_id", flat=True)) == [workload.pk] * 2

    other = api.post("/api/v1/instances", start_body(line, gpu_count=1), format="json", **key)
    assert other.status_code == 400
    assert other.json() == {
        "detail": [
            "This start was already used for another instance; send a new key (or reload "
            "the form) to start another."
        ]
    }
    short = api.post(
        "/api/v1/instances", start_body(line), format="json", HTTP_IDEMPOTENCY_KEY="short"
    )
    assert short.status_code == 400
    assert short.json() == {"Idempotency-Key": ["Send 16 to 64 characters, new for each instance."]}
    assert (Workload.objects.count(), Allocation.objects.count()) == (1, 2)


def test_a_running_instance_reads_with_its_ssh_command_and_cost(api, line, devices, clock):
    started = api.post("/api/v1/instances", start_body(line), format="json").json()
    workload = Workload.objects.get()
    clock.shift(timedelta(seconds=1800))
    agent_reports(
        workload,
        state="running",
        since=NOW + timedelta(seconds=25),
        now=NOW + timedelta(seconds=1800),
        ports={"22": 40022, "8888": 40023},
    )

    body = api.get(f"/api/v1/workloads/{started['id']}").json()
    listed = api.get("/api/v1/instances").json()

    assert (body["state"], body["state_since"], body["waiting_for_node"]) == (
        "running",
        "2026-12-04T10:00:25Z",
        False,
    )
    assert body["connection"] == {
        "host": HOST,
        "ports": {"22": 40022, "8888": 40023},
        "endpoint": "",
        "ssh_command": f"ssh -p 40022 root@{HOST}",
    }
    # 1800 s on 2 GPUs at 2.4000 per GPU-hour: 3600 GPU-s = 2.40.
    assert (body["held_seconds"], body["held_gpu_seconds"], body["cost_minor"]) == (
        1800,
        "3600",
        240,
    )
    assert listed["count"] == 1 and listed["results"] == [body]


def test_too_few_free_gpus_is_a_409_and_stores_nothing(api, line, devices):
    response = api.post("/api/v1/instances", start_body(line, gpu_count=5), format="json")

    assert response.status_code == 409
    assert response.json() == {
        "detail": ["Only 4 GPUs of this offer are free right now; you asked for 5."],
        "code": "no_free_gpus",
    }
    assert Workload.objects.count() == 0
    assert Allocation.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"ssh_public_key": "not a key"},
            {"detail": ["Paste one OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa-sha2-…)."]},
        ),
        (
            {"image": "Not An Image!"},
            {
                "detail": [
                    "An image reference such as pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime."
                ]
            },
        ),
        ({"ports": [22, 22]}, {"detail": ["Each port is a distinct number from 1 to 65535."]}),
        ({"gpu_count": 0}, {"gpu_count": ["Ensure this value is greater than or equal to 1."]}),
    ],
)
def test_invalid_input_is_a_400_naming_why(api, line, devices, change, expected):
    response = api.post("/api/v1/instances", start_body(line, **change), format="json")

    assert (response.status_code, response.json()) == (400, expected)
    assert Workload.objects.count() == 0


def test_a_reserved_line_is_not_an_instance_line(api, contract, offer, devices):
    reserved = reserved_line(
        contract=contract,
        offer=offer,
        holds=[(devices[0], NOW - timedelta(days=1), NOW + timedelta(days=1))],
    )

    response = api.post("/api/v1/instances", start_body(reserved), format="json")

    assert response.status_code == 404
    assert Workload.objects.count() == 0


def test_stop_twice_ends_once_and_answers_200_both_times(api, line, devices, clock):
    started = api.post("/api/v1/instances", start_body(line), format="json").json()
    clock.shift(timedelta(seconds=61))
    first = api.post(f"/api/v1/workloads/{started['id']}/stop")
    clock.shift(timedelta(seconds=61))
    second = api.post(f"/api/v1/workloads/{started['id']}/stop")

    workload = Workload.objects.get()
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()
    assert (first.json()["state"], first.json()["ended_at"]) == ("stopped", "2026-12-04T10:01:01Z")
    assert (first.json()["held_seconds"], first.json()["cost_minor"]) == (61, 8)  # 122 GPU-s
    assert workload.ended_at == NOW + timedelta(seconds=61)
    assert {a.period.upper for a in Allocation.objects.filter(workload=workload)} == {
        NOW + timedelta(seconds=61)
    }


def test_another_tenant_gets_404_and_changes_nothing(api, line, devices, other_org, other_owner):
    started = api.post("/api/v1/instances", start_body(line), format="json").json()
    other = APIClient()
    other.force_login(other_owner)

    answers = [
        other.get(f"/api/v1/workloads/{started['id']}").status_code,
        other.post(f"/api/v1/workloads/{started['id']}/stop").status_code,
        other.post(f"/api/v1/workloads/{started['id']}/redeploy", {}, format="json").status_code,
        other.post("/api/v1/instances", start_body(line), format="json").status_code,
    ]

    assert answers == [404, 404, 404, 404]
    assert other.get("/api/v1/instances").json()["count"] == 0
    assert other.get("/api/v1/workloads").json()["count"] == 0
    assert Workload.objects.get().state == WorkloadState.REQUESTED
    assert Workload.objects.count() == 1


def test_a_viewer_reads_but_cannot_start_or_stop(api, buyer_org, line, devices):
    started = api.post("/api/v1/instances", start_body(line), format="json").json()
    viewer = APIClient()
    viewer.force_login(MembershipFactory(organization=buyer_org, role=Role.VIEWER).user)

    assert viewer.get(f"/api/v1/workloads/{started['id']}").status_code == 200
    assert viewer.post("/api/v1/instances", start_body(line), format="json").status_code == 403
    assert viewer.post(f"/api/v1/workloads/{started['id']}/stop").status_code == 403
    assert Workload.objects.get().state == WorkloadState.REQUESTED


def test_deployments_and_containers_on_reserved_gpus_and_redeploy(api, contract, offer, devices):
    reserved = reserved_line(
        contract=contract,
        offer=offer,
        holds=[(gpu, NOW - timedelta(days=1), NOW + timedelta(days=29)) for gpu in devices[:4]],
    )
    product = inference_product("llama-test-8b")
    other = inference_product("qwen-test-7b")

    deployed = api.post(
        "/api/v1/deployments",
        {"line": reserved.pk, "model": product.slug, "gpu_count": 2},
        format="json",
    )
    container = api.post(
        "/api/v1/containers",
        {"line": reserved.pk, "image": PYTORCH, "gpu_count": 2, "ports": [22]},
        format="json",
    )
    full = api.post("/api/v1/containers", {"line": reserved.pk, "image": PYTORCH}, format="json")
    redeployed = api.post(
        f"/api/v1/workloads/{deployed.json()['id']}/redeploy",
        {"model": other.slug},
        format="json",
    )
    listed = api.get(f"/api/v1/workloads?contract={contract.pk}&kind=deployment").json()

    deployment = Workload.objects.get(pk=deployed.json()["id"])
    fresh = Workload.objects.get(pk=redeployed.json()["id"])
    assert deployed.status_code == 201
    assert deployed.json()["served_model_name"] == f"d-{deployment.public_id}"
    assert (deployed.json()["model"], deployed.json()["held_seconds"]) == (product.slug, None)
    assert (container.status_code, container.json()["kind"], container.json()["is_instance"]) == (
        201,
        "container",
        False,
    )
    assert (full.status_code, full.json()["code"]) == (409, "no_free_gpus")
    assert redeployed.status_code == 201
    assert (redeployed.json()["model"], fresh.inference_product) == (other.slug, other)
    assert set(fresh.gpus.all()) == set(deployment.gpus.all())
    deployment.refresh_from_db()
    assert deployment.state == WorkloadState.STOPPED
    assert [row["id"] for row in listed["results"]] == [fresh.pk, deployment.pk]


def test_an_instance_cannot_be_redeployed(api, line, devices):
    started = api.post("/api/v1/instances", start_body(line), format="json").json()

    response = api.post(f"/api/v1/workloads/{started['id']}/redeploy", {}, format="json")

    assert response.status_code == 400
    assert response.json() == {
        "detail": ["Only workloads on reserved GPUs are redeployed; start a new instance instead."]
    }
    assert Workload.objects.get().state == WorkloadState.REQUESTED


def test_image_templates(api):
    response = api.get("/api/v1/image-templates")

    assert response.json() == [
        {"name": "PyTorch", "image": PYTORCH, "ports": [22]},
        {
            "name": "CUDA base (Ubuntu 22.04)",
            "image": "nvidia/cuda:12.4.1-base-ubuntu22.04",
            "ports": [22],
        },
        {"name": "vLLM OpenAI server", "image": "vllm/vllm-openai:v0.6.4", "ports": [22, 8000]},
        {
            "name": "Jupyter (PyTorch)",
            "image": "quay.io/jupyter/pytorch-notebook:cuda12-latest",
            "ports": [22, 8888],
        },
    ]


def test_the_schema_describes_the_workload_endpoints():
    schema = SchemaGenerator().get_schema(request=None, public=True)

    operations = {
        (path, method): operation["operationId"]
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if "workloads" in operation.get("tags", [])
    }
    assert operations == {
        ("/api/v1/instances", "get"): "instances_list",
        ("/api/v1/instances", "post"): "instances_start",
        ("/api/v1/containers", "post"): "containers_create",
        ("/api/v1/deployments", "post"): "deployments_create",
        ("/api/v1/workloads", "get"): "workloads_list",
        ("/api/v1/workloads/{id}", "get"): "workloads_retrieve",
        ("/api/v1/workloads/{id}/stop", "post"): "workloads_stop",
        ("/api/v1/workloads/{id}/redeploy", "post"): "workloads_redeploy",
        ("/api/v1/image-templates", "get"): "image_templates_list",
    }
    start = schema["paths"]["/api/v1/instances"]["post"]
    assert set(start["responses"]) == {"200", "201", "400", "404", "409"}
    assert [(p["name"], p["in"]) for p in start["parameters"]] == [("Idempotency-Key", "header")]
    assert schema["components"]["schemas"]["WorkloadState"]["enum"] == [
        "requested",
        "pending",
        "pulling",
        "starting",
        "running",
        "stopping",
        "stopped",
        "failed",
        "lost",
    ]
