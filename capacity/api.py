"""REST API of the capacity domain: partners' sites, nodes, windows, offers; agent enrollment.

Thin views: an input serializer parses, ``tenancy`` scopes (another tenant's object is a
404), a service or selector does the work, an output serializer renders. Partner
endpoints need a partner organization; writes need an operator role (an API key acts
as a member). ``POST /agents/enroll`` is the one unauthenticated endpoint: the one-time
code is the credential, and it is throttled.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts.api_support import paginated_response, service_errors
from accounts.models import OPERATOR_ROLES, Organization
from accounts.requests import request_actor, request_organization
from accounts.tenancy import HasOrganization, api_membership_role, api_organization, api_scoped
from capacity import selectors, services
from capacity.enrollment import node_enroll
from capacity.models import (
    Currency,
    EnergySource,
    GpuModel,
    Node,
    NodeStatus,
    NodeWindow,
    Offer,
    Region,
    Site,
    WindowKind,
)

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


# -- serializers -------------------------------------------------------------------------


@extend_schema_field(
    {"type": "string", "enum": Currency.values, "description": "ISO 4217 currency code."},
    component_name="Currency",
)
class CurrencyField(serializers.ChoiceField):
    """One ``Currency`` component in the schema for every currency field (sites, offers)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Currency.choices, **kwargs)


class SiteOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    country = serializers.CharField(help_text="ISO 3166 alpha-2.")
    region = serializers.ChoiceField(choices=Region.choices)
    latitude = serializers.DecimalField(max_digits=8, decimal_places=6)
    longitude = serializers.DecimalField(max_digits=9, decimal_places=6)
    power_capacity_kw = serializers.IntegerField()
    energy_source = serializers.ChoiceField(choices=EnergySource.choices)
    energy_price_per_kwh = serializers.DecimalField(max_digits=10, decimal_places=6)
    energy_currency = CurrencyField()
    created_at = serializers.DateTimeField()


class SiteInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    country = serializers.CharField(max_length=2, min_length=2, help_text="ISO 3166 alpha-2.")
    region = serializers.ChoiceField(choices=Region.choices)
    latitude = serializers.DecimalField(max_digits=8, decimal_places=6)
    longitude = serializers.DecimalField(max_digits=9, decimal_places=6)
    power_capacity_kw = serializers.IntegerField(min_value=1)
    energy_source = serializers.ChoiceField(choices=EnergySource.choices)
    energy_price_per_kwh = serializers.DecimalField(max_digits=10, decimal_places=6, min_value=0)
    energy_currency = CurrencyField(default=Currency.USD)


class GpuDeviceOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    uuid = serializers.CharField()
    model = serializers.CharField(help_text="As the agent reported it.")
    memory_mib = serializers.IntegerField()


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.IntegerField(source="site_id")
    name = serializers.CharField()
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField()
    cpu_cores = serializers.IntegerField()
    ram_gib = serializers.IntegerField()
    status = serializers.ChoiceField(choices=NodeStatus.choices)
    agent_url = serializers.CharField()
    agent_version = serializers.CharField()
    enrolled_at = serializers.DateTimeField(allow_null=True)
    last_poll_at = serializers.DateTimeField(allow_null=True)
    last_successful_poll_at = serializers.DateTimeField(allow_null=True)
    gpu_utilization_pct = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class NodeDetailOutputSerializer(NodeOutputSerializer):
    gpus = GpuDeviceOutputSerializer(many=True, source="gpus.all")


class NodeInputSerializer(serializers.Serializer):
    site = serializers.PrimaryKeyRelatedField(queryset=Site.objects.none())
    name = serializers.CharField(max_length=120)
    gpu_model = serializers.SlugRelatedField(
        slug_field="name",
        queryset=GpuModel.objects.all(),
        help_text='Catalog name, e.g. "H100 SXM 80GB".',
    )
    gpu_count = serializers.IntegerField(min_value=1, max_value=64)
    cpu_cores = serializers.IntegerField(min_value=1)
    ram_gib = serializers.IntegerField(min_value=1)

    def __init__(self, *args: Any, organization: Organization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class EnrollmentCodeOutputSerializer(serializers.Serializer):
    enrollment_code = serializers.CharField(help_text="One-time code. Returned once, never again.")
    expires_at = serializers.DateTimeField()


class NodeCreatedOutputSerializer(NodeOutputSerializer):
    enrollment_code = serializers.CharField(help_text="One-time code. Returned once, never again.")
    enrollment_code_expires_at = serializers.DateTimeField()


class WindowOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    node = serializers.IntegerField(source="node_id")
    kind = serializers.ChoiceField(choices=WindowKind.choices)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    reason = serializers.CharField()
    announced_at = serializers.DateTimeField()
    cancelled_at = serializers.DateTimeField(allow_null=True)


class WindowInputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=WindowKind.choices)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    reason = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)


