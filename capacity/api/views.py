"""The capacity API's views: partners' sites, nodes, windows and offers; agent enrollment.

Each view parses with an input serializer (``serializers``), checks the partner's access,
calls one service or selector and renders with an output serializer.
"""

from __future__ import annotations

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts.api_support import paginated_response, service_errors
from accounts.models import OPERATOR_ROLES
from accounts.requests import request_actor, request_organization
from accounts.response_headers import no_store
from accounts.tenancy import HasOrganization, api_membership_role, api_organization, api_scoped
from capacity import selectors, services
from capacity.api.serializers import (
    EnrollInputSerializer,
    EnrollmentCodeOutputSerializer,
    EnrollOutputSerializer,
    NodeCreatedOutputSerializer,
    NodeDetailOutputSerializer,
    NodeInputSerializer,
    NodeOutputSerializer,
    OfferInputSerializer,
    OfferOutputSerializer,
    OfferUpdateInputSerializer,
    SiteInputSerializer,
    SiteOutputSerializer,
    WindowInputSerializer,
    WindowOutputSerializer,
)
from capacity.enrollment import node_enroll
from capacity.models import Node, NodeStatus, NodeWindow, Offer, Site
from config.gateway_keys import receipt_public_key_b64

TAG = "capacity"


class PartnerAccess(permissions.BasePermission):
    """A partner organization; writes need an operator role (owner, admin, member).

    Not a partner → 404, as in the partner pages: these endpoints do not exist for buyers.
    """

    message = "Your role does not allow this action."

    def has_permission(self, request: Request, view: APIView) -> bool:
        organization = api_organization(request)
        if organization is None or not organization.is_partner:
            raise exceptions.NotFound("Not available for this organization.")
        if request.method in permissions.SAFE_METHODS:
            return True
        return api_membership_role(request) in OPERATOR_ROLES


PARTNER_PERMISSIONS = [permissions.IsAuthenticated, HasOrganization, PartnerAccess]


_REFUSED = OpenApiResponse(description="Refused: the body names each field at fault and why.")
_NOT_FOUND = OpenApiResponse(description="No such object in this organization.")
_FORBIDDEN = OpenApiResponse(description="Your role cannot change this (viewers, finance).")


# -- sites -------------------------------------------------------------------------------


