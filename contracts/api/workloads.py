"""The buyers' workloads API: instances on on-demand GPU lines, containers and model
deployments on reserved GPUs, their states, stop and redeploy (``contracts.workloads``;
docs/workloads.md).

Tenant-scoped as the rest of the buyers' API (``BUYER_PERMISSIONS``: another tenant's
workload or line is a 404, writes need an operator role). A refusal of the service is a
400 naming why; too few free GPUs is a 409 (``code`` ``no_free_gpus``: the request was
fine, the capacity is not there now). Stop is idempotent: a workload already stopped,
failed or lost answers 200 with itself, unchanged. Starting an instance honours an
``Idempotency-Key`` as the reservations API does: the same key again answers 200 with
the first start's instance and starts nothing; the same key with another body is a 400
(``submission_reused``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts.api_support import IDEMPOTENCY_HEADER, idempotency_key, refusal
from accounts.requests import request_actor, request_organization
from accounts.tenancy import api_scoped
from contracts import workload_selectors, workloads
from contracts.api.views import BUYER_PERMISSIONS
from contracts.models import (
    MAX_SSH_PUBLIC_KEY_LENGTH,
    ContractLine,
    InferenceProduct,
    LineKind,
    Workload,
    WorkloadKind,
    WorkloadState,
)
from contracts.workloads import IMAGE_TEMPLATES, MAX_WORKLOAD_GPUS

TAG = "workloads"
_NOT_FOUND = OpenApiResponse(description="No such workload or line in this organization.")
_REFUSED = OpenApiResponse(
    description="Refused: invalid image, SSH key, ports or environment, a line or contract "
    "not active; the body names why."
)
_NO_GPUS = OpenApiResponse(
    description="Too few free GPUs on one node right now (`code`: `no_free_gpus`), or the "
    "reserved GPUs asked for run another workload (`gpu_busy`)."
)
# Service refusals about capacity rather than the request: 409.
_CONFLICT_CODES = {"no_free_gpus", "gpu_busy"}
_MAX_ID = 2**63 - 1


# -- output ------------------------------------------------------------------------------


@extend_schema_field(
    {"type": "string", "enum": WorkloadKind.values, "description": "container or deployment."},
    component_name="WorkloadKind",
)
class WorkloadKindField(serializers.ChoiceField):
    """Its own schema component: ``kind`` is also the name of lines' and windows' kinds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=WorkloadKind.choices, **kwargs)


@extend_schema_field(
    {
        "type": "string",
        "enum": WorkloadState.values,
        "description": "requested (waiting for the node), pending, pulling, starting, "
        "running, stopping, stopped, failed (see reason), lost (its node stopped answering).",
    },
    component_name="WorkloadState",
)
class WorkloadStateField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=WorkloadState.choices, **kwargs)


class ConnectionSerializer(serializers.Serializer):
    host = serializers.CharField(help_text="Where the node publishes the ports ('' until known).")
    ports = serializers.DictField(
        child=serializers.IntegerField(),
        help_text='Container port → public port on the host, e.g. {"22": 40022}.',
    )
    endpoint = serializers.CharField()
    ssh_command = serializers.CharField(
        help_text="`ssh -p <public port of 22> root@<host>` once known and an SSH key was "
        "given; '' otherwise."
    )


class WorkloadSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    public_id = serializers.CharField(help_text="32 hex digits: the id the node knows.")
    contract = serializers.IntegerField(source="line.contract_id")
    line = serializers.IntegerField(source="line_id")
    kind = WorkloadKindField()
    is_instance = serializers.BooleanField(
        help_text="A container of an on-demand GPU line, billed per second held."
    )
    gpu_count = serializers.IntegerField()
    image = serializers.CharField(help_text="Containers: the image; deployments: ''.")
    ports = serializers.ListField(child=serializers.IntegerField())
    env_names = serializers.SerializerMethodField(
        help_text="Names of the environment variables (their values are not returned)."
    )
    model = serializers.CharField(source="inference_product.slug", allow_null=True, default=None)
    served_model_name = serializers.SerializerMethodField(
        help_text="Deployments: the private model name your keys call at the gateway."
    )
    state = WorkloadStateField()
    state_since = serializers.DateTimeField()
    waiting_for_node = serializers.BooleanField(
        help_text="The node has not taken the latest change yet."
    )
    reason = serializers.CharField(help_text="Why it failed or was lost; '' otherwise.")
    connection = serializers.SerializerMethodField()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    held_seconds = serializers.SerializerMethodField(
        help_text="Instances: seconds from start to stop (or now); null on reserved GPUs."
    )
    held_gpu_seconds = serializers.SerializerMethodField(
        help_text="Instances: GPU-seconds held, the billed quantity (exact decimal string)."
    )
    cost_minor = serializers.SerializerMethodField(
        help_text="Instances: what the GPU-seconds held cost so far, integer minor units."
    )
    currency = serializers.CharField(source="line.contract.currency")

    def _held(self, workload: Workload) -> workload_selectors.HeldSoFar | None:
        held: dict[int, workload_selectors.HeldSoFar] = self.context.get("held", {})
        return held.get(workload.pk)

    def get_env_names(self, workload: Workload) -> list[str]:
        return sorted(workload.env)

    def get_served_model_name(self, workload: Workload) -> str | None:
        return workload.served_model_name if workload.kind == WorkloadKind.DEPLOYMENT else None

    @extend_schema_field(ConnectionSerializer)
    def get_connection(self, workload: Workload) -> dict[str, Any]:
        connection = workload.connection if isinstance(workload.connection, dict) else {}
        return ConnectionSerializer(
            {
                "host": workload.host,
                "ports": workload.mapped_ports,
                "endpoint": str(connection.get("endpoint") or ""),
                "ssh_command": workload.ssh_command,
            }
        ).data

    def get_held_seconds(self, workload: Workload) -> int | None:
        held = self._held(workload)
        return held.seconds if held else None

    def get_held_gpu_seconds(self, workload: Workload) -> str | None:
        held = self._held(workload)
        # Plain digits without trailing zeros ("3600", "24754.962963"), as before the
        # figure came from the billing selector (which carries six decimals).
        return f"{held.gpu_seconds.normalize():f}" if held else None

    def get_cost_minor(self, workload: Workload) -> int | None:
        held = self._held(workload)
        return held.cost_minor if held else None


def _rendered(items: list[Workload]) -> Any:
    """``items`` serialized, with what the instances among them held so far."""
    held = workload_selectors.instances_held(workloads=items, now=timezone.now())
    return WorkloadSerializer(items, many=True, context={"held": held}).data


def _one(workload: Workload) -> Any:
    return _rendered([workload])[0]


def _paginated(request: Request, view: APIView, items: QuerySet[Workload]) -> Response:
    """One page of ``items`` (``accounts.api_support.paginated_response``'s shape), each
    with what it held so far, read for the page at once."""
    paginator = view.pagination_class()  # type: ignore[attr-defined]
    page = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(_rendered(list(page)))  # type: ignore[no-any-return]


def _workload(request: Request, pk: int) -> Workload:
    organization = request_organization(request)
    return get_object_or_404(
        api_scoped(workload_selectors.workload_detail(organization=organization), request), pk=pk
    )


def _reloaded(request: Request, workload: Workload) -> Any:
    return _one(_workload(request, workload.pk))


def _line(request: Request, pk: int, kind: str) -> ContractLine:
    return get_object_or_404(
        api_scoped(ContractLine.objects.select_related("contract", "offer"), request),
        pk=pk,
        kind=kind,
    )


def _refused(error: DjangoValidationError) -> Response:
    """A service's refusal: 409 about capacity (``code`` says which), 400 otherwise."""
    codes = {str(getattr(error, "code", ""))} | {
        str(getattr(inner, "code", "")) for inner in getattr(error, "error_list", [])
    }
    conflict = codes & _CONFLICT_CODES
    if conflict:
        return Response(
            {"detail": error.messages, "code": sorted(conflict)[0]},
            status=status.HTTP_409_CONFLICT,
        )
    raise refusal(error)


