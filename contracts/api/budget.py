"""The buyers' inference budget API: a contract's monthly cap, its keys' caps and rate
limits, and this month's spend against them (``contracts.inference_budget``).

Money is integer minor units plus a decimal string in the contract's currency; spend is
rounded once, to the cent, from the exact figure.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_support import service_errors
from accounts.requests import request_actor
from contracts import inference_budget
from contracts.api.views import BUYER_PERMISSIONS, _contract
from contracts.inference_snippets import inference_base_url
from contracts.models import LineApiKey

TAG = "contracts"
_REFUSED = OpenApiResponse(description="Refused: the body names each field at fault and why.")
_NOT_FOUND = OpenApiResponse(description="No such object in this organization.")


class CapUseSerializer(serializers.Serializer):
    currency = serializers.CharField()
    spent_minor = serializers.IntegerField(help_text="This calendar month (UTC), to the cent.")
    spent = serializers.DecimalField(max_digits=14, decimal_places=2, source="spent_display")
    cap_minor = serializers.IntegerField(allow_null=True, help_text="null: no cap.")
    cap = serializers.DecimalField(
        max_digits=14, decimal_places=2, source="cap_display", allow_null=True
    )
    percent = serializers.IntegerField(allow_null=True, help_text="Of the cap, rounded down.")


class BudgetInputSerializer(serializers.Serializer):
    inference_monthly_cap_minor = serializers.IntegerField(
        allow_null=True, help_text="Minor units (cents) of the contract's currency; null: no cap."
    )


class KeyLimitsInputSerializer(serializers.Serializer):
    monthly_cap_minor = serializers.IntegerField(allow_null=True, required=False)
    requests_per_minute = serializers.IntegerField(allow_null=True, required=False)
    tokens_per_minute = serializers.IntegerField(allow_null=True, required=False)


class KeyOutputSerializer(serializers.Serializer):
    api_key = serializers.IntegerField(source="link.api_key_id")
    name = serializers.CharField(source="link.api_key.name")
    prefix = serializers.CharField(source="link.api_key.prefix")
    is_active = serializers.BooleanField(source="link.api_key.is_active")
    line = serializers.IntegerField(source="link.line_id")
    inference_product = serializers.CharField(
        source="link.line.inference_product.slug", allow_null=True, default=None
    )
    base_url = serializers.CharField()
    monthly_cap_minor = serializers.IntegerField(source="link.monthly_cap_minor", allow_null=True)
    requests_per_minute = serializers.IntegerField(
        source="link.requests_per_minute", allow_null=True
    )
    tokens_per_minute = serializers.IntegerField(source="link.tokens_per_minute", allow_null=True)
    spend = CapUseSerializer()


def _key_rows(links: list[LineApiKey], spend: inference_budget.ContractSpend) -> list[dict]:  # type: ignore[type-arg]
    return [
        {"link": link, "spend": spend.key(link), "base_url": inference_base_url()} for link in links
    ]


def _links(contract_pk: int):  # type: ignore[no-untyped-def]
    return LineApiKey.objects.filter(line__contract_id=contract_pk).select_related(
        "api_key", "line__inference_product"
    )


class ContractBudgetApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="contract_inference_budget",
        summary="The contract's monthly inference cap and this month's spend",
        responses={200: CapUseSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        contract = _contract(request, pk)
        spend = inference_budget.inference_spend(contract=contract, now=timezone.now())
        return Response(CapUseSerializer(spend.contract).data)

    @extend_schema(
        tags=[TAG],
        operation_id="contract_inference_budget_update",
        summary="Set or clear the contract's monthly inference cap",
        request=BudgetInputSerializer,
        responses={200: CapUseSerializer, 400: _REFUSED, 404: _NOT_FOUND},
    )
    def patch(self, request: Request, pk: int) -> Response:
        contract = _contract(request, pk)
        body = BudgetInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with service_errors():
            inference_budget.contract_inference_cap_set(
                contract=contract,
                cap_minor=body.validated_data["inference_monthly_cap_minor"],
                actor=request_actor(request),
            )
        spend = inference_budget.inference_spend(contract=contract, now=timezone.now())
        return Response(CapUseSerializer(spend.contract).data)


class ContractKeyListApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    @extend_schema(
        tags=[TAG],
        operation_id="contract_api_keys_list",
        summary="The contract's line API keys: what each serves, its limits, its spend",
        responses={200: KeyOutputSerializer(many=True), 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int) -> Response:
        contract = _contract(request, pk)
        spend = inference_budget.inference_spend(contract=contract, now=timezone.now())
        rows = _key_rows(list(_links(contract.pk).order_by("pk")), spend)
        return Response(KeyOutputSerializer(rows, many=True).data)


class ContractKeyDetailApi(APIView):
    permission_classes = BUYER_PERMISSIONS

    def _link(self, request: Request, pk: int, api_key_id: int) -> LineApiKey:
        contract = _contract(request, pk)
        link = get_object_or_404(_links(contract.pk), api_key_id=api_key_id)
        link.line.contract = contract
        return link

    @extend_schema(
        tags=[TAG],
        operation_id="contract_api_key_retrieve",
        responses={200: KeyOutputSerializer, 404: _NOT_FOUND},
    )
    def get(self, request: Request, pk: int, api_key_id: int) -> Response:
        link = self._link(request, pk, api_key_id)
        spend = inference_budget.inference_spend(contract=link.line.contract, now=timezone.now())
        return Response(KeyOutputSerializer(_key_rows([link], spend)[0]).data)

    @extend_schema(
        tags=[TAG],
        operation_id="contract_api_key_limits_update",
        summary="Set a key's monthly cap and rate limits (null: none / the defaults)",
        request=KeyLimitsInputSerializer,
        responses={200: KeyOutputSerializer, 400: _REFUSED, 404: _NOT_FOUND},
    )
    def patch(self, request: Request, pk: int, api_key_id: int) -> Response:
        link = self._link(request, pk, api_key_id)
        body = KeyLimitsInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = {
            name: body.validated_data.get(name, getattr(link, name))
            for name in ("monthly_cap_minor", "requests_per_minute", "tokens_per_minute")
        }
        with service_errors():
            inference_budget.line_api_key_limits_set(
                link=link, actor=request_actor(request), **values
            )
        spend = inference_budget.inference_spend(contract=link.line.contract, now=timezone.now())
        return Response(KeyOutputSerializer(_key_rows([link], spend)[0]).data)