class SiteListCreateApi(APIView):
    permission_classes = PARTNER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="sites_list",
        summary="The organization's sites",
        responses={200: SiteOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        sites = Site.objects.for_organization(request_organization(request)).order_by("name", "pk")
        return paginated_response(request, self, sites, SiteOutputSerializer)

    @extend_schema(
        tags=[TAG],
        operation_id="sites_create",
        summary="Register a site",
        request=SiteInputSerializer,
        responses={201: SiteOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN},
    )
    def post(self, request: Request) -> Response:
        payload = SiteInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        with service_errors():
            site = services.site_create(
                organization=request_organization(request),
                actor=request_actor(request),
                **payload.validated_data,
            )
        return Response(SiteOutputSerializer(site).data, status=status.HTTP_201_CREATED)


class SiteDetailApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    def _site(self, request: Request, pk: int) -> Site:
        return get_object_or_404(api_scoped(Site.objects.all(), request), pk=pk)

    @extend_schema(
        tags=[TAG],
        operation_id="sites_retrieve",
        summary="One site",
        responses={200: SiteOutputSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(SiteOutputSerializer(self._site(request, pk)).data)

    @extend_schema(
        tags=[TAG],
        operation_id="sites_partial_update",
        summary="Change a site",
        request=SiteInputSerializer(partial=True),
        responses={200: SiteOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN, 404: _NOT_FOUND},
    )
    def patch(self, request: Request, pk: int) -> Response:
        site = self._site(request, pk)
        payload = SiteInputSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        with service_errors():
            site = services.site_update(
                site=site,
                actor=request_actor(request),
                data=payload.validated_data,
            )
        return Response(SiteOutputSerializer(site).data)


# -- nodes -------------------------------------------------------------------------------


class NodeListCreateApi(APIView):
    permission_classes = PARTNER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_list",
        summary="The organization's nodes",
        parameters=[
            OpenApiParameter("site", int, description="Only this site's nodes."),
            OpenApiParameter(
                "status", str, enum=NodeStatus.values, description="Only nodes in this status."
            ),
        ],
        responses={
            200: NodeOutputSerializer(many=True),
            400: OpenApiResponse(description="Invalid filter value."),
            404: OpenApiResponse(description="No such site in the organization."),
        },
    )
    def get(self, request: Request) -> Response:
        organization = request_organization(request)
        site = None
        if request.query_params.get("site"):
            site = get_object_or_404(
                Site.objects.for_organization(organization), pk=_int_param(request, "site")
            )
        status_filter = request.query_params.get("status") or None
        if status_filter is not None and status_filter not in NodeStatus.values:
            raise exceptions.ValidationError({"status": f"unknown status {status_filter!r}"})
        nodes = selectors.node_list(organization=organization, site=site, status=status_filter)
        return paginated_response(request, self, nodes, NodeOutputSerializer)

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_create",
        summary="Create a node; the response carries its one-time enrollment code",
        request=NodeInputSerializer,
        responses={201: NodeCreatedOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN},
    )
    def post(self, request: Request) -> Response:
        payload = NodeInputSerializer(data=request.data, organization=request_organization(request))
        payload.is_valid(raise_exception=True)
        with service_errors():
            created = services.node_create(actor=request_actor(request), **payload.validated_data)
        node = created.node
        node.enrollment_code = created.enrollment_code  # type: ignore[attr-defined]
        node.enrollment_code_expires_at = created.enrollment.expires_at  # type: ignore[attr-defined]
        return no_store(
            Response(NodeCreatedOutputSerializer(node).data, status=status.HTTP_201_CREATED)
        )


def _int_param(request: Request, name: str) -> int:
    try:
        return int(request.query_params[name])
    except ValueError:
        raise exceptions.ValidationError({name: "must be an integer"}) from None


def _node(request: Request, pk: int) -> Node:
    return get_object_or_404(api_scoped(Node.objects.select_related("gpu_model"), request), pk=pk)


class NodeDetailApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_retrieve",
        summary="One node with its GPUs",
        responses={200: NodeDetailOutputSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(NodeDetailOutputSerializer(_node(request, pk)).data)


class NodeEnrollmentCodeApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_enrollment_code_create",
        summary="Issue a new enrollment code (the previous one stops working)",
        request=None,
        responses={
            201: EnrollmentCodeOutputSerializer,
            400: _REFUSED,
            403: _FORBIDDEN,
            404: _NOT_FOUND,
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        node = _node(request, pk)
        with service_errors():
            issued = services.enrollment_code_regenerate(node=node, actor=request_actor(request))
        data = {"enrollment_code": issued.code, "expires_at": issued.expires_at}
        return no_store(
            Response(EnrollmentCodeOutputSerializer(data).data, status=status.HTTP_201_CREATED)
        )


# -- windows -----------------------------------------------------------------------------


class NodeWindowListCreateApi(APIView):
    permission_classes = PARTNER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_windows_list",
        summary="The node's scheduled maintenance and curtailment windows",
        responses={200: WindowOutputSerializer(many=True), 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        windows = selectors.node_windows(node=_node(request, pk))
        return paginated_response(request, self, windows, WindowOutputSerializer)

    @extend_schema(
        tags=[TAG],
        operation_id="nodes_windows_create",
        summary="Announce a maintenance or curtailment window",
        request=WindowInputSerializer,
        responses={201: WindowOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN, 404: _NOT_FOUND},
    )
    def post(self, request: Request, pk: int) -> Response:
        node = _node(request, pk)
        payload = WindowInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        with service_errors():
            window = services.window_schedule(
                node=node, actor=request_actor(request), **payload.validated_data
            )
        return Response(WindowOutputSerializer(window).data, status=status.HTTP_201_CREATED)


class WindowDetailApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="windows_cancel",
        summary="Cancel a window that has not started",
        responses={204: None, 400: _REFUSED, 403: _FORBIDDEN, 404: _NOT_FOUND},
    )
    def delete(self, request: Request, pk: int) -> Response:
        window = get_object_or_404(api_scoped(NodeWindow.objects.all(), request), pk=pk)
        with service_errors():
            services.window_cancel(window=window, actor=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- offers ------------------------------------------------------------------------------


class OfferListCreateApi(APIView):
    permission_classes = PARTNER_PERMISSIONS
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        tags=[TAG],
        operation_id="offers_list",
        summary="The organization's offers",
        responses={200: OfferOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        offers = selectors.offer_list(organization=request_organization(request))
        return paginated_response(request, self, offers, OfferOutputSerializer)

    @extend_schema(
        tags=[TAG],
        operation_id="offers_create",
        summary="List GPUs of a site for sale",
        request=OfferInputSerializer,
        responses={201: OfferOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN},
    )
    def post(self, request: Request) -> Response:
        payload = OfferInputSerializer(
            data=request.data, organization=request_organization(request)
        )
        payload.is_valid(raise_exception=True)
        with service_errors():
            offer = services.offer_create(actor=request_actor(request), **payload.validated_data)
        return Response(OfferOutputSerializer(offer).data, status=status.HTTP_201_CREATED)


class OfferDetailApi(APIView):
    permission_classes = PARTNER_PERMISSIONS

    def _offer(self, request: Request, pk: int) -> Offer:
        return get_object_or_404(
            api_scoped(Offer.objects.select_related("gpu_model"), request), pk=pk
        )

    @extend_schema(
        tags=[TAG],
        operation_id="offers_retrieve",
        summary="One offer",
        responses={200: OfferOutputSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(OfferOutputSerializer(self._offer(request, pk)).data)

    @extend_schema(
        tags=[TAG],
        operation_id="offers_partial_update",
        summary="Change prices, size or availability; is_active=false deactivates",
        request=OfferUpdateInputSerializer,
        responses={200: OfferOutputSerializer, 400: _REFUSED, 403: _FORBIDDEN, 404: _NOT_FOUND},
    )
    def patch(self, request: Request, pk: int) -> Response:
        offer = self._offer(request, pk)
        # Partial: a form body leaves out what it does not change (DRF would otherwise read
        # a missing is_active as false and deactivate the offer).
        payload = OfferUpdateInputSerializer(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        data = dict(payload.validated_data)
        is_active = data.pop("is_active", None)
        if is_active is True and not offer.is_active:
            raise exceptions.ValidationError(
                {"is_active": "An inactive offer cannot be reactivated; create a new one."}
            )
        # Both changes or neither: a refused deactivation must not leave the update saved.
        with service_errors(), transaction.atomic():
            if data:
                offer = services.offer_update(offer=offer, actor=request_actor(request), data=data)
            if is_active is False:
                offer = services.offer_deactivate(offer=offer, actor=request_actor(request))
        return Response(OfferOutputSerializer(offer).data)


# -- agents ------------------------------------------------------------------------------


class AgentEnrollApi(APIView):
    """The node agent's one outbound call. No session, no CSRF: the code is the credential."""

    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]
    parser_classes = [JSONParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "enroll"

    @extend_schema(
        tags=["agents"],
        operation_id="agents_enroll",
        summary="Enroll a node agent with its one-time code; returns the node's poll token once",
        auth=[],
        request=EnrollInputSerializer,
        responses={
            201: EnrollOutputSerializer,
            400: OpenApiResponse(
                description='Refused, e.g. {"code": ["enrollment code already used"]}.'
            ),
            429: OpenApiResponse(description="Too many enrollment attempts; retry later."),
        },
    )
    def post(self, request: Request) -> Response:
        payload = EnrollInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        with service_errors():
            result = node_enroll(**payload.validated_data)
        data = {
            "node_id": result.node.pk,
            "poll_token": result.poll_token,
            "poll_interval_seconds": result.poll_interval_seconds,
            "platform_public_key": receipt_public_key_b64(),
        }
        return no_store(Response(EnrollOutputSerializer(data).data, status=status.HTTP_201_CREATED))