# -- input -------------------------------------------------------------------------------


class _ContainerInput(serializers.Serializer):
    line = serializers.IntegerField(min_value=1, max_value=_MAX_ID)
    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_WORKLOAD_GPUS, default=1)
    image = serializers.CharField(
        max_length=300,
        help_text="An image reference: one of `GET /api/v1/image-templates` or your own.",
    )
    ssh_public_key = serializers.CharField(
        max_length=MAX_SSH_PUBLIC_KEY_LENGTH,
        allow_blank=True,
        default="",
        help_text="One OpenSSH public key line; '' for no SSH.",
    )
    ports = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=65535),
        max_length=16,
        default=list,
        help_text="TCP ports to publish, e.g. [22, 8888].",
    )
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=16_384),
        default=dict,
        help_text="Environment variables, {NAME: value}.",
    )


class InstanceCreateSerializer(_ContainerInput):
    line = serializers.IntegerField(
        min_value=1, max_value=_MAX_ID, help_text="An on-demand GPU line of yours."
    )


class ContainerCreateSerializer(_ContainerInput):
    line = serializers.IntegerField(
        min_value=1, max_value=_MAX_ID, help_text="A reserved line of yours."
    )


class DeploymentCreateSerializer(serializers.Serializer):
    line = serializers.IntegerField(
        min_value=1, max_value=_MAX_ID, help_text="A reserved line of yours."
    )
    model = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=InferenceProduct.objects.filter(is_active=True),
        help_text="A catalogue model's slug, e.g. llama-3.1-8b-instruct.",
    )
    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_WORKLOAD_GPUS, default=1)


class RedeploySerializer(serializers.Serializer):
    image = serializers.CharField(
        max_length=300, required=False, help_text="Containers: another image (default: same)."
    )
    model = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=InferenceProduct.objects.filter(is_active=True),
        required=False,
        help_text="Deployments: another model (default: same).",
    )


class ImageTemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    image = serializers.CharField()
    ports = serializers.ListField(child=serializers.IntegerField())


# -- views -------------------------------------------------------------------------------


def _start_container(
    request: Request,
    serializer: type[_ContainerInput],
    line_kind: str,
    start: Callable[..., Workload],
    **once: str | None,
) -> Response:
    """Parse a container's spec, find the caller's line of ``line_kind`` and ``start``
    it there (``instance_start`` or ``container_create``, with ``once``: the instance's
    ``submission_key``): 201 with the workload, 200 with the one a repeated key found."""
    payload = serializer(data=request.data)
    payload.is_valid(raise_exception=True)
    data = payload.validated_data
    line = _line(request, data["line"], line_kind)
    try:
        workload = start(
            line=line,
            gpu_count=data["gpu_count"],
            image=data["image"],
            ssh_public_key=data["ssh_public_key"],
            ports=data["ports"],
            env=data["env"],
            actor=request_actor(request),
            **once,
        )
    except DjangoValidationError as error:
        return _refused(error)
    answer = status.HTTP_200_OK if workload.replayed else status.HTTP_201_CREATED
    return Response(_reloaded(request, workload), status=answer)


class InstanceListApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="instances_list",
        summary="Your instances, newest first",
        responses={200: WorkloadSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        instances = workload_selectors.buyer_instances(organization=request_organization(request))
        return _paginated(request, self, instances)

    @extend_schema(
        tags=[TAG],
        operation_id="instances_start",
        summary="Start an instance on free GPUs of an on-demand GPU line's offer",
        request=InstanceCreateSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="16-64 characters, new for each instance: a start repeated "
                "with the same key returns the first one's instance (200) and starts "
                "nothing; the same key with another body is refused (400).",
            )
        ],
        responses={
            200: WorkloadSerializer,
            201: WorkloadSerializer,
            400: _REFUSED,
            404: _NOT_FOUND,
            409: _NO_GPUS,
        },
    )
    def post(self, request: Request) -> Response:
        return _start_container(
            request,
            InstanceCreateSerializer,
            LineKind.ON_DEMAND_GPU,
            workloads.instance_start,
            submission_key=idempotency_key(request, what="instance"),
        )


class ContainerCreateApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="containers_create",
        summary="Run a container on GPUs a reserved line holds now",
        request=ContainerCreateSerializer,
        responses={201: WorkloadSerializer, 400: _REFUSED, 404: _NOT_FOUND, 409: _NO_GPUS},
    )
    def post(self, request: Request) -> Response:
        return _start_container(
            request, ContainerCreateSerializer, LineKind.RESERVED, workloads.container_create
        )


class DeploymentCreateApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="deployments_create",
        summary="Serve a catalogue model on GPUs a reserved line holds now",
        request=DeploymentCreateSerializer,
        responses={201: WorkloadSerializer, 400: _REFUSED, 404: _NOT_FOUND, 409: _NO_GPUS},
    )
    def post(self, request: Request) -> Response:
        payload = DeploymentCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        line = _line(request, data["line"], LineKind.RESERVED)
        try:
            workload = workloads.deployment_create(
                line=line,
                product=data["model"],
                gpu_count=data["gpu_count"],
                actor=request_actor(request),
            )
        except DjangoValidationError as error:
            return _refused(error)
        return Response(_reloaded(request, workload), status=status.HTTP_201_CREATED)


class WorkloadListApi(APIView):
    permission_classes = BUYER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="workloads_list",
        summary="Your workloads (instances, containers, deployments), newest first",
        parameters=[
            OpenApiParameter("contract", int, description="Only this contract's."),
            OpenApiParameter("kind", str, enum=WorkloadKind.values, description="Only this kind."),
        ],
        responses={200: WorkloadSerializer(many=True), 400: _REFUSED},
    )
    def get(self, request: Request) -> Response:
        params = _WorkloadFilters(data=request.query_params)
        params.is_valid(raise_exception=True)
        items = workload_selectors.buyer_workloads(
            organization=request_organization(request),
            contract_id=params.validated_data.get("contract"),
            kind=params.validated_data.get("kind"),
        )
        return _paginated(request, self, items)


class _WorkloadFilters(serializers.Serializer):
    contract = serializers.IntegerField(min_value=1, max_value=_MAX_ID, required=False)
    kind = WorkloadKindField(required=False)


class WorkloadDetailApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="workloads_retrieve",
        summary="One workload: state, connection, seconds held and cost so far",
        responses={200: WorkloadSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(_one(_workload(request, pk)))


class WorkloadStopApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="workloads_stop",
        summary="Stop a workload (idempotent: an ended one answers 200 unchanged)",
        request=None,
        responses={200: WorkloadSerializer, 404: _NOT_FOUND},
    )
    def post(self, request: Request, pk: int) -> Response:
        workload = _workload(request, pk)
        workloads.workload_stop(workload=workload, actor=request_actor(request))
        return Response(_reloaded(request, workload))


class WorkloadRedeployApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="workloads_redeploy",
        summary="Replace a workload on reserved GPUs with a fresh one on the same GPUs",
        request=RedeploySerializer,
        responses={201: WorkloadSerializer, 400: _REFUSED, 404: _NOT_FOUND, 409: _NO_GPUS},
    )
    def post(self, request: Request, pk: int) -> Response:
        workload = _workload(request, pk)
        payload = RedeploySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            fresh = workloads.workload_redeploy(
                workload=workload,
                actor=request_actor(request),
                image=payload.validated_data.get("image"),
                product=payload.validated_data.get("model"),
            )
        except DjangoValidationError as error:
            return _refused(error)
        return Response(_reloaded(request, fresh), status=status.HTTP_201_CREATED)


class ImageTemplateListApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="image_templates_list",
        summary="Images offered for instances and containers, with their usual ports",
        responses={200: ImageTemplateSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        return Response(ImageTemplateSerializer(IMAGE_TEMPLATES, many=True).data)
