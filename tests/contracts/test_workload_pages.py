"""Workload pages: a buyer starts an instance, watches its state, connects, stops it;
deploys a model or a container on reserved GPUs, redeploys and stops; other tenants get
404, viewers only look; the partner's node page shows what runs, never the buyer."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import AuditEvent, Role
from contracts.charges import held_charge, line_charges
from contracts.models import (
    Allocation,
    ContractLine,
    NodeAssignments,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from contracts.workloads import (
    bump_generation,
    container_create,
    deployment_create,
    instance_start,
    workload_stop,
)
from tests.contracts.usage_builders import (
    active_contract,
    gpu_line,
    inference_product,
    reserved_line,
)
from tests.contracts.workload_builders import HOST, PYTORCH, SSH_KEY, agent_reports
from tests.factories import MembershipFactory
from tests.fixtures import client_for
from tests.tenancy import assert_hidden_from

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
def running(line, buyer_owner, clock):
    """An instance on 2 GPUs started at NOW, reported running 30 s later."""
    workload = instance_start(
        line=line,
        gpu_count=2,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22, 8888],
        env={"HF_TOKEN": "hf_secret_value"},
        actor=buyer_owner,
    )
    clock.shift(timedelta(seconds=30))
    agent_reports(
        workload,
        state="running",
        since=NOW + timedelta(seconds=30),
        now=NOW + timedelta(seconds=30),
        ports={"22": 40022, "8888": 40023},
    )
    return workload


# The one-time key a rendered start form carries (any 16-64 characters).
FORM_KEY = "start-form-key-0001"


def start_url(line) -> str:
    return f"/contracts/{line.contract_id}/lines/{line.pk}/instances/new/"


def test_a_buyer_starts_an_instance_from_a_template(buyer_client, line, devices):
    response = buyer_client.post(
        start_url(line),
        {
            "template": "3",  # Jupyter: its ports when none are typed
            "image": "",
            "gpu_count": "2",
            "ssh_public_key": SSH_KEY,
            "ports": "",
            "env": "A=1\nB=two words\n",
            "submission_key": FORM_KEY,
        },
    )

    workload = Workload.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/contracts/workloads/{workload.pk}/"
    assert (workload.kind, workload.image, workload.ports, workload.env) == (
        WorkloadKind.CONTAINER,
        "quay.io/jupyter/pytorch-notebook:cuda12-latest",
        [22, 8888],
        {"A": "1", "B": "two words"},
    )
    assert (workload.state, workload.started_at, workload.ssh_public_key) == (
        WorkloadState.REQUESTED,
        NOW,
        SSH_KEY,
    )
    periods = list(Allocation.objects.filter(workload=workload).values_list("period", flat=True))
    assert periods == [DateTimeTZRange(NOW, None, "[)")] * 2
    assert NodeAssignments.objects.get(node_id=workload.node_id).generation == 1


def test_a_double_click_on_start_starts_one_instance(buyer_client, line, devices):
    page = buyer_client.get(start_url(line)).content.decode()
    minted = re.search(r'name="submission_key" value="([^"]+)"', page)
    assert minted is not None and 16 <= len(minted.group(1)) <= 64
    # Every rendering mints its own key.
    assert minted.group(1) not in buyer_client.get(start_url(line)).content.decode()
    form = {
        "template": "0",
        "image": "",
        "gpu_count": "2",
        "ssh_public_key": SSH_KEY,
        "ports": "22",
        "env": "",
        "submission_key": minted.group(1),
    }

    first = buyer_client.post(start_url(line), form)
    second = buyer_client.post(start_url(line), form)

    workload = Workload.objects.get()
    assert workload.submission_key == minted.group(1)
    assert [first.status_code, second.status_code] == [302, 302]
    assert first["Location"] == second["Location"] == f"/contracts/workloads/{workload.pk}/"
    assert Allocation.objects.filter(workload=workload).count() == 2
    # The same form changed after it started an instance is refused, nothing started.
    changed = buyer_client.post(start_url(line), form | {"gpu_count": "1"})
    assert changed.status_code == 200
    assert (
        "This start was already used for another instance; send a new key (or reload the "
        "form) to start another." in changed.content.decode()
    )
    assert (Workload.objects.count(), Allocation.objects.count()) == (1, 2)
    # A form without its key (not one the page rendered) starts nothing.
    keyless = buyer_client.post(start_url(line), form | {"submission_key": ""})
    assert "This form has expired; start again from a fresh one." in keyless.content.decode()
    assert Workload.objects.count() == 1


def test_an_own_image_needs_a_name(buyer_client, line, devices):
    response = buyer_client.post(
        start_url(line), {"template": "own", "image": "", "gpu_count": "1", "ports": "22"}
    )

    assert response.status_code == 200
    assert "Enter your image, or choose one of ours." in response.content.decode()
    assert Workload.objects.count() == 0


def test_too_few_free_gpus_is_refused_with_the_count(buyer_client, line, devices):
    page = buyer_client.get(start_url(line)).content.decode()
    response = buyer_client.post(
        start_url(line),
        {"template": "0", "gpu_count": "5", "ports": "22", "submission_key": FORM_KEY},
    )

    assert "4 GPUs free on one node right now." in page
    assert response.status_code == 200
    assert (
        "Only 4 GPUs of this offer are free right now; you asked for 5."
        in response.content.decode()
    )
    assert Workload.objects.count() == 0
    assert Allocation.objects.count() == 0


def test_the_instance_page_waits_for_the_node_then_shows_how_to_connect(
    buyer_client, line, buyer_owner, clock
):
    workload = instance_start(
        line=line,
        gpu_count=2,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=buyer_owner,
    )
    waiting = buyer_client.get(f"/contracts/workloads/{workload.pk}/").content.decode()

    clock.shift(timedelta(seconds=90))
    agent_reports(
        workload,
        state="running",
        since=NOW + timedelta(seconds=31),
        now=NOW + timedelta(seconds=90),
        ports={"22": 40022},
    )
    page = buyer_client.get(f"/contracts/workloads/{workload.pk}/").content.decode()
    fragment = buyer_client.get(
        f"/contracts/workloads/{workload.pk}/", headers={"HX-Request": "true"}
    ).content.decode()

    assert 'data-state="requested">Waiting for the node<' in waiting
    assert "The SSH command appears here once the node reports the container running." in waiting
    assert 'data-state="running">Running<' in page
    assert (
        f'<code class="secret-value" data-secret data-ssh-command>ssh -p 40022 root@{HOST}</code>'
        in page
    )
    assert f"{HOST}:40022" in page
    assert "2026-12-04 10:00 UTC" in page  # since (10:00:31)
    # 90 s on 2 GPUs at 2.4000 per GPU-hour: 180 GPU-s → 0.12.
    assert 'data-held-seconds="90">90 s on 2 GPUs (180 GPU-seconds)' in page
    assert "data-cost>0.12 USD" in page
    assert fragment.lstrip().startswith('<section class="card" id="workload-state"')
    assert "<html" not in fragment


def test_waiting_for_the_node_shows_while_the_agent_is_behind(buyer_client, running):
    # A change on the node (another of its workloads) that its agent has not taken yet.
    bump_generation(node_ids=[running.node_id], now=NOW + timedelta(seconds=30))
    before = buyer_client.get(f"/api/v1/workloads/{running.pk}").json()["waiting_for_node"]

    page = buyer_client.get(f"/contracts/workloads/{running.pk}/").content.decode()

    assert "data-waiting-for-node>waiting for the node<" in page
    assert before is True


def test_a_failed_instance_shows_why(buyer_client, line, buyer_owner, clock):
    workload = instance_start(
        line=line,
        gpu_count=1,
        image="acme/missing:1",
        ssh_public_key="",
        ports=[],
        env={},
        actor=buyer_owner,
    )
    clock.shift(timedelta(seconds=20))
    agent_reports(
        workload,
        state="failed",
        since=NOW + timedelta(seconds=12),
        now=NOW + timedelta(seconds=20),
        reason="pull access denied for acme/missing",
    )

    page = buyer_client.get(f"/contracts/workloads/{workload.pk}/").content.decode()

    assert 'data-state="failed">Failed<' in page
    assert "<dd data-reason>pull access denied for acme/missing</dd>" in page
    # Billed up to the failure: 12 s on 1 GPU.
    assert 'data-held-seconds="12">12 s on 1 GPU (12 GPU-seconds)' in page
    assert "data-stop" not in page


def test_stop_asks_first_then_stops_once(buyer_client, running, clock):
    url = f"/contracts/workloads/{running.pk}/stop/"
    confirm = buyer_client.get(url).content.decode()
    clock.shift(timedelta(seconds=60))
    first = buyer_client.post(url)
    clock.shift(timedelta(seconds=60))
    second = buyer_client.post(url, follow=True)

    running.refresh_from_db()
    stopped_at = NOW + timedelta(seconds=90)
    assert "Stop this instance?" in confirm
    assert "Its GPUs are released and billing stops now." in confirm
    assert (first.status_code, first["Location"]) == (302, f"/contracts/workloads/{running.pk}/")
    assert (running.state, running.ended_at) == (WorkloadState.STOPPED, stopped_at)
    assert (
        list(Allocation.objects.filter(workload=running).values_list("period", flat=True))
        == [DateTimeTZRange(NOW, stopped_at, "[)")] * 2
    )
    assert AuditEvent.objects.filter(action="workload.stopped").count() == 1
    assert "This was already stopped." in second.content.decode()
    assert 'data-held-seconds="90">90 s on 2 GPUs (180 GPU-seconds)' in second.content.decode()


def test_another_tenant_gets_404_for_every_workload_page(other_client, running, line):
    assert_hidden_from(other_client, f"/contracts/workloads/{running.pk}/")
    for url in (
        f"/contracts/workloads/{running.pk}/stop/",
        f"/contracts/workloads/{running.pk}/redeploy/",
        start_url(line),
        f"/contracts/{line.contract_id}/lines/{line.pk}/deployments/new/",
        f"/contracts/{line.contract_id}/lines/{line.pk}/containers/new/",
    ):
        assert_hidden_from(other_client, url)
        assert_hidden_from(other_client, url, method="post")
    assert "Acme" not in other_client.get("/contracts/instances/").content.decode()
    running.refresh_from_db()
    assert running.state == WorkloadState.RUNNING


def test_a_viewer_sees_instances_but_cannot_start_or_stop(buyer_org, running, line):
    viewer = client_for(MembershipFactory(organization=buyer_org, role=Role.VIEWER).user)

    listing = viewer.get("/contracts/instances/").content.decode()
    page = viewer.get(f"/contracts/workloads/{running.pk}/").content.decode()

    assert f'data-workload="{running.pk}"' in listing
    assert "Start an instance</a>" not in listing
    assert "data-stop" not in page
    assert viewer.get(start_url(line)).status_code == 403
    assert viewer.post(start_url(line), {"template": "0", "gpu_count": "1"}).status_code == 403
    assert viewer.post(f"/contracts/workloads/{running.pk}/stop/").status_code == 403
    assert Workload.objects.count() == 1
    running.refresh_from_db()
    assert running.state == WorkloadState.RUNNING


def test_instances_page_lists_lines_and_instances_or_says_there_are_none(
    buyer_client, line, running
):
    page = buyer_client.get("/contracts/instances/").content.decode()

    assert f'href="{start_url(line)}"' in page
    assert f'data-workload="{running.pk}"' in page
    assert PYTORCH in page


def test_instances_page_empty_state(buyer_client, buyer_org):
    page = buyer_client.get("/contracts/instances/").content.decode()

    assert "No instances yet" in page
    assert "No on-demand GPU line yet." in page


def test_the_usage_page_shows_each_instances_seconds_and_cost(buyer_client, running, clock):
    clock.shift(timedelta(seconds=3570))  # an hour after the start

    page = buyer_client.get("/contracts/usage/").content.decode()

    # 3600 s on 2 GPUs at 2.4000 per GPU-hour = 4.80.
    assert f'data-instance="{running.pk}"' in page
    assert '<td class="num" data-held-seconds>3600</td>' in page
    assert '<td class="num" data-gpu-seconds>7200</td>' in page
    assert '<td class="num" data-cost>4.80 USD</td>' in page


# -- reserved GPUs ---------------------------------------------------------------------------


@pytest.fixture
def reservation(contract, offer, devices):
    return reserved_line(
        contract=contract,
        offer=offer,
        holds=[(gpu, NOW - timedelta(days=1), NOW + timedelta(days=29)) for gpu in devices[4:8]],
    )


@pytest.fixture
def llama(db):
    product = inference_product("llama-test-8b")
    product.memory_required_mib = 1000
    product.save(update_fields=["memory_required_mib"])
    return product


def test_a_buyer_deploys_a_model_on_reserved_gpus_and_sees_how_to_call_it(
    buyer_client, reservation, llama
):
    contract_page = buyer_client.get(f"/contracts/{reservation.contract_id}/").content.decode()
    response = buyer_client.post(
        f"/contracts/{reservation.contract_id}/lines/{reservation.pk}/deployments/new/",
        {"product": llama.slug, "gpu_count": "2"},
        follow=True,
    )

    deployment = Workload.objects.get()
    page = response.content.decode()
    assert "data-deploy-model" in contract_page and "data-run-container" in contract_page
    assert "Nothing runs on this contract\u2019s GPUs yet." in contract_page
    assert (deployment.kind, deployment.inference_product, deployment.gpus.count()) == (
        WorkloadKind.DEPLOYMENT,
        llama,
        2,
    )
    assert f"<code data-served-model>d-{deployment.public_id}</code>" in page
    assert f"model=&quot;d-{deployment.public_id}&quot;" in page  # the openai SDK snippet
    assert "held so far" not in page.lower()  # the reservation pays, not per second
    listed = buyer_client.get(f"/contracts/{reservation.contract_id}/").content.decode()
    assert f'data-workload="{deployment.pk}"' in listed
    assert f"d-{deployment.public_id}" in listed


def test_only_a_reservation_in_force_offers_to_deploy(buyer_client, contract, offer, devices):
    """A reservation past its period (``ended_at`` stays empty) or not begun has no GPUs
    to deploy on: its row offers nothing; the one in force does."""
    periods = {
        "over": (NOW - timedelta(days=40), NOW - timedelta(days=10)),
        "in force": (NOW - timedelta(days=1), NOW + timedelta(days=29)),
        "ahead": (NOW + timedelta(days=2), NOW + timedelta(days=32)),
    }
    lines = {
        name: reserved_line(contract=contract, offer=offer, holds=[(devices[i], start, end)])
        for i, (name, (start, end)) in enumerate(periods.items())
    }

    page = buyer_client.get(f"/contracts/{contract.pk}/").content.decode()

    deploy_links = re.findall(r'href="/contracts/\d+/lines/(\d+)/deployments/new/"', page)
    container_links = re.findall(r'href="/contracts/\d+/lines/(\d+)/containers/new/"', page)
    assert deploy_links == container_links == [str(lines["in force"].pk)]


def test_a_container_on_reserved_gpus_redeploys_on_the_same_gpus(buyer_client, reservation, clock):
    buyer_client.post(
        f"/contracts/{reservation.contract_id}/lines/{reservation.pk}/containers/new/",
        {"template": "1", "gpu_count": "1", "ports": "22", "ssh_public_key": SSH_KEY},
    )
    first = Workload.objects.get()
    clock.shift(timedelta(minutes=5))

    response = buyer_client.post(
        f"/contracts/workloads/{first.pk}/redeploy/", {"image": "acme/trainer:2"}
    )

    first.refresh_from_db()
    fresh = Workload.objects.exclude(pk=first.pk).get()
    assert response["Location"] == f"/contracts/workloads/{fresh.pk}/"
    assert (first.state, first.ended_at) == (WorkloadState.STOPPED, NOW + timedelta(minutes=5))
    assert (fresh.image, fresh.ports, fresh.ssh_public_key) == ("acme/trainer:2", [22], SSH_KEY)
    assert list(fresh.gpus.all()) == list(first.gpus.all())


def test_a_deployment_too_big_for_the_gpus_is_refused(buyer_client, reservation, llama):
    llama.memory_required_mib = 10_000_000
    llama.save(update_fields=["memory_required_mib"])

    response = buyer_client.post(
        f"/contracts/{reservation.contract_id}/lines/{reservation.pk}/deployments/new/",
        {"product": llama.slug, "gpu_count": "1"},
    )

    assert response.status_code == 200
    assert "needs 10,000,000 MiB of GPU memory" in response.content.decode()
    assert Workload.objects.count() == 0


# -- the partner -----------------------------------------------------------------------------


def test_the_partner_sees_what_runs_on_the_node_never_the_buyer(
    partner_client, running, reservation, llama, line, clock
):
    deployment_create(line=reservation, product=llama, gpu_count=1, actor=None)
    failed = instance_start(
        line=line,
        gpu_count=1,
        image="acme/secret-image:7",
        ssh_public_key="",
        ports=[],
        env={},
        actor=None,
    )
    clock.shift(timedelta(seconds=30))
    agent_reports(
        failed,
        state="failed",
        since=NOW + timedelta(seconds=40),
        now=NOW + timedelta(seconds=60),
        reason="exec format error",
    )

    page = partner_client.get(f"/partner/nodes/{running.node_id}/").content.decode()
    section = page[page.index("data-node-workloads") : page.index("Maintenance and curtailment")]

    gpu = running.gpus.order_by("index").first()
    assert section.count("data-workload-row") == 3  # the instance's 2 GPUs, the failure
    assert f'<td class="mono small">{gpu.uuid}</td><td>Instance</td>' in section
    assert ">Running</span></td><td>2026-12-04 10:00 UTC</td><td>—</td>" in section
    assert ">Failed</span>" in section and "<td>exec format error</td>" in section
    for private in (
        "Acme Vision",
        PYTORCH,
        "acme/secret-image",
        SSH_KEY,
        "hf_secret_value",
        "HF_TOKEN",
        running.public_id,
        HOST,
    ):
        assert private not in page
    other_node = reservation.allocations.first().gpu_device.node_id
    other_page = partner_client.get(f"/partner/nodes/{other_node}/").content.decode()
    assert "<td>Model deployment</td>" in other_page
    assert "llama" not in other_page.lower().split("data-node-workloads")[1].split("</section>")[0]


def test_the_instance_page_reads_the_invoices_seconds_and_cost(buyer_client, line, devices, clock):
    """One owner (``held_gpu_seconds``): a stopped instance's page shows exactly the
    GPU-seconds and cost rating bills for it; another instance on the line is its own."""
    spec = {"image": PYTORCH, "ssh_public_key": SSH_KEY, "ports": [22], "env": {}}
    stopped = instance_start(line=line, gpu_count=3, actor=None, now=NOW, **spec)
    workload_stop(
        workload=stopped,
        actor=None,
        now=NOW + timedelta(hours=2, minutes=17, seconds=31, microseconds=654_321),
    )
    running = instance_start(
        line=line, gpu_count=1, actor=None, now=NOW + timedelta(minutes=5), **spec
    )
    clock.move_to(NOW + timedelta(hours=3))

    page = buyer_client.get(f"/contracts/workloads/{stopped.pk}/")
    other = buyer_client.get(f"/contracts/workloads/{running.pk}/")
    # 8251.654321 s on 3 GPUs; 2 h 55 min on 1 GPU.
    (charge,) = line_charges(
        lines={
            line.pk: ContractLine.objects.select_related("contract__sla_policy").get(pk=line.pk)
        },
        start=datetime(2026, 12, 1, tzinfo=UTC),
        end=datetime(2027, 1, 1, tzinfo=UTC),
        now=NOW + timedelta(hours=3),
    )
    alone = held_charge(line=line, gpu_seconds=Decimal("24754.962963"))

    held, other_held = page.context["held"], other.context["held"]
    assert held.gpu_seconds == Decimal("24754.962963")
    assert (held.seconds, held.cost_minor) == (8251, alone.amount_minor) == (8251, 1650)
    assert other_held.gpu_seconds == Decimal(10_500)
    assert held.gpu_seconds + other_held.gpu_seconds == charge.quantity * 3600
    assert charge.amount_minor == 1650 + 700 == held.cost_minor + other_held.cost_minor
    html = page.content.decode()
    assert 'data-held-seconds="8251"' in html
    assert "(24754 GPU-seconds)" in html


def _active_menu_entries(html: str) -> list[str]:
    return re.findall(r'class="nav-link[^"]*" aria-current="page">([^<]+)</a>', html)


def test_the_menu_puts_an_instance_under_instances_and_a_reserved_workload_under_contracts(
    buyer_client, running, reservation
):
    container = container_create(
        line=reservation,
        image=PYTORCH,
        ssh_public_key=SSH_KEY,
        ports=[22],
        env={},
        actor=None,
        gpu_count=1,
    )

    instance_page = buyer_client.get(f"/contracts/workloads/{running.pk}/").content.decode()
    container_page = buyer_client.get(f"/contracts/workloads/{container.pk}/").content.decode()
    contracts_page = buyer_client.get("/contracts/").content.decode()

    assert _active_menu_entries(instance_page) == ["Instances"]
    assert _active_menu_entries(container_page) == ["Contracts"]
    assert _active_menu_entries(contracts_page) == ["Contracts"]