def _price(**kwargs: Any) -> serializers.DecimalField:
    """A price per GPU-hour: Decimal, 4 decimals, as stored."""
    return serializers.DecimalField(max_digits=10, decimal_places=4, **kwargs)


class OfferOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    site = serializers.IntegerField(source="site_id")
    gpu_model = serializers.CharField(source="gpu_model.name")
    gpu_count = serializers.IntegerField()
    on_demand_price_per_gpu_hour = _price()
    reserved_price_1m_per_gpu_hour = _price()
    reserved_price_3m_per_gpu_hour = _price()
    reserved_price_6m_per_gpu_hour = _price()
    reserved_price_12m_per_gpu_hour = _price()
    currency = CurrencyField()
    available_from = serializers.DateTimeField()
    available_until = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class OfferInputSerializer(serializers.Serializer):
    site = serializers.PrimaryKeyRelatedField(queryset=Site.objects.none())
    gpu_model = serializers.SlugRelatedField(slug_field="name", queryset=GpuModel.objects.all())
    gpu_count = serializers.IntegerField()
    on_demand_price_per_gpu_hour = _price()
    reserved_price_1m_per_gpu_hour = _price()
    reserved_price_3m_per_gpu_hour = _price()
    reserved_price_6m_per_gpu_hour = _price()
    reserved_price_12m_per_gpu_hour = _price()
    currency = CurrencyField(default=Currency.USD)
    available_from = serializers.DateTimeField(required=False, help_text="Default: now.")
    available_until = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def __init__(self, *args: Any, organization: Organization | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["site"].queryset = Site.objects.for_organization(organization)  # type: ignore[attr-defined]


class OfferUpdateInputSerializer(serializers.Serializer):
    gpu_count = serializers.IntegerField(required=False)
    on_demand_price_per_gpu_hour = _price(required=False)
    reserved_price_1m_per_gpu_hour = _price(required=False)
    reserved_price_3m_per_gpu_hour = _price(required=False)
    reserved_price_6m_per_gpu_hour = _price(required=False)
    reserved_price_12m_per_gpu_hour = _price(required=False)
    currency = CurrencyField(required=False)
    available_from = serializers.DateTimeField(required=False)
    available_until = serializers.DateTimeField(required=False, allow_null=True)
    is_active = serializers.BooleanField(
        required=False, help_text="false deactivates the offer; an inactive offer stays inactive."
    )


class EnrollGpuInputSerializer(serializers.Serializer):
    uuid = serializers.CharField(max_length=64)
    model = serializers.CharField(max_length=64)
    memory_mib = serializers.IntegerField(min_value=1)


class EnrollInputSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=64, help_text="The node's one-time enrollment code.")
    public_key = serializers.CharField(
        max_length=128, help_text="Base64 of the agent's raw 32-byte Ed25519 public key."
    )
    url = serializers.CharField(max_length=300, help_text="http(s) base URL of the agent.")
    gpus = EnrollGpuInputSerializer(many=True, allow_empty=False)
    agent_version = serializers.CharField(max_length=32)


class EnrollOutputSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    poll_token = serializers.CharField(
        help_text="Bearer token the platform sends on every poll. Returned once, never again."
    )
    poll_interval_seconds = serializers.IntegerField()


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
        return Response(NodeCreatedOutputSerializer(node).data, status=status.HTTP_201_CREATED)


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
        return Response(EnrollmentCodeOutputSerializer(data).data, status=status.HTTP_201_CREATED)


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
        payload = OfferUpdateInputSerializer(data=request.data)
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
        }
        return Response(EnrollOutputSerializer(data).data, status=status.HTTP_201_CREATED)
