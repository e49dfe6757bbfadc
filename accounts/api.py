"""REST API of the marketplace's front door: who am I, my organizations, API keys.

Thin views: an input serializer parses, ``tenancy`` scopes, a service or selector does the
work, an output serializer renders. A key acts for its own organization only.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.api_support import paginated_response
from accounts.models import MANAGER_ROLES, ApiKey, Role
from accounts.requests import request_actor
from accounts.response_headers import no_store
from accounts.tenancy import HasOrganization, api_membership_role, api_organization, api_scoped


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents ``accounts.api_auth.ApiKeyAuthentication`` in the OpenAPI schema."""

    target_class = "accounts.api_auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "hg_…",
            "description": "An organization API key: `Authorization: Bearer hg_…`.",
        }


class CanManageOrganization(permissions.BasePermission):
    """Reads for every member; writes for owners and admins (never an API key: a member at most)."""

    message = "Only owners and admins can do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return api_membership_role(request) in MANAGER_ROLES


def _refusal(error: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(error, "error_dict"):
        return exceptions.ValidationError(error.message_dict)
    return exceptions.ValidationError({"detail": error.messages})


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the object's current state."
    default_code = "conflict"


# -- serializers -------------------------------------------------------------------------


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()


class OrganizationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.SlugField()
    is_buyer = serializers.BooleanField()
    is_partner = serializers.BooleanField()


class MeOutputSerializer(serializers.Serializer):
    user = UserOutputSerializer()
    organization = OrganizationOutputSerializer(allow_null=True)
    role = serializers.ChoiceField(
        choices=Role.choices,
        allow_null=True,
        help_text=(
            "The caller's role in the organization; an API key acts as a member at most, "
            "never above its creator's current role."
        ),
    )
    authentication = serializers.ChoiceField(
        choices=[("session", "session"), ("api_key", "api_key")]
    )


class MembershipOutputSerializer(serializers.Serializer):
    organization = OrganizationOutputSerializer()
    role = serializers.ChoiceField(choices=Role.choices)
    joined_at = serializers.DateTimeField(source="created_at")


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's first characters, to tell keys apart.")
    created_by = serializers.EmailField(source="created_by.email", allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class ApiKeyCreatedOutputSerializer(ApiKeyOutputSerializer):
    key = serializers.CharField(help_text="The full key. Returned once, never again.")


class ApiKeyCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=ApiKey._meta.get_field("name").max_length)


# -- views -------------------------------------------------------------------------------


class MeApi(APIView):
    @extend_schema(
        operation_id="me_retrieve",
        summary="The caller: user, current organization and role",
        responses={200: MeOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        is_api_key = isinstance(request.auth, ApiKey)
        data = {
            "user": request.user,
            "organization": api_organization(request),
            "role": api_membership_role(request),
            "authentication": "api_key" if is_api_key else "session",
        }
        return Response(MeOutputSerializer(data).data)


class OrganizationListApi(APIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        operation_id="organizations_list",
        summary="The caller's organizations and roles (an API key sees its own organization)",
        responses={200: MembershipOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        key_organization = request.auth.organization if isinstance(request.auth, ApiKey) else None
        memberships = selectors.user_memberships(
            user=request_actor(request),
            organization=key_organization,
        )
        return paginated_response(request, self, memberships, MembershipOutputSerializer)


class ApiKeyListCreateApi(APIView):
    permission_classes = [permissions.IsAuthenticated, HasOrganization, CanManageOrganization]
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        operation_id="api_keys_list",
        summary="The organization's API keys (never the secrets)",
        responses={200: ApiKeyOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        organization = api_organization(request)
        assert organization is not None  # guaranteed by HasOrganization
        return paginated_response(
            request, self, selectors.api_keys(organization=organization), ApiKeyOutputSerializer
        )

    @extend_schema(
        operation_id="api_keys_create",
        summary="Create an API key; the response carries the full key, once",
        request=ApiKeyCreateInputSerializer,
        responses={
            201: ApiKeyCreatedOutputSerializer,
            400: OpenApiResponse(description="Invalid name, or an active key has that name."),
            403: OpenApiResponse(description="Only owners and admins (signed in) create keys."),
        },
    )
    def post(self, request: Request) -> Response:
        organization = api_organization(request)
        assert organization is not None  # guaranteed by HasOrganization
        payload = ApiKeyCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            api_key, key = services.api_key_create(
                organization=organization,
                name=payload.validated_data["name"],
                created_by=request_actor(request),
            )
        except DjangoValidationError as error:
            raise _refusal(error) from None
        except DjangoPermissionDenied as error:
            raise exceptions.PermissionDenied(str(error)) from None
        api_key.key = key  # type: ignore[attr-defined]
        return no_store(  # the body carries the secret
            Response(ApiKeyCreatedOutputSerializer(api_key).data, status=status.HTTP_201_CREATED)
        )


class ApiKeyRevokeApi(APIView):
    permission_classes = [permissions.IsAuthenticated, HasOrganization, CanManageOrganization]

    @extend_schema(
        operation_id="api_keys_revoke",
        summary="Revoke an API key: requests with it are refused from now on",
        request=None,
        responses={
            200: ApiKeyOutputSerializer,
            403: OpenApiResponse(description="Only owners and admins (signed in) revoke keys."),
            404: OpenApiResponse(description="No such key in this organization."),
            409: OpenApiResponse(description="The key is already revoked."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        api_key = get_object_or_404(
            api_scoped(ApiKey.objects.select_related("organization", "created_by"), request), pk=pk
        )
        try:
            api_key = services.api_key_revoke(api_key=api_key, actor=request_actor(request))
        except DjangoValidationError as error:
            raise Conflict(" ".join(error.messages)) from None
        except DjangoPermissionDenied as error:
            raise exceptions.PermissionDenied(str(error)) from None
        return Response(ApiKeyOutputSerializer(api_key).data)
