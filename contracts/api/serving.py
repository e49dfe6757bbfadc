"""The partners' serving API: which inference products a node serves (``contracts.serving``).

Under capacity's node URLs (``/api/v1/nodes/{id}/inference-products``) with capacity's
partner permissions: another tenant's node is a 404, writes need an operator role.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_support import service_errors
from accounts.requests import request_actor
from accounts.tenancy import api_scoped
from capacity.api.views import PARTNER_PERMISSIONS
from capacity.models import Node
from contracts import serving
from contracts.models import InferenceProduct

TAG = "capacity"
_NOT_FOUND = OpenApiResponse(description="No such node in this organization, or no such product.")


class ServingOptionSerializer(serializers.Serializer):
    product = serializers.CharField(source="product.slug")
    name = serializers.CharField(source="product.name")
    memory_required_mib = serializers.IntegerField(source="product.memory_required_mib")
    serving = serializers.BooleanField()
    eligible = serializers.BooleanField()
    refusal = serializers.CharField(
        allow_null=True, help_text="Why the node may not serve it (GPU memory); null if it may."
    )


def _node(request: Request, pk: int) -> Node:
    return get_object_or_404(
        api_scoped(Node.objects.select_related("site__organization", "gpu_model"), request), pk=pk
    )


def _option(node: Node, slug: str) -> serving.ServingOption:
    return next(o for o in serving.node_serving_options(node=node) if o.product.slug == slug)


class NodeServingListApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_inference_products_list",
        summary="Inference products a node serves or may serve",
        responses={200: ServingOptionSerializer(many=True), 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        options = serving.node_serving_options(node=_node(request, pk))
        return Response(ServingOptionSerializer(options, many=True).data)


class NodeServingDetailApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    def _target(self, request: Request, pk: int, slug: str) -> tuple[Node, InferenceProduct]:
        node = _node(request, pk)
        return node, get_object_or_404(InferenceProduct, slug=slug)

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_inference_products_serve",
        summary="Opt the node in to serving a product (its GPUs must hold the model)",
        request=None,
        responses={
            200: ServingOptionSerializer,
            400: OpenApiResponse(description="Refused: not enough GPU memory, product not sold."),
            404: _NOT_FOUND,
        },
    )
    def put(self, request: Request, pk: int, slug: str) -> Response:
        node, product = self._target(request, pk, slug)
        with service_errors():
            serving.node_serving_set(
                node=node, product=product, serving=True, actor=request_actor(request)
            )
        return Response(ServingOptionSerializer(_option(node, slug)).data)

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_inference_products_stop",
        summary="Opt the node out of serving a product",
        request=None,
        responses={204: None, 404: _NOT_FOUND},
    )
    def delete(self, request: Request, pk: int, slug: str) -> Response:
        node, product = self._target(request, pk, slug)
        serving.node_serving_set(
            node=node, product=product, serving=False, actor=request_actor(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
